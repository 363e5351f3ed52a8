"""Bounded FIFO of outgoing control frames (unicasts towards the ingress).

On overflow the newest message is refused and counted, never silently lost:
room state (variables, ownership) stays correct and is resent to joiners and
reconnecting clients from the room itself.
"""

from __future__ import annotations

from collections import deque


class ControlQueue:
    __slots__ = ("_items", "maxlen", "refused", "high_water")

    def __init__(self, maxlen: int) -> None:
        self._items: deque[list[bytes]] = deque()
        self.maxlen = maxlen
        self.refused = 0
        self.high_water = 0

    def push(self, frames: list[bytes]) -> bool:
        if len(self._items) >= self.maxlen:
            self.refused += 1
            return False
        self._items.append(frames)
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        return True

    def peek(self) -> list[bytes]:
        return self._items[0]

    def pop(self) -> list[bytes]:
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)
