"""The worst loop turns of a process, with where their time went.

A rare stall on the control path (a journal checkpoint, a status write, a
garbage collection, a sweep over every room) disappears in averages and even
in a p99 over a short run. Each hot loop marks the phases of every turn
(a few clock reads per turn); a turn longer than ``threshold`` is counted and
the slowest ``keep`` of them are kept with their phase durations and the
time the garbage collector ran inside them, and published in the process's
status file (``slow_turns``).
"""

from __future__ import annotations

import gc
import heapq
import time
from typing import Any

__all__ = ["SlowTurns"]

_now = time.perf_counter_ns


class SlowTurns:
    __slots__ = ("threshold_ns", "keep", "worst", "counts", "_t0", "_last", "_phases", "_gc_ns",
                 "_gc_started", "_gc_at_begin", "_seq")

    def __init__(self, threshold: float = 0.010, keep: int = 8) -> None:
        self.threshold_ns = int(threshold * 1e9)
        self.keep = keep
        self.worst: list[tuple[int, int, dict[str, Any]]] = []  # min-heap by duration
        # turns slower than 10 / 50 / 200 ms since start
        self.counts = {"over_10ms": 0, "over_50ms": 0, "over_200ms": 0}
        self._t0 = self._last = 0
        self._phases: list[tuple[str, int]] = []
        self._gc_ns = 0
        self._gc_started = 0
        self._gc_at_begin = 0
        self._seq = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = _now()
        elif self._gc_started:
            self._gc_ns += _now() - self._gc_started
            self._gc_started = 0

    def begin(self) -> None:
        self._t0 = self._last = _now()
        self._phases = []
        self._gc_at_begin = self._gc_ns

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or begin) went to ``phase``."""
        now = _now()
        self._phases.append((phase, now - self._last))
        self._last = now

    def end(self, **context: Any) -> None:
        total = _now() - self._t0
        if total < self.threshold_ns:
            return
        ms = total / 1e6
        self.counts["over_10ms"] += 1
        if ms >= 50:
            self.counts["over_50ms"] += 1
        if ms >= 200:
            self.counts["over_200ms"] += 1
        if len(self.worst) >= self.keep and total <= self.worst[0][0]:
            return
        phases: dict[str, float] = {}
        for name, spent in self._phases:
            if spent >= 100_000:  # 0.1 ms: the rest is noise
                phases[name] = round(phases.get(name, 0.0) + spent / 1e6, 2)
        record = {"at": round(time.time(), 3), "ms": round(ms, 2), "phases": phases,
                  "gc_ms": round((self._gc_ns - self._gc_at_begin) / 1e6, 2), **context}
        self._seq += 1
        item = (total, self._seq, record)
        if len(self.worst) < self.keep:
            heapq.heappush(self.worst, item)
        else:
            heapq.heapreplace(self.worst, item)

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "gc_ms_total": round(self._gc_ns / 1e6, 1),
                "worst": [r for _, _, r in sorted(self.worst, reverse=True)]}

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
