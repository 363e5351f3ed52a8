"""The rooms' durable state, as every store implementation sees it.

One small interface (:class:`RoomStore`) with two implementations chosen by
one option (``store``): SQLite per shard (the embedded default, nothing to
start) and a shared Valkey/Redis server (cluster mode). Nothing above this
interface knows which one it talks to, in the way Centrifugo's engines hide
whether presence lives in memory or in Redis.

What is durable (DESIGN.md, "State that must survive"): device-id -> client-
number mappings with each room's counter, global and client variables with
their writer and write sequence, object ownership and the last object poses
that late joiners get, and the current members with their control identity.
Poses of clients and timers are ephemeral.

Rooms produce *change records* (plain tuples, below); the worker hands one
loop turn's records to :meth:`RoomStore.apply` *before* any message that
announces them leaves the shard (journal, then announce). A shard that loads a
room first takes its lease (:meth:`RoomStore.acquire`), so that at most one
shard in the whole cluster serves, and writes, a room at a time.

Change records::

    ("device", room_id, device_id, client_no, next_client_no)
    ("device_expire", room_id, device_id)
    ("global", room_id, name, value, last_writer_client_no, seq)
    ("client_var", room_id, device_id, name, value, last_writer_client_no, seq)
    ("client_var_del", room_id, device_id, name_or_None)
    ("object", room_id, object_id, owner_client_no)
    ("object_pose", room_id, object_id, pose_bytes, pose_seq)
    ("room_delete", room_id)
    ("member", room_id, device_id, control_identity_or_None, stealth)
    ("member_remove", room_id, device_id)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ChangeRecord",
    "LeaseBusy",
    "RoomSnapshot",
    "RoomStore",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
]

# One field of a change record: room ids, names and values are str, numbers
# int, control identities and object poses bytes, the stealth flag bool, and
# "all of a device's variables" None.
RecordField = str | int | bytes | bool | None
ChangeRecord = tuple[RecordField, ...]


class StoreError(Exception):
    """The store cannot be opened or is unusable: a start-up stopper."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"shard store {path}: {problem}")
        self.path = path


class StoreUnavailable(Exception):
    """The shared store cannot be reached right now (degraded mode).

    Rooms already in memory keep being served; a room that is not loaded
    cannot be, since its state is unknown until the store answers again.
    """


class LeaseBusy(Exception):
    """Another shard holds the room's lease; try again in ``retry_after`` s."""

    def __init__(self, room_id: str, holder: str, retry_after: float) -> None:
        super().__init__(f"room {room_id!r} is leased by {holder}")
        self.room_id = room_id
        self.holder = holder
        self.retry_after = retry_after


@dataclass
class RoomSnapshot:
    """Everything durable about one room, as the shard that loads it needs it."""

    room_id: str
    # device_id -> client_no, in assignment order
    devices: dict[str, int] = field(default_factory=dict)
    next_client_no: int = 1
    # highest write sequence ever stored for the room (deletions do not lower it)
    write_seq: int = 0
    # name -> (value, last_writer_client_no, seq), ordered by seq
    globals: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # device_id -> name -> (value, last_writer_client_no, seq), ordered by seq
    client_vars: dict[str, dict[str, tuple[str, int, int]]] = field(default_factory=dict)
    # object_id -> owner client number (0 = unowned), ordered by object id
    objects: dict[int, int] = field(default_factory=dict)
    # device_id -> (control identity or None, stealth), in member creation order
    members: dict[str, tuple[bytes | None, bool]] = field(default_factory=dict)
    # object_id -> (13 pose bytes, pose sequence): what a late joiner is sent
    object_poses: dict[int, tuple[bytes, int]] = field(default_factory=dict)


@dataclass
class StoreHealth:
    """What the operator sees of a store: /healthz, status and metrics."""

    kind: str
    degraded: bool = False
    # change records waiting for the store to come back (bounded)
    buffered_records: int = 0
    # records given up because the buffer was full: durability lost, counted
    dropped_records: int = 0
    # writes refused because this shard no longer held the room's lease
    rejected_writes: int = 0
    # records applied while degraded: announced before they were durable
    unpersisted_announced: int = 0
    outages: int = 0
    detail: str = ""


class RoomStore(Protocol):
    """Durable room state for one shard. Single-threaded: one owner calls it."""

    kind: str

    def apply(self, changes: Sequence[ChangeRecord]) -> list[str]:
        """Persist one loop turn's change records, in order.

        Returns the ids of rooms whose writes were refused because this shard
        no longer holds their lease (it must stop serving them). In degraded
        mode the records are buffered instead and [] is returned.
        """
        ...

    def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The stored state of a room (None if nothing is stored).

        Raises :class:`StoreUnavailable` when the store cannot be reached.
        """
        ...

    def acquire(self, room_id: str) -> int:
        """Take (or confirm) this shard's lease on a room; return its fencing token.

        Raises :class:`LeaseBusy` when another live shard holds it and
        :class:`StoreUnavailable` when the store cannot be reached.
        """
        ...

    def release(self, room_ids: Iterable[str]) -> None:
        """Give up the leases of rooms this shard stops serving (hand-over)."""
        ...

    def renew(self, room_ids: Iterable[str]) -> list[str]:
        """Extend the leases of the rooms being served; return the ones lost."""
        ...

    def maintain(self, now: float) -> None:
        """Periodic work: retry the connection and flush buffered writes."""
        ...

    def health(self) -> StoreHealth:
        ...

    def room_ids(self) -> list[str]:
        """Ids of all rooms with stored state, sorted (tools and tests)."""
        ...

    def close(self) -> None:
        """Flush what is buffered (best effort), release every lease, close."""
        ...
