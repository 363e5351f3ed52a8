"""A fixed-bucket latency histogram kept by a child and published in its status.

Children cannot share prometheus-client objects across processes, so each
keeps plain cumulative counts that the supervisor's collector turns into a
Prometheus histogram (same bucket bounds everywhere, so series add up).
"""

from __future__ import annotations

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
