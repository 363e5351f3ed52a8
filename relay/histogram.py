"""A fixed-bucket latency histogram kept by a child and published in its status.

Children cannot share prometheus-client objects across processes, so each
keeps plain cumulative counts that the supervisor's collector turns into a
Prometheus histogram (same bucket bounds everywhere, so series add up).
"""

from __future__ import annotations

import time
from bisect import bisect_left

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)


class LatencyHistogram:
    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def to_dict(self) -> dict:
        """Cumulative buckets as Prometheus exposes them."""
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self.total, "count": self.count}


# Finer at the low end: one hop of a control message takes tens of microseconds.
HOP_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
)
HOPS = ("ingress_batch", "pipe_to_shard", "shard_rules", "shard_queue", "egress_pipe", "router_send")


class PeakHistogram(LatencyHistogram):
    """A latency histogram that also keeps its maximum and the wall time of
    it: tells a start-up storm from a stall under load."""

    __slots__ = ("max_s", "max_at")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(bounds)
        self.max_s = 0.0
        self.max_at = 0.0

    def observe(self, seconds: float) -> None:
        super().observe(seconds)
        if seconds > self.max_s:
            self.max_s = seconds
            self.max_at = time.time()

    def to_dict(self) -> dict:
        return {**super().to_dict(), "max": self.max_s, "max_at": self.max_at}


class ControlHops:
    """Where a control message's time goes, hop by hop (relay/frames.py HEADER):

    ingress receive -> batch pushed -> shard reads the batch -> rules done,
    reply queued -> shard sends it to the egress -> ingress receives it ->
    ROUTER send done. ``pipe_to_shard`` includes the shard's wake-up: a
    delay there with no slow turn in either process is the scheduler's or
    ZeroMQ's I/O threads', not the relay's Python code.
    Each hop keeps a histogram and its maximum.
    """

    __slots__ = ("hists",)

    def __init__(self) -> None:
        self.hists = [PeakHistogram(HOP_BUCKETS) for _ in HOPS]

    def observe(self, *stamps_ns: int) -> None:
        """Seven clock readings (ns), one per hop boundary."""
        for i, hist in enumerate(self.hists):
            hist.observe((stamps_ns[i + 1] - stamps_ns[i]) / 1e9)

    def to_dict(self) -> dict:
        return {name: h.to_dict() for name, h in zip(HOPS, self.hists, strict=True)}
