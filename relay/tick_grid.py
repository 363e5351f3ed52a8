"""Room-pose broadcast ticks on one wall-clock grid, shared by every process.

Poses matter only at a broadcast tick (latest-only), so the ingress reads the
transform port once per tick, ``lead`` seconds before it, and each shard
ticks on the grid: one ingress wake-up, one batch per shard and one shard
read per tick carry every pose of the period, where reading poses on arrival
cost a wake-up of the ingress, of two ZeroMQ I/O threads and a pushed batch
per arrival (BENCHMARKS.md, "Where the CPU goes"). A pose read ``lead``
before the tick is as fresh in the broadcast as one read on arrival.

The grid is multiples of the tick interval on the wall clock (``time.time``),
not the monotonic clock, so that ingresses and shards of different nodes
(whose monotonic clocks are unrelated) agree on it as closely as their clocks
are synchronised; each delay is recomputed from the wall clock, so a clock
step moves the grid once and never makes it drift.
"""

from __future__ import annotations

__all__ = ["MAX_POSE_WAIT", "period_of_read", "period_of_tick", "seconds_to_read", "seconds_to_tick"]

# Poses are read at least this often on both sides, whatever the tick: at a
# slow broadcast rate (down to 0.5 Hz) a whole tick of poses from every
# client would otherwise pile up in the pipes, against the in-flight bound.
MAX_POSE_WAIT = 0.1

# A tick due within this much of the previous one is a timer that woke a
# hair before the grid point: the next tick is the one after.
_EARLY = 0.002


def seconds_to_tick(wall: float, interval: float) -> float:
    """Seconds from ``wall`` to the next grid point, in (0, interval + early]."""
    delay = interval - wall % interval
    if delay < min(_EARLY, interval / 4):
        delay += interval
    return delay


def seconds_to_read(wall: float, interval: float, lead: float) -> float:
    """Seconds from ``wall`` to the next read: ``lead`` before the next grid
    point, or ``MAX_POSE_WAIT`` if that comes first."""
    return min(seconds_to_tick(wall + lead, interval), MAX_POSE_WAIT)


def period_of_tick(wall: float, interval: float) -> int:
    """The index of the grid point ``wall`` is at (a tick falling due)."""
    return round(wall / interval)


def period_of_read(wall: float, interval: float, lead: float) -> int:
    """The index of the tick a read at ``wall`` serves: the last grid point at
    or before ``wall + lead`` (a read due ``lead`` before a tick serves it,
    also when a timer woke it a hair early or a busy turn made it late; a
    read between ticks serves the one already past, which changes nothing)."""
    return int((wall + lead + _EARLY) // interval)
