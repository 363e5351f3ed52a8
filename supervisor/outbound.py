"""Per-recipient outbound allowance for control unicasts the ROUTER refused.

The ingress sends unicasts with ``ROUTER_MANDATORY`` and ``DONTWAIT``. When a
recipient's pipe is full (it stopped reading, or reads slower than it is sent
to) the ROUTER refuses with EAGAIN, and the message waits here, behind any
earlier message for the same recipient, so what is delivered keeps its order.

What a slow reader may cost is bounded and every overflow is counted:

- each recipient has an allowance in messages and in bytes; a message that
  does not fit is dropped (``unicast_client_full``);
- all recipients together have a ceiling (``unicast_total_full``), so many
  slow readers cannot add up to an unbounded amount;
- a recipient whose queue made no progress for ``stall_timeout`` seconds is
  given up: its whole queue is dropped and counted (``unicast_stalled``).
  Later messages for it start a fresh queue, which is bounded the same way;
- a recipient that disconnected while queued loses its queue
  (``unicast_unreachable``).

Retries are timed, per recipient, with exponential backoff from
``retry_min`` to ``retry_max`` reset by any progress: a stuck recipient costs
a handful of send attempts per second instead of a busy loop, and the ingress
can sleep until the earliest retry is due. The class does no I/O itself: the
caller passes a ``send`` function, so it is tested without sockets.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SENT", "WOULDBLOCK", "GONE", "OutboundQueues"]

# Results of the caller's send function.
SENT = 0
WOULDBLOCK = 1
GONE = 2

Frames = list[bytes]


@dataclass(slots=True)
class _Queue:
    items: deque[tuple[Frames, int]] = field(default_factory=deque)
    nbytes: int = 0
    last_progress: float = 0.0
    backoff: float = 0.0


class OutboundQueues:
    def __init__(
        self,
        *,
        per_recipient_messages: int,
        per_recipient_bytes: int,
        total_messages: int,
        total_bytes: int,
        stall_timeout: float,
        retry_min: float = 0.005,
        retry_max: float = 0.2,
        on_drop: Callable[[str, int], None],
    ) -> None:
        self.per_recipient_messages = per_recipient_messages
        self.per_recipient_bytes = per_recipient_bytes
        self.total_messages = total_messages
        self.total_bytes = total_bytes
        self.stall_timeout = stall_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.on_drop = on_drop
        self.queues: dict[bytes, _Queue] = {}
        self.queued_messages = 0
        self.queued_bytes = 0
        self.high_water_messages = 0
        self.high_water_bytes = 0
        # One entry per queue: (due time, tie-breaker, identity). A queue is
        # only ever dropped or emptied while its entry is popped, so entries
        # never go stale.
        self._due: list[tuple[float, int, bytes]] = []
        self._tiebreak = 0

    def __len__(self) -> int:
        return len(self.queues)

    def __contains__(self, identity: bytes) -> bool:
        return identity in self.queues

    def next_due(self) -> float | None:
        """When the earliest retry is due, or None when nothing waits."""
        return self._due[0][0] if self._due else None

    def enqueue(self, identity: bytes, frames: Frames, now: float) -> bool:
        """Queue a message behind the recipient's earlier ones; False if dropped."""
        size = sum(len(f) for f in frames)
        queue = self.queues.get(identity)
        held_messages, held_bytes = (len(queue.items), queue.nbytes) if queue is not None else (0, 0)
        if (
            held_messages >= self.per_recipient_messages
            or held_bytes + size > self.per_recipient_bytes
        ):
            self.on_drop("unicast_client_full", 1)
            return False
        if self.queued_messages >= self.total_messages or self.queued_bytes + size > self.total_bytes:
            self.on_drop("unicast_total_full", 1)
            return False
        if queue is None:
            queue = self.queues[identity] = _Queue(last_progress=now, backoff=self.retry_min)
            self._schedule(identity, now + self.retry_min)
        queue.items.append((frames, size))
        queue.nbytes += size
        self.queued_messages += 1
        self.queued_bytes += size
        if self.queued_messages > self.high_water_messages:
            self.high_water_messages = self.queued_messages
        if self.queued_bytes > self.high_water_bytes:
            self.high_water_bytes = self.queued_bytes
        return True

    def retry_due(self, send: Callable[[Frames], int], now: float) -> int:
        """Retry every recipient whose turn has come; returns messages sent."""
        sent = 0
        due = self._due
        while due and due[0][0] <= now:
            _, _, identity = heapq.heappop(due)
            queue = self.queues.get(identity)
            if queue is None:
                continue
            sent += self._drain(identity, queue, send, now)
            if queue.items and now - queue.last_progress >= self.stall_timeout:
                # Never re-queue forever: a recipient that took nothing for
                # this long is not coming back soon, and what waits is stale.
                self._discard(identity, queue, "unicast_stalled")
            if queue.items:
                self._schedule(identity, now + queue.backoff)
            else:
                del self.queues[identity]
        return sent

    def flush_all(self, send: Callable[[Frames], int], now: float) -> int:
        """One attempt for every recipient, due or not (shutdown)."""
        sent = 0
        for identity, queue in list(self.queues.items()):
            sent += self._drain(identity, queue, send, now)
        return sent

    def _drain(self, identity: bytes, queue: _Queue, send: Callable[[Frames], int], now: float) -> int:
        sent = 0
        items = queue.items
        while items:
            frames, size = items[0]
            result = send(frames)
            if result == WOULDBLOCK:
                break
            if result == GONE:
                self._discard(identity, queue, "unicast_unreachable")
                return sent
            items.popleft()
            queue.nbytes -= size
            self.queued_messages -= 1
            self.queued_bytes -= size
            sent += 1
        if sent:
            queue.last_progress = now
            queue.backoff = self.retry_min
        else:
            queue.backoff = min(self.retry_max, queue.backoff * 2)
        return sent

    def _discard(self, identity: bytes, queue: _Queue, reason: str) -> None:
        count = len(queue.items)
        self.queued_messages -= count
        self.queued_bytes -= queue.nbytes
        queue.items.clear()
        queue.nbytes = 0
        # The empty queue stays in self.queues until retry_due pops its heap
        # entry and deletes it, so the heap never points at a missing queue.
        if count:
            self.on_drop(reason, count)

    def _schedule(self, identity: bytes, at: float) -> None:
        self._tiebreak += 1
        heapq.heappush(self._due, (at, self._tiebreak, identity))
