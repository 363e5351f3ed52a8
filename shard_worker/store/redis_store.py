"""The shared room store: every node's rooms in one Valkey/Redis server.

Cluster mode (``store = "redis://host:6379/0"``). What it adds to the
embedded SQLite store:

* **Leases with fencing.** A shard takes a room's lease before it loads the
  room (:meth:`acquire`) and renews it while it serves it; every write is one
  server-side script per room that first checks the lease still names this
  shard and its fencing token (``redis_scripts.APPLY``). The writes of a
  deposed owner are refused and counted, never applied.
* **Write-behind in one round trip.** One loop turn's change records become
  one pipelined round trip per shard (one script call per touched room), made
  before the messages that announce them leave the shard.
* **Degraded mode.** When the server cannot be reached, the shard keeps
  serving the rooms it holds from memory and buffers change records (bounded,
  overflow counted); every ``retry_interval`` it tries again and flushes the
  buffer in order. While degraded, journal-then-announce cannot hold: records
  announced before they were stored are counted (``unpersisted_announced``).
  Rooms not in memory cannot be loaded (:class:`StoreUnavailable`).

Members are stamped with the node id and node epoch of the ingress that holds
their connection; on load, members of a node incarnation that is gone are
dropped (their connections died with it), as a cold start does in SQLite.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shard_worker.store import redis_scripts
from shard_worker.store.base import (
    ChangeRecord,
    LeaseBusy,
    RoomSnapshot,
    StoreError,
    StoreHealth,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

_VAR = struct.Struct("<iq")  # last writer client number, write sequence; value follows
_POSE = struct.Struct("<q")  # pose sequence; 13 pose bytes follow
_MEMBER = struct.Struct("<BQB")  # flags, node epoch, node id length; node id, identity follow
_STEALTH = 1
_HAS_IDENTITY = 2

# Errors that mean "the server is not reachable now", as opposed to a bug.
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
_RENEW_CHUNK = 500


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a lease: one shard process of one node incarnation.

    ``incarnation`` counts the processes a reload (SIGHUP) started for the
    shard slot; a crashed process restarted by the supervisor keeps it.
    """

    node_id: str
    epoch: int
    shard: int
    pid: int
    incarnation: int = 0

    @property
    def slot(self) -> str:
        """The ``shard`` field the lease scripts compare: "slot.incarnation".

        A lease of our node incarnation with the same value was held by a dead
        predecessor (the supervisor starts a process only after the one it
        replaces is gone) and is taken over at once. Another incarnation of
        the slot may still be alive, handing its rooms over: it is waited for.
        """
        return f"{self.shard}.{self.incarnation}"

    @property
    def owner(self) -> str:
        return f"{self.node_id}/{self.epoch}/{self.slot}/{self.pid}"


def pack_var(value: str, writer: int, seq: int) -> bytes:
    return _VAR.pack(writer, seq) + value.encode("utf-8")


def unpack_var(blob: bytes) -> tuple[str, int, int]:
    writer, seq = _VAR.unpack_from(blob)
    return blob[_VAR.size :].decode("utf-8"), writer, seq


def pack_member(identity: bytes | None, stealth: bool, node_id: str, epoch: int) -> bytes:
    node = node_id.encode("utf-8")
    flags = (_STEALTH if stealth else 0) | (_HAS_IDENTITY if identity is not None else 0)
    return _MEMBER.pack(flags, epoch, len(node)) + node + (identity or b"")


def unpack_member(blob: bytes) -> tuple[bytes | None, bool, str, int]:
    flags, epoch, node_len = _MEMBER.unpack_from(blob)
    at = _MEMBER.size
    node_id = blob[at : at + node_len].decode("utf-8")
    identity = blob[at + node_len :] if flags & _HAS_IDENTITY else None
    return identity, bool(flags & _STEALTH), node_id, epoch


