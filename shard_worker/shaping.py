"""Transform shaping: a token bucket and latest-only pending broadcasts.

Both are pure: the caller passes the clock and does the sending. The bucket's
capacity is one second of budget, and a frame larger than the capacity may
still go out once the bucket is full (the balance then goes negative and
refills), so an oversized room pose can never stall the shard (W9).
"""

from __future__ import annotations

from dataclasses import dataclass


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "_last", "refunds")

    def __init__(self, bytes_per_sec: float, now: float) -> None:
        self.rate = float(bytes_per_sec)
        self.capacity = float(bytes_per_sec)
        self.tokens = self.capacity
        self._last = now
        self.refunds = 0

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def refill(self, now: float) -> None:
        if self.unlimited:
            return
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)

    def try_take(self, cost: float, now: float) -> float | None:
        """Deduct ``cost`` and return the amount deducted, or None if unaffordable.

        The returned amount is what a failed send must refund: callers keep it
        rather than recomputing the cost, which may have changed meanwhile.
        """
        if self.unlimited:
            return 0.0
        self.refill(now)
        if self.tokens >= cost or self.tokens >= self.capacity:
            self.tokens -= cost
            return cost
        return None

    def refund(self, amount: float) -> None:
        self.tokens += amount
        self.refunds += 1

    def seconds_until(self, cost: float) -> float:
        if self.unlimited:
            return 0.0
        needed = min(cost, self.capacity) - self.tokens
        return max(0.0, needed / self.rate)


@dataclass(slots=True)
class PendingFrame:
    payload: bytes
    fanout: int


class LatestOnly:
    """One pending frame per topic: a newer snapshot replaces an unsent one."""

    __slots__ = ("frames", "replaced")

    def __init__(self) -> None:
        self.frames: dict[bytes, PendingFrame] = {}
        self.replaced = 0

    def put(self, topic: bytes, payload: bytes, fanout: int) -> None:
        frame = self.frames.get(topic)
        if frame is not None:
            self.replaced += 1
            frame.payload = payload
            frame.fanout = fanout
        else:
            self.frames[topic] = PendingFrame(payload, fanout)

    def __len__(self) -> int:
        return len(self.frames)

    def drop_topic(self, topic: bytes) -> None:
        self.frames.pop(topic, None)
