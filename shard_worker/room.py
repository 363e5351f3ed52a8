"""State of one room: a pure state machine, no sockets, no clocks of its own.

Every method takes the current monotonic time and a decoded message and
returns the control unicasts to send as ``(identities, payload)`` pairs. The
worker loop does the I/O. Broadcast frames (room pose, room objects) are built
on request by ``build_room_pose`` / ``build_room_objects``.

Semantics follow BEHAVIOR.md §1–§11, without the reference's weaknesses:
pose bodies belong to a member (W1), empty device ids are ignored (W4),
object poses need membership (W5), a joiner alone gets the full snapshot
(W7), poseTime is the pose receive time (W15), names are limited in UTF-8
bytes as well as characters (W11) and NV flushes honour their interval (W17).

This module's own job is membership (§3, §6, §7), the join sequences (§4),
mapping broadcasts (§5), RPC fan-out (§9), room poses (§8), and deciding who
receives what. The rest lives in one class each, which ``Room`` composes:

- ``shard_worker/numbering.py``: device id <-> client number (§2);
- ``shard_worker/network_variables.py``: global and client variables (§10);
- ``shard_worker/objects.py``: objects and ownership (§11).

Durable changes (device numbers, variables, ownership, members) are appended
to ``changes`` as plain tuples (formats in ``shard_worker/store/base.py``); the
worker journals them before any message that announces them leaves the shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.protocol import ProtocolError, encode
from relay.protocol.fastpath import assemble_room_pose, room_pose_header
from relay.protocol.messages import FLAG_STEALTH, DeviceIdMapping, MappingEntry, Rpc
from shard_worker.network_variables import (
    MAX_STR8_BYTES,
    NetworkVariables,
    NvLimitError,
    RestValidationError,
    Var,
    name_fits_wire,
    truncate_text,
)
from shard_worker.numbering import MAX_CLIENT_NO, ClientNumbering, Device
from shard_worker.objects import ObjectTable, RoomObject
from shard_worker.room_settings import RoomCounters, RoomSettings, limited_log

# Importable from here as before the split (ShardState, tests, the lead's store).
__all__ = [
    "MAX_CLIENT_NO",
    "MAX_STR8_BYTES",
    "Device",
    "Member",
    "NvLimitError",
    "RestValidationError",
    "Room",
    "RoomCounters",
    "RoomObject",
    "RoomSettings",
    "Unicast",
    "Var",
    "limited_log",
    "name_fits_wire",
    "truncate_text",
]

Unicast = tuple[tuple[bytes, ...], bytes]


@dataclass(slots=True)
class Member:
    device_id: str
    client_no: int
    control_identity: bytes | None
    transform_identity: bytes | None
    last_update: float
    stealth: bool
    pose_body: bytes | None = None
    pose_time: float = 0.0
    # Last control message from ``control_identity`` (the W14 guard's clock).
    control_seen: float = 0.0


class Room:
    def __init__(self, room_id: str, settings: RoomSettings, now: float) -> None:
        self.room_id = room_id
        self.room_id_bytes = room_id.encode("utf-8")
        self.settings = settings
        changes: list[tuple] = []
        counters = RoomCounters()
        self.members: dict[str, Member] = {}
        self.numbering = ClientNumbering(room_id, changes)
        self.nv = NetworkVariables(room_id, settings, self.numbering, changes, counters, now)
        self.object_table = ObjectTable(room_id, settings, changes, counters)
        self._changes = changes
        self._counters = counters
        self.pose_dirty = True
        self.mapping_dirty = False
        # Rooms whose RPC route table (members with a control identity) may
        # have changed, the shard's set; it republishes them to its ingress
        # (supervisor/rpc_fanout.py).
        self.routes_dirty: set[str] = set()
        self.last_pose_broadcast = -1e18
        self.last_mapping_broadcast = -1e18
        self.empty_since: float | None = now
        # Last message or REST call for the room: which empty room the shard
        # evicts first, and when an idle one leaves memory.
        self.last_touch = now
        # CLIENT_VAR_SYNCs announcing a joiner's queued variables to the
        # others, picked up by the handler that created the member.
        self._join_syncs: list[Unicast] = []
        self._pose_header = room_pose_header(room_id)

    # ------------------------------------------------ shared sinks and views

    @property
    def changes(self) -> list[tuple]:
        """Journal records of this room; a shard points every room at one list."""
        return self._changes

    @changes.setter
    def changes(self, changes: list[tuple]) -> None:
        self._changes = changes
        for part in (self.numbering, self.nv, self.object_table):
            part.changes = changes

    @property
    def counters(self) -> RoomCounters:
        """Refusals and work; a shard shares one instance among its rooms."""
        return self._counters

    @counters.setter
    def counters(self, counters: RoomCounters) -> None:
        self._counters = counters
        self.nv.counters = counters
        self.object_table.counters = counters

    # The parts' state, readable (and for numbering, settable) through the
    # room as before the split: ShardState and the tests look at it.

    @property
    def devices(self) -> dict[str, Device]:
        return self.numbering.devices

    @property
    def numbers(self) -> dict[int, str]:
        return self.numbering.numbers

    @numbers.setter
    def numbers(self, numbers: dict[int, str]) -> None:
        self.numbering.numbers = numbers

    @property
    def next_client_no(self) -> int:
        return self.numbering.next_client_no

    @next_client_no.setter
    def next_client_no(self, value: int) -> None:
        self.numbering.next_client_no = value

    @property
    def globals(self) -> dict[str, Var]:
        return self.nv.globals

    @property
    def client_vars(self) -> dict[str, dict[str, Var]]:
        return self.nv.client_vars

    @property
    def write_seq(self) -> int:
        return self.nv.write_seq

    @property
    def pending_globals(self) -> dict[str, tuple[str, int]]:
        return self.nv.pending_globals

    @property
    def pending_client(self) -> dict[tuple[int, str], tuple[str, int]]:
        return self.nv.pending_client

    @property
    def last_flush_wait(self) -> float | None:
        return self.nv.last_flush_wait

    @property
    def objects(self) -> dict[int, RoomObject]:
        return self.object_table.objects

    @property
    def objects_dirty(self) -> bool:
        return self.object_table.dirty

    def restore(self, snapshot: Any, now: float) -> None:
        """Reload durable state journalled by an earlier process (lazy, on first touch).

        Devices count as seen now: their expiry clock restarts, which errs on
        the side of keeping numbers stable.
        """
        self.numbering.restore(snapshot.devices, snapshot.next_client_no, now)
        self.nv.restore(snapshot.write_seq, snapshot.globals, snapshot.client_vars)
        self.object_table.restore(snapshot.objects, getattr(snapshot, "object_poses", {}), now)
        # Members of a crashed shard come back as they were (minus poses,
        # which clients resend at once); the silent ones time out as usual.
        for device_id, (identity, stealth) in getattr(snapshot, "members", {}).items():
            client_no = self.numbering.number_of(device_id)
            if client_no is None:
                continue
            self.members[device_id] = Member(device_id, client_no, identity, None, now, stealth, control_seen=now)
        self.routes_dirty.add(self.room_id)
        self.nv.track_queued(now)
        if self.members:
            self.empty_since = None
            self.mapping_dirty = True

    def idle(self) -> bool:
        """No members and nothing in flight: the room may leave the shard's
        memory, its durable state being all there is to it.

        Buffered NV writes, object poses not journalled yet and an objects
        broadcast still due keep it. Journal records already produced are the
        shard's to write before it releases the room.
        """
        return (
            not self.members
            and not self.nv.pending_globals
            and not self.nv.pending_client
            and not self.object_table.dirty
            and not self.object_table.has_unsaved_poses
        )

    def eviction_times(self) -> tuple[dict[str, float], dict[str, float]]:
        """The clocks a reload would otherwise restart: devices' last seen and
        queued devices' last REST write (see :meth:`restore_times`)."""
        return self.numbering.last_seen_times(), dict(self.nv.queued_since)

    def restore_times(
        self, empty_since: float, last_seen: dict[str, float], queued_since: dict[str, float], now: float
    ) -> None:
        """After a reload of a room the shard had evicted: its expiry clocks
        continue where they were (device and room expiry are never extended
        by a stay out of memory)."""
        if not self.members:
            self.empty_since = min(empty_since, now)
        self.numbering.restore_last_seen(last_seen, now)
        for device_id, at in queued_since.items():
            if device_id in self.nv.queued_since:
                self.nv.queued_since[device_id] = min(at, now)

    # ------------------------------------------------------------ membership

    def rpc_routes(self) -> list[tuple[int, bytes, bytes]]:
        """(client number, deviceId UTF-8, control identity) of every member an
        RPC can come from or go to: the table the ingress fans RPCs out by."""
        return [(m.client_no, m.device_id.encode("utf-8"), m.control_identity)
                for m in self.members.values() if m.control_identity]

    def on_rpc_delivered(self, identity: bytes, device_id: str, now: float) -> list[Unicast]:
        """An RPC the ingress already fanned out from this room's route table:
        only the sender's registration (BEHAVIOR §3) is left to do."""
        self._control_sender(identity, device_id, now)
        return self._with_join_syncs([])

    def _control_identities(self) -> tuple[bytes, ...]:
        return tuple(m.control_identity for m in self.members.values() if m.control_identity)

    def _to_room(self, payloads: list[bytes]) -> list[Unicast]:
        """Send each payload to every member with a control identity."""
        if not payloads:
            return []
        recipients = self._control_identities()
        return [(recipients, p) for p in payloads] if recipients else []

    def _touch_member(
        self,
        device_id: str,
        now: float,
        *,
        control_identity: bytes | None = None,
        transform_identity: bytes | None = None,
        stealth: bool | None = None,
    ) -> tuple[Member | None, bool]:
        """Find or create the member; returns (member, created).

        Raises ``ProtocolError`` (the message is dropped, nothing changed) for
        a control message taking over a live member's device id while the
        W14 guard is on (``device_takeover_refused``) and for a new member
        beyond ``max_clients_per_room`` (``room_full``).
        """
        member = self.members.get(device_id)
        if member is not None:
            if control_identity is not None:
                if self._takeover_refused(member, control_identity, now):
                    raise ProtocolError(
                        "device_takeover_refused",
                        f"device {device_id[:64]!r} is live on another connection",
                    )
                member.control_seen = now
            member.last_update = now
            self.numbering.touch(device_id, now)
            return member, False
        cap = self.settings.max_clients_per_room
        if cap and len(self.members) >= cap:
            raise ProtocolError("room_full", f"room has {len(self.members)} members (max_clients_per_room)")
        numbered = self.numbering.number_of(device_id) is not None
        client_no = self.numbering.assign(device_id, now)
        if client_no is None:
            return None, False
        if not numbered:
            self._announce_queued(device_id, client_no)
        member = Member(
            device_id=device_id,
            client_no=client_no,
            control_identity=control_identity,
            transform_identity=transform_identity,
            last_update=now,
            stealth=bool(stealth),
            control_seen=now,
        )
        self.members[device_id] = member
        if control_identity is not None:
            self.routes_dirty.add(self.room_id)
        self._journal_member(member)
        self.empty_since = None
        self.mapping_dirty = True
        self.pose_dirty = True
        return member, True

    def _takeover_refused(self, member: Member, identity: bytes, now: float) -> bool:
        """W14 guard: a new control identity for a device whose current one was
        heard from within ``client_timeout``. Off by default: a client whose
        control socket reconnects (network blip, a node of the cluster dying)
        legitimately comes back with a new identity for the same device."""
        return (
            self.settings.guard_device_takeover
            and member.control_identity is not None
            and member.control_identity != identity
            and now - member.control_seen <= self.settings.client_timeout
        )

    def _announce_queued(self, device_id: str, client_no: int) -> None:
        """A device got its first number: variables queued for it over REST go
        to the members already there (the joiner gets them in its full NV)."""
        self.nv.device_mapped(device_id)
        if self.nv.client_vars.get(device_id):
            recipients = self._control_identities()
            if recipients:
                self._join_syncs.append((recipients, self.nv.client_sync_payload([client_no])))

    def _with_join_syncs(self, out: list[Unicast]) -> list[Unicast]:
        """The handler's unicasts after the join syncs it caused: the others
        learn the queued variables before anything the new member changes
        (a CLIENT_VAR_CLEAR as its first message must come after them)."""
        if self._join_syncs:
            out = self._join_syncs + out
            self._join_syncs = []
        return out

    def _journal_member(self, member: Member) -> None:
        self.changes.append(
            ("member", self.room_id, member.device_id, member.control_identity, member.stealth)
        )

    def _control_sender(self, identity: bytes, device_id: str, now: float) -> Member | None:
        member, created = self._touch_member(device_id, now, control_identity=identity, stealth=False)
        if member is None:
            return None
        if not created and member.control_identity != identity:
            member.control_identity = identity
            self.routes_dirty.add(self.room_id)
            self._journal_member(member)
            self.mapping_dirty = True
        return member

    # ----------------------------------------------------------- snapshots

    def mapping_payload(self) -> bytes:
        return encode(DeviceIdMapping(self.settings.server_version, self._mapping_entries()))

    def _mapping_entries(self) -> tuple[MappingEntry, ...]:
        # Members in client-number assignment order; reused numbers go to the end.
        order = self.numbering.assignment_order()
        members = sorted(self.members.values(), key=lambda m: order.get(m.client_no, 0))
        return tuple(MappingEntry(m.client_no, m.stealth, m.device_id) for m in members)

    def full_nv_payloads(self) -> list[bytes]:
        return self.nv.full_sync_payloads()

    # ------------------------------------------------------------- control

    def on_hello(self, identity: bytes, device_id: str, stealth: bool, now: float) -> list[Unicast]:
        out: list[Unicast] = []
        member, created = self._touch_member(
            device_id, now, control_identity=identity, stealth=stealth
        )
        if member is None:
            return out
        to_client = (identity,)
        # The most recent hello decides stealth (§7), also in its own reply.
        stealth_changed = member.stealth != stealth
        member.stealth = stealth
        if created:
            out.append((to_client, self.mapping_payload()))
            out.extend((to_client, p) for p in self.full_nv_payloads())
            out.extend((to_client, p) for p in self.object_table.snapshot_payloads())
        elif member.control_identity != identity:
            had_identity = member.control_identity is not None
            member.control_identity = identity
            self.routes_dirty.add(self.room_id)
            stealth_changed = True  # journals the new identity below
            out.append((to_client, self.mapping_payload()))
            out.extend((to_client, p) for p in self.full_nv_payloads())
            if not had_identity:
                out.extend((to_client, p) for p in self.object_table.snapshot_payloads())
            self.mapping_dirty = True
        if stealth_changed and not created:
            self._journal_member(member)
            self.mapping_dirty = True
            self.pose_dirty = True
        if stealth:
            self.pose_dirty = True
        return self._with_join_syncs(out)

    def on_rpc(self, identity: bytes, rpc: Rpc, now: float) -> list[Unicast]:
        sender = self._control_sender(identity, rpc.device_id, now)
        if sender is None:
            return []
        payload = encode(
            Rpc(sender.client_no, rpc.device_id, rpc.target_client_nos, rpc.function_name, rpc.arguments_json)
        )
        if rpc.target_client_nos:
            wanted = set(rpc.target_client_nos)
            recipients = tuple(
                m.control_identity
                for m in self.members.values()
                if m.client_no in wanted and m.control_identity
            )
        else:
            recipients = self._control_identities()
        self.counters.rpc_fanout += len(recipients)
        return self._with_join_syncs([(recipients, payload)] if recipients else [])

    def on_global_var_set(
        self, identity: bytes, device_id: str, name: str, value: str, now: float
    ) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is not None:
            self.nv.buffer_global(name, value, sender.client_no, now)
        return self._with_join_syncs([])

    def on_client_var_set(
        self,
        identity: bytes,
        device_id: str,
        target_client_no: int,
        name: str,
        value: str,
        now: float,
    ) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is not None:
            self.nv.buffer_client(target_client_no, name, value, sender.client_no, now)
        return self._with_join_syncs([])

    def on_client_var_clear(self, identity: bytes, device_id: str, now: float) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is None:
            return []
        return self._with_join_syncs(self._to_room([self.nv.clear_client(device_id, sender.client_no)]))

    def on_ownership_request(
        self, identity: bytes, device_id: str, operation: int, object_id: int, now: float
    ) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is None:
            return []
        if object_id == 0:
            return self._with_join_syncs([])
        to_room, to_sender = self.object_table.ownership_request(operation, object_id, sender.client_no)
        if to_sender is not None:
            return self._with_join_syncs([((identity,), to_sender)])
        return self._with_join_syncs(self._to_room([to_room] if to_room is not None else []))

    # ----------------------------------------------------------- transform

    def on_client_pose(
        self, identity: bytes, device_id: str, flags: int, body: bytes, now: float
    ) -> list[Unicast]:
        stealth = bool(flags & FLAG_STEALTH)
        member, created = self._touch_member(
            device_id, now, transform_identity=identity, stealth=stealth
        )
        if member is None:
            return []
        if not created:
            if member.transform_identity != identity:
                member.transform_identity = identity
                self.mapping_dirty = True
            if member.stealth != stealth:
                member.stealth = stealth
                self._journal_member(member)
                self.mapping_dirty = True
        member.pose_body = body
        member.pose_time = now
        self.pose_dirty = True
        return self._with_join_syncs([])

    def repeat_pose(self, member: Member, identity: bytes, stealth: bool, body: bytes, now: float) -> bool:
        """``on_client_pose`` for a member's next pose on the connection it
        already uses, when that pose changes nothing but the pose itself.

        The shard calls this for a sender it has seen (ShardState._pose_senders)
        without looking the member up again. False, with nothing changed,
        when the full handler is needed: the member has gone or been replaced,
        the pose comes from another connection or changes stealth, or join
        syncs wait to leave with the next handler's output.
        """
        if (
            self._join_syncs
            or member.stealth != stealth
            or member.transform_identity != identity
            or self.members.get(member.device_id) is not member
        ):
            return False
        member.last_update = now
        self.numbering.touch(member.device_id, now)
        member.pose_body = body
        member.pose_time = now
        self.pose_dirty = True
        return True

    def on_object_pose(
        self, device_id: str, object_id: int, pose_seq: int, pose_bytes: bytes, now: float
    ) -> list[Unicast]:
        member = self.members.get(device_id)
        if member is None or object_id == 0:
            # Object poses need membership (not W5): a stranger gets no number.
            self.counters.object_poses_refused += 1
            return []
        claimed = self.object_table.pose(object_id, member.client_no, pose_seq, pose_bytes, now)
        return self._to_room([claimed] if claimed is not None else [])

    # --------------------------------------------------------------- timers

    def flush_nv(self, now: float) -> list[Unicast]:
        """Apply buffered writes and return the delta syncs (BEHAVIOR §10.2)."""
        return self._to_room(self.nv.flush(now))

    def nv_flush_due(self, now: float) -> bool:
        return self.nv.flush_due(now)

    def next_nv_flush_at(self) -> float | None:
        return self.nv.next_flush_at()

    def mapping_due(self, now: float) -> bool:
        return (
            self.mapping_dirty
            and bool(self.members)
            and now - self.last_mapping_broadcast >= self.settings.mapping_throttle_interval
        )

    def next_mapping_at(self) -> float | None:
        if not self.mapping_dirty or not self.members:
            return None
        return self.last_mapping_broadcast + self.settings.mapping_throttle_interval

    def broadcast_mapping(self, now: float) -> list[Unicast]:
        self.mapping_dirty = False
        self.last_mapping_broadcast = now
        return self._to_room([self.mapping_payload()])

    def sweep(self, now: float, *, expire_devices: bool = True) -> list[Unicast]:
        """Timeouts, device expiry and ownership releases (BEHAVIOR §6, §2)."""
        out: list[Unicast] = []
        timeout = self.settings.client_timeout
        for member in [m for m in self.members.values() if now - m.last_update > timeout]:
            out.extend(self.remove_member(member.device_id))
        if expire_devices:
            for device_id in self.numbering.expired(now, self.settings.device_id_expiry_time, self.members):
                self._expire_device(device_id)
            if self.nv.queued_since:
                self.nv.expire_queued(now)
        if not self.members and self.empty_since is None:
            self.empty_since = now
        return out

    def remove_member(self, device_id: str) -> list[Unicast]:
        member = self.members.pop(device_id)
        if member.control_identity is not None:
            self.routes_dirty.add(self.room_id)
        self.changes.append(("member_remove", self.room_id, device_id))
        # The pose body leaves with the member (never tied to a bare number).
        self.pose_dirty = True
        self.mapping_dirty = True
        return self._to_room(self.object_table.release_all(member.client_no))

    def evict_member(self, device_id: str, now: float) -> list[Unicast]:
        """Operator eviction: exactly what a timeout does to one member (BEHAVIOR §6).

        Number, mapping and client variables are kept; a client that is still
        running comes back with its next message, as after a timeout.
        """
        out = self.remove_member(device_id)
        if not self.members and self.empty_since is None:
            self.empty_since = now
        return out

    def _expire_device(self, device_id: str) -> None:
        client_no = self.numbering.expire(device_id)
        self.nv.forget_device(device_id, client_no)

    def expired(self, now: float) -> bool:
        return (
            not self.members
            and self.empty_since is not None
            and now - self.empty_since > self.settings.empty_room_expiry_time
        )

    # ----------------------------------------------------------- broadcasts

    def room_pose_due(self, now: float) -> bool:
        if not self.members:
            return False
        since = now - self.last_pose_broadcast
        if since >= self.settings.idle_broadcast_interval:
            return True
        return self.pose_dirty and since >= self.settings.broadcast_gap_min

    def build_room_pose(self, now: float) -> bytes:
        self.pose_dirty = False
        self.last_pose_broadcast = now
        entries = [
            (m.client_no, m.pose_time, m.pose_body)
            for m in self.members.values()
            if not m.stealth and m.pose_body is not None
        ]
        return assemble_room_pose(self._pose_header, now, entries)

    def visible_count(self) -> int:
        return sum(1 for m in self.members.values() if not m.stealth)

    def room_objects_due(self, now: float) -> bool:
        return self.object_table.broadcast_due(now)

    def build_room_objects(self, now: float) -> bytes | None:
        return self.object_table.build_broadcast(now)

    # ----------------------------------------------------------------- REST

    def rest_client_number(self, device_id: str) -> int | None:
        return self.numbering.number_of(device_id)

    def rest_set_client_vars(self, device_id: str, variables: dict[str, str], now: float) -> tuple[dict, list[Unicast]]:
        client_no = self.rest_client_number(device_id)
        changed = self.nv.rest_set_client_vars(device_id, client_no, variables, now)
        state = "applied" if client_no is not None else "queued"
        result = {name: {"state": state} for name in variables}
        out: list[Unicast] = []
        if client_no is not None and changed:
            out = self._to_room([self.nv.client_sync_payload([client_no])])
        return {"clientNo": client_no, "result": result}, out

    def rest_get_client_vars(self, device_id: str) -> dict:
        return {"clientNo": self.rest_client_number(device_id), "variables": self.nv.client_values(device_id)}

    def rest_delete_client_vars(self, device_id: str, name: str | None) -> tuple[dict, list[Unicast]]:
        client_no = self.rest_client_number(device_id)
        removed = self.nv.delete_client_vars(device_id, client_no, name)
        out: list[Unicast] = []
        if client_no is not None and removed:
            out = self._to_room([self.nv.client_sync_payload([client_no])])
        return {"clientNo": client_no, "deletedCount": removed}, out

    def rest_set_globals(self, variables: dict[str, str]) -> tuple[dict, list[Unicast]]:
        changed = self.nv.rest_set_globals(variables)
        out = self._to_room([self.nv.global_sync_payload(changed)] if changed else [])
        return {"result": {name: {"state": "applied"} for name in variables}}, out

    def rest_get_globals(self) -> dict:
        return {"variables": self.nv.global_values()}

    # ------------------------------------------------------------- status

    def stats(self) -> dict[str, int]:
        stealth = sum(1 for m in self.members.values() if m.stealth)
        return {
            "members": len(self.members),
            "visible": len(self.members) - stealth,
            "stealth": stealth,
            "devices": len(self.numbering.devices),
            "objects": len(self.object_table.objects),
        }