class RedisRoomStore:
    """One shard's view of the shared store. Single-threaded; one owner."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        lease_owner: LeaseOwner,
        *,
        prefix: str = "nsr:",
        lease_ttl: float = 4.0,
        buffer_max_records: int = 200_000,
        retry_interval: float = 1.0,
        member_alive: Callable[[str, int], bool] | None = None,
        member_stamp: Callable[[bytes | None], tuple[str, int]] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.me = lease_owner
        self.prefix = prefix
        self.lease_ttl_ms = max(1, int(lease_ttl * 1000))
        self.buffer_max = buffer_max_records
        self.retry_interval = retry_interval
        self.member_alive = member_alive or self._same_incarnation
        self.member_stamp = member_stamp or (lambda identity: (self.me.node_id, self.me.epoch))
        # No client-side retries: a stalled retry loop would stall the shard's
        # whole loop. The store retries on its own schedule (maintain()).
        self.r = client or redis.Redis.from_url(
            url,
            socket_timeout=1.0,
            socket_connect_timeout=0.25,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._acquire = self.r.register_script(redis_scripts.ACQUIRE)
        self._renew = self.r.register_script(redis_scripts.RENEW)
        self._release = self.r.register_script(redis_scripts.RELEASE)
        self._apply = self.r.register_script(redis_scripts.APPLY)
        self.tokens: dict[str, int] = {}
        self._buffer: deque[ChangeRecord] = deque()
        self._next_retry = 0.0
        self._health = StoreHealth(kind=self.kind, detail=_redact(url))
        self._closed = False

    # ------------------------------------------------------------------ keys

    def _room_prefix(self, room_id: str) -> str:
        return f"{self.prefix}r:{{{room_id}}}:"

    def _keys(self, room_id: str) -> list[str]:
        p = self._room_prefix(room_id)
        return [
            p + "lease", p + "fence", p + "meta", p + "devices", p + "devorder", p + "globals",
            p + "cvdev", p + "objects", p + "objposes", p + "members", p + "memorder",
            self.prefix + "rooms",
        ]

    def _same_incarnation(self, node_id: str, epoch: int) -> bool:
        return node_id == self.me.node_id and epoch == self.me.epoch

    # ---------------------------------------------------------------- health

    @property
    def degraded(self) -> bool:
        return self._health.degraded

    def health(self) -> StoreHealth:
        self._health.buffered_records = len(self._buffer)
        return StoreHealth(**vars(self._health))

    def _enter_degraded(self, exc: BaseException) -> None:
        if not self._health.degraded:
            self._health.degraded = True
            self._health.outages += 1
            log.error("store %s unreachable (%s): serving from memory, buffering writes",
                      _redact(self.url), exc)
        self._next_retry = time.monotonic() + self.retry_interval

    # ---------------------------------------------------------------- leases

    def _lease_args(self) -> list[str | int]:
        me = self.me
        return [me.owner, me.node_id, me.epoch, me.slot]

    def acquire(self, room_id: str) -> int:
        if self._health.degraded:
            raise StoreUnavailable(f"store {_redact(self.url)} is unreachable")
        keys = self._keys(room_id)
        try:
            result = self._acquire(keys=keys[:2], args=[*self._lease_args(), self.lease_ttl_ms])
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)
            raise StoreUnavailable(str(exc)) from exc
        if int(result[0]) == 1:
            token = int(result[1])
            self.tokens[room_id] = token
            return token
        pttl = max(int(result[1]), 0)
        holder = result[2].decode("utf-8", "replace") if isinstance(result[2], bytes) else str(result[2])
        raise LeaseBusy(room_id, holder, pttl / 1000.0)

    def renew(self, room_ids: Iterable[str]) -> list[str]:
        rooms = [r for r in room_ids if r in self.tokens]
        if not rooms or self._health.degraded:
            return []
        lost: list[str] = []
        try:
            pipe = self.r.pipeline(transaction=False)
            chunks = [rooms[i : i + _RENEW_CHUNK] for i in range(0, len(rooms), _RENEW_CHUNK)]
            for chunk in chunks:
                keys: list[str] = []
                for room_id in chunk:
                    p = self._room_prefix(room_id)
                    keys += (p + "lease", p + "fence")
                self._renew(
                    keys=keys,
                    args=[*self._lease_args(), self.lease_ttl_ms, *(self.tokens[r] for r in chunk)],
                    client=pipe,
                )
            for chunk, result in zip(chunks, pipe.execute(), strict=True):
                lost.extend(chunk[int(i) - 1] for i in result)
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)
            return []
        for room_id in lost:
            self.tokens.pop(room_id, None)
        return lost

    def release(self, room_ids: Iterable[str]) -> None:
        rooms = [r for r in room_ids if self.tokens.pop(r, None) is not None]
        if not rooms or self._health.degraded:
            return  # an unreachable store lets the lease run out instead
        try:
            pipe = self.r.pipeline(transaction=False)
            for room_id in rooms:
                self._release(keys=[self._room_prefix(room_id) + "lease"], args=[self.me.owner], client=pipe)
            pipe.execute()
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)

    # ---------------------------------------------------------------- writes

    def apply(self, changes: Sequence[ChangeRecord]) -> list[str]:
        if not changes:
            return []
        if self._health.degraded:
            self._buffer_records(changes)
            return []
        try:
            return self._write(changes)
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)
            self._buffer_records(changes)
            return []

    def _buffer_records(self, changes: Sequence[ChangeRecord]) -> None:
        self._health.unpersisted_announced += len(changes)
        room = self._buffer
        for record in changes:
            if len(room) >= self.buffer_max:
                # Oldest first: what is dropped is what newer records most
                # likely superseded. Counted: durability is lost for it.
                room.popleft()
                self._health.dropped_records += 1
            room.append(record)

    def _write(self, changes: Sequence[ChangeRecord]) -> list[str]:
        by_room: dict[str, list[bytes | str | int]] = {}
        stamp = self.member_stamp
        for record in changes:
            room_id = record[1]
            assert isinstance(room_id, str)
            if room_id not in self.tokens:
                # A room this shard no longer serves (released or lost): its
                # late records must not reach the new owner's state.
                self._health.rejected_writes += 1
                continue
            by_room.setdefault(room_id, []).extend(_encode_record(record, stamp))
        if not by_room:
            return []
        pipe = self.r.pipeline(transaction=False)
        rooms = list(by_room)
        base = self._lease_args()
        for room_id in rooms:
            self._apply(
                keys=self._keys(room_id),
                args=[*base, self.tokens[room_id], self.lease_ttl_ms, room_id,
                      self._room_prefix(room_id) + "cv:", *by_room[room_id]],
                client=pipe,
            )
        refused = [room_id for room_id, ok in zip(rooms, pipe.execute(), strict=True) if int(ok) != 1]
        for room_id in refused:
            self._health.rejected_writes += 1
            self.tokens.pop(room_id, None)
            log.warning("write for room %r refused: this shard no longer holds its lease", room_id)
        return refused

    def maintain(self, now: float) -> list[str]:
        """Retry an unreachable store; flush the buffer in order once it answers."""
        if not self._health.degraded or now < self._next_retry or self._closed:
            return []
        try:
            self.r.ping()
            refused: list[str] = []
            while self._buffer:
                chunk = [self._buffer.popleft() for _ in range(min(len(self._buffer), 5000))]
                try:
                    refused += self._write(chunk)
                except _UNREACHABLE:
                    self._buffer.extendleft(reversed(chunk))
                    raise
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)
            return []
        self._health.degraded = False
        log.warning("store %s reachable again: buffered writes flushed", _redact(self.url))
        # Leases may have run out while we were away; renewal re-checks them.
        return refused + self.renew(list(self.tokens))

    # ----------------------------------------------------------------- reads

    def load_room(self, room_id: str) -> RoomSnapshot | None:
        if self._health.degraded:
            raise StoreUnavailable(f"store {_redact(self.url)} is unreachable")
        k = self._keys(room_id)
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.sismember(k[11], room_id)
            pipe.hgetall(k[2])
            pipe.zrange(k[4], 0, -1)
            pipe.hgetall(k[3])
            pipe.hgetall(k[5])
            pipe.smembers(k[6])
            pipe.hgetall(k[7])
            pipe.hgetall(k[8])
            pipe.zrange(k[10], 0, -1)
            pipe.hgetall(k[9])
            present, meta, devorder, devices, globals_, cvdev, objects, objposes, memorder, members = pipe.execute()
            if not present:
                return None
            cv_prefix = self._room_prefix(room_id) + "cv:"
            cvdevs = sorted(d.decode("utf-8") for d in cvdev)
            cvs = []
            if cvdevs:
                pipe = self.r.pipeline(transaction=False)
                for dev in cvdevs:
                    pipe.hgetall(cv_prefix + dev)
                cvs = pipe.execute()
        except _UNREACHABLE as exc:
            self._enter_degraded(exc)
            raise StoreUnavailable(str(exc)) from exc
        return self._snapshot(room_id, meta, devorder, devices, globals_, cvdevs, cvs, objects,
                              objposes, memorder, members)

    def _snapshot(self, room_id, meta, devorder, devices, globals_, cvdevs, cvs, objects,
                  objposes, memorder, members) -> RoomSnapshot:  # noqa: ANN001 (raw replies)
        snap = RoomSnapshot(
            room_id=room_id,
            next_client_no=int(meta.get(b"next_client_no", 1)),
            write_seq=int(meta.get(b"write_seq", 0)),
        )
        for dev in devorder:
            no = devices.get(dev)
            if no is not None:
                snap.devices[dev.decode("utf-8")] = int(no)
        decoded = sorted(
            ((name.decode("utf-8"), *unpack_var(blob)) for name, blob in globals_.items()),
            key=lambda row: row[3],
        )
        snap.globals = {name: (value, writer, seq) for name, value, writer, seq in decoded}
        for dev, variables in zip(cvdevs, cvs, strict=True):
            rows = sorted(
                ((name.decode("utf-8"), *unpack_var(blob)) for name, blob in variables.items()),
                key=lambda row: row[3],
            )
            if rows:
                snap.client_vars[dev] = {name: (value, writer, seq) for name, value, writer, seq in rows}
        snap.objects = {int(oid): int(owner) for oid, owner in sorted(objects.items(), key=lambda kv: int(kv[0]))}
        for oid, blob in sorted(objposes.items(), key=lambda kv: int(kv[0])):
            (seq,) = _POSE.unpack_from(blob)
            snap.object_poses[int(oid)] = (blob[_POSE.size :], seq)
        for dev in memorder:
            blob = members.get(dev)
            if blob is None:
                continue
            identity, stealth, node_id, epoch = unpack_member(blob)
            if self.member_alive(node_id, epoch):
                snap.members[dev.decode("utf-8")] = (identity, stealth)
        return snap

    def room_ids(self) -> list[str]:
        try:
            return sorted(r.decode("utf-8") for r in self.r.smembers(self.prefix + "rooms"))
        except _UNREACHABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    # --------------------------------------------------------------- closing

    def close(self) -> None:
        """Flush what can be flushed, hand every lease back, close."""
        if self._closed:
            return
        if self._health.degraded:
            self._next_retry = 0.0
            self.maintain(time.monotonic())
        if self._buffer:
            log.error("store closed with %d buffered records not persisted", len(self._buffer))
        self.release(list(self.tokens))
        self._closed = True
        self.r.close()


def _encode_record(record: ChangeRecord, stamp: Callable[[bytes | None], tuple[str, int]]) -> list:
    """One change record as the APPLY script's flat argument list (binary-safe).

    Members are stamped with the node incarnation whose ingress holds their
    connection, so a later load can tell live identities from dead ones.
    """
    kind = record[0]
    if kind == "device":
        _, _, dev, no, nxt = record
        return ["D", dev, no, nxt]
    if kind == "device_expire":
        return ["X", record[2]]
    if kind == "global":
        _, _, name, value, writer, seq = record
        return ["G", name, pack_var(value, writer, seq), seq]
    if kind == "client_var":
        _, _, dev, name, value, writer, seq = record
        return ["C", dev, name, pack_var(value, writer, seq), seq]
    if kind == "client_var_del":
        _, _, dev, name = record
        return ["c", dev, name or "", "1" if name is None else "0"]
    if kind == "object":
        _, _, oid, owner = record
        return ["O", oid, owner]
    if kind == "object_pose":
        _, _, oid, pose, seq = record
        return ["P", oid, _POSE.pack(seq) + pose]
    if kind == "member":
        _, _, dev, identity, stealth = record
        return ["M", dev, pack_member(identity, bool(stealth), *stamp(identity))]
    if kind == "member_remove":
        return ["m", record[2]]
    if kind == "room_delete":
        return ["R"]
    raise ValueError(f"unknown change record kind {kind!r}")


def _redact(url: str) -> str:
    """The URL without a password, for logs and status."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def open_redis_store(url: str, lease_owner: LeaseOwner, **options: object) -> RedisRoomStore:
    """Connect and check the server answers; a wrong URL is a start-up error."""
    try:
        store = RedisRoomStore(url, lease_owner, **options)  # type: ignore[arg-type]
    except (ValueError, redis.RedisError) as exc:
        raise StoreError(_redact(url), f"cannot use store: {exc}") from exc
    return store
