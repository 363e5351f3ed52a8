"""Client numbers of one room: device id <-> client number (BEHAVIOR §2).

The rules, all here:

- a device gets the room's next number the first time it is seen, counting
  from 1 in arrival order; 0 is never given (it means "nobody");
- it keeps that number for as long as the mapping lives, member or not;
- a mapping expires once its device has been unseen for the expiry time
  (the caller decides when to sweep and which devices are still members);
- numbers are not reused while the counter is at most 65 535; after that a
  new device takes the first number, in assignment order, whose device
  expired (BEHAVIOR §2 "reuse"), and if there is none it cannot join (W13:
  logged, not crashed).

Assignment order is the insertion order of ``numbers``: mapping broadcasts
list members in that order, and the journal keeps it (``assign_seq``). Freed
numbers wait in a heap keyed by the position of their last assignment: a
number first given by the counter sits at its own value, a reused one after
every counter number, in reuse order. After a reload (``restore``) the
positions of numbers freed before it are not known; they count as given by
the counter (lowest first), ahead of every number reloaded as assigned.

Durable changes are appended to ``changes`` as the journal's record tuples
(``shard_worker/store/base.py``): ``device`` on assignment, ``device_expire`` on
expiry.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Mapping
from dataclasses import dataclass

from shard_worker.room_settings import limited_log

__all__ = ["MAX_CLIENT_NO", "ClientNumbering", "Device"]


MAX_CLIENT_NO = 65535


@dataclass(slots=True)
class Device:
    """A device's number in this room; outlives membership until it expires."""

    client_no: int
    last_seen: float


class ClientNumbering:
    def __init__(self, room_id: str, changes: list[tuple]) -> None:
        self.room_id = room_id
        self.changes = changes
        self.devices: dict[str, Device] = {}
        # client number -> device id, in assignment order
        self.numbers: dict[int, str] = {}
        self.next_client_no = 1
        # Assignment position of numbers that were reused or reloaded (a number
        # the counter gave sits at its own value), and the last one given.
        self._position: dict[int, int] = {}
        self._last_position = 0
        # (assignment position, number) of numbers whose device expired.
        self._free: list[tuple[int, int]] = []
        # Numbers freed while the counter lasted, or before a reload, are in
        # no heap yet: the first reuse finds them (once).
        self._unindexed_free = False

    def number_of(self, device_id: str) -> int | None:
        device = self.devices.get(device_id)
        return device.client_no if device is not None else None

    def device_of(self, client_no: int) -> str | None:
        return self.numbers.get(client_no)

    def assign(self, device_id: str, now: float) -> int | None:
        """The device's number (a new one on first sight), or None when none is left."""
        device = self.devices.get(device_id)
        if device is not None:
            device.last_seen = now
            return device.client_no
        if self.next_client_no <= MAX_CLIENT_NO:
            client_no = self.next_client_no
            self.next_client_no += 1
            if self.next_client_no > MAX_CLIENT_NO:
                # From now on numbers are reused: those freed so far are in no heap.
                self._unindexed_free = True
        else:
            client_no = self._first_free_number()
            if client_no is None:
                limited_log.error("numbers_exhausted", "room %r: no client number left for device %r", self.room_id, device_id)
                return None
            # A reused number goes to the end of the assignment order.
            self._last_position = max(self._last_position, MAX_CLIENT_NO) + 1
            self._position[client_no] = self._last_position
        self.devices[device_id] = Device(client_no, now)
        self.numbers[client_no] = device_id
        self.changes.append(("device", self.room_id, device_id, client_no, self.next_client_no))
        return client_no

    def _first_free_number(self) -> int | None:
        # Only reached after 65 535 assignments: the number whose device
        # expired first in assignment order (BEHAVIOR §2 "reuse").
        free, numbers = self._free, self.numbers
        if self._unindexed_free:
            # Freed while the counter lasted or before a reload: found once,
            # in counter order (positions before every reuse).
            self._unindexed_free = False
            queued = {no for _, no in free}
            free.extend(
                (no, no) for no in range(1, MAX_CLIENT_NO + 1) if no not in numbers and no not in queued
            )
            heapq.heapify(free)
        while free:
            _, client_no = heapq.heappop(free)
            if client_no not in numbers:
                return client_no
        return None

    def touch(self, device_id: str, now: float) -> None:
        """The device was heard from: its expiry clock restarts."""
        self.devices[device_id].last_seen = now

    def assignment_order(self) -> dict[int, int]:
        """client number -> position in assignment order (reused numbers go last)."""
        return {no: i for i, no in enumerate(self.numbers)}

    def expired(self, now: float, expiry: float, members: Container[str]) -> list[str]:
        """Devices unseen for longer than ``expiry`` that are not current members."""
        return [
            device_id
            for device_id, device in self.devices.items()
            if device_id not in members and now - device.last_seen > expiry
        ]

    def expire(self, device_id: str) -> int:
        """Forget the device's mapping; returns the number it held (now free)."""
        device = self.devices.pop(device_id)
        client_no = device.client_no
        self.numbers.pop(client_no, None)
        position = self._position.pop(client_no, client_no)
        if self.next_client_no > MAX_CLIENT_NO:
            # Only an exhausted counter reuses numbers; the heap holds at most
            # one entry per number (it leaves when the number is given again).
            heapq.heappush(self._free, (position, client_no))
        self.changes.append(("device_expire", self.room_id, device_id))
        return client_no

    def restore(self, devices: Mapping[str, int], next_client_no: int, now: float) -> None:
        """Reload journalled mappings, given in assignment order.

        Devices count as seen now: their expiry clock restarts, which errs on
        the side of keeping numbers stable (a shard that evicted the room from
        memory passes the times it kept to :meth:`restore_last_seen`).
        """
        exhausted = next_client_no > MAX_CLIENT_NO
        self._unindexed_free = True
        for device_id, client_no in devices.items():
            self.devices[device_id] = Device(client_no, now)
            self.numbers[client_no] = device_id
            if exhausted:
                # Reloaded numbers keep their order, after any number freed before.
                self._last_position = max(self._last_position, MAX_CLIENT_NO) + 1
                self._position[client_no] = self._last_position
        self.next_client_no = max(next_client_no, self.next_client_no)

    def last_seen_times(self) -> dict[str, float]:
        """device id -> last seen, for a shard that drops the room from memory."""
        return {device_id: device.last_seen for device_id, device in self.devices.items()}

    def restore_last_seen(self, times: Mapping[str, float], now: float) -> None:
        """Give reloaded devices back the last-seen times kept while the room
        was out of memory, so eviction never extends a mapping's lifetime."""
        for device_id, last_seen in times.items():
            device = self.devices.get(device_id)
            if device is not None:
                device.last_seen = min(last_seen, now)
