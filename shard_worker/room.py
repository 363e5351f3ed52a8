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

Durable changes (device numbers, variables, ownership) are appended to
``changes`` as plain tuples; the worker journals them before any message that
announces them leaves the shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from relay.config import RelayConfig
from relay.protocol import encode
from relay.protocol.fastpath import assemble_room_objects, assemble_room_pose, room_pose_header
from relay.protocol.messages import (
    FLAG_STEALTH,
    OWNERSHIP_OP_RELEASE,
    OWNERSHIP_OP_REQUEST,
    OWNERSHIP_REJECT_NOT_OWNER,
    ClientVars,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSync,
    MappingEntry,
    OwnershipChanged,
    OwnershipRejected,
    Rpc,
    VarEntry,
)

log = logging.getLogger(__name__)

MAX_CLIENT_NO = 65535
MAX_STR8_BYTES = 255

Unicast = tuple[tuple[bytes, ...], bytes]

_DEFAULTS = RelayConfig()


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """The subset of the relay configuration that room semantics depend on.

    Defaults are the relay's (one source of truth in ``RelayConfig``); tests
    override single fields.
    """

    client_timeout: float = _DEFAULTS.client_timeout
    device_id_expiry_time: float = _DEFAULTS.device_id_expiry_time
    empty_room_expiry_time: float = _DEFAULTS.empty_room_expiry_time
    transform_broadcast_rate: float = _DEFAULTS.transform_broadcast_rate
    idle_broadcast_interval: float = _DEFAULTS.idle_broadcast_interval
    object_idle_broadcast_interval: float = _DEFAULTS.object_idle_broadcast_interval
    nv_flush_interval: float = _DEFAULTS.nv_flush_interval
    mapping_throttle_interval: float = _DEFAULTS.mapping_throttle_interval
    max_global_vars: int = _DEFAULTS.max_global_vars
    max_client_vars: int = _DEFAULTS.max_client_vars
    max_var_name_length: int = _DEFAULTS.max_var_name_length
    max_var_value_length: int = _DEFAULTS.max_var_value_length
    nv_monitor_window_size: float = _DEFAULTS.nv_monitor_window_size
    nv_monitor_threshold: int = _DEFAULTS.nv_monitor_threshold
    max_objects_per_room: int = _DEFAULTS.max_objects_per_room
    server_version: tuple[int, int, int] = _DEFAULTS.server_version_tuple

    @classmethod
    def from_config(cls, config: RelayConfig) -> RoomSettings:
        values = {name: getattr(config, name) for name in cls.__dataclass_fields__ if name != "server_version"}
        return cls(server_version=config.server_version_tuple, **values)


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


@dataclass(slots=True)
class Device:
    """A device's number in this room; outlives membership until it expires."""

    client_no: int
    last_seen: float


@dataclass(slots=True)
class Var:
    value: str
    last_writer: int
    seq: int


@dataclass(slots=True)
class RoomObject:
    owner: int = 0
    pose_bytes: bytes | None = None
    pose_seq: int = 0
    pose_time: float = 0.0


class NvLimitError(ValueError):
    """A REST write that the limits refuse as a whole (outcome ``limit_exceeded``)."""


class RestValidationError(ValueError):
    """A REST write with a name or value the wire cannot carry (outcome ``invalid``)."""


def truncate_text(text: str, max_chars: int) -> str:
    """The reference's rule: limits count code points, not bytes."""
    return text[:max_chars]


def name_fits_wire(name: str) -> bool:
    """A name must also fit a str8, or every later sync of the room breaks (W11)."""
    return len(name.encode("utf-8")) <= MAX_STR8_BYTES


@dataclass(slots=True)
class RoomCounters:
    """Refusals and work done by rooms; one instance is shared by a shard's
    rooms so the totals stay monotonic when a room expires."""

    nv_writes_refused: int = 0
    nv_writes_applied: int = 0
    rpc_fanout: int = 0
    object_poses_refused: int = 0
    objects_refused: int = 0


class Room:
    def __init__(self, room_id: str, settings: RoomSettings, now: float) -> None:
        self.room_id = room_id
        self.room_id_bytes = room_id.encode("utf-8")
        self.settings = settings
        self.members: dict[str, Member] = {}
        self.devices: dict[str, Device] = {}
        self.numbers: dict[int, str] = {}
        self.next_client_no = 1
        self.globals: dict[str, Var] = {}
        self.client_vars: dict[str, dict[str, Var]] = {}
        self.write_seq = 0
        self.pending_globals: dict[str, tuple[str, int]] = {}
        self.pending_client: dict[tuple[int, str], tuple[str, int]] = {}
        self.pending_since: float | None = None
        self.last_flush_wait: float | None = None
        self.objects: dict[int, RoomObject] = {}
        self.pose_dirty = True
        self.mapping_dirty = False
        self.objects_dirty = False
        self.last_pose_broadcast = -1e18
        self.last_objects_broadcast = -1e18
        self.last_mapping_broadcast = -1e18
        self.last_nv_flush = -1e18
        self.empty_since: float | None = now
        self.changes: list[tuple] = []
        self.counters = RoomCounters()
        self._pose_header = room_pose_header(room_id)
        self._nv_window_start = now
        self._nv_window_count = 0
        self._nv_warned = False

    def restore(self, snapshot: Any, now: float) -> None:
        """Reload durable state journalled by an earlier process (lazy, on first touch).

        Devices count as seen now: their expiry clock restarts, which errs on
        the side of keeping numbers stable.
        """
        for device_id, client_no in snapshot.devices.items():
            self.devices[device_id] = Device(client_no, now)
            self.numbers[client_no] = device_id
        self.next_client_no = max(snapshot.next_client_no, self.next_client_no)
        self.write_seq = snapshot.write_seq
        for name, (value, writer, seq) in snapshot.globals.items():
            self.globals[name] = Var(value, writer, seq)
        for device_id, variables in snapshot.client_vars.items():
            self.client_vars[device_id] = {
                name: Var(value, writer, seq) for name, (value, writer, seq) in variables.items()
            }
        for object_id, owner in snapshot.objects.items():
            self.objects[object_id] = RoomObject(owner=owner)
        # Members of a crashed shard come back as they were (minus poses,
        # which clients resend at once); the silent ones time out as usual.
        for device_id, (identity, stealth) in getattr(snapshot, "members", {}).items():
            device = self.devices.get(device_id)
            if device is None:
                continue
            self.members[device_id] = Member(device_id, device.client_no, identity, None, now, stealth)
        if self.members:
            self.empty_since = None
            self.mapping_dirty = True

    # ------------------------------------------------------------ identity

    def _control_identities(self) -> tuple[bytes, ...]:
        return tuple(m.control_identity for m in self.members.values() if m.control_identity)

    def _assign_number(self, device_id: str, now: float) -> int | None:
        device = self.devices.get(device_id)
        if device is not None:
            device.last_seen = now
            return device.client_no
        if self.next_client_no <= MAX_CLIENT_NO:
            client_no = self.next_client_no
            self.next_client_no += 1
        else:
            client_no = self._first_free_number()
            if client_no is None:
                log.error("room %r: no client number left for device %r", self.room_id, device_id)
                return None
        self.devices[device_id] = Device(client_no, now)
        self.numbers[client_no] = device_id
        self.changes.append(("device", self.room_id, device_id, client_no, self.next_client_no))
        return client_no

    def _first_free_number(self) -> int | None:
        # Only reached after 65 535 assignments; numbers whose device expired
        # are free again, lowest first (assignment order of the original counter).
        for client_no in range(1, MAX_CLIENT_NO + 1):
            if client_no not in self.numbers:
                return client_no
        return None

    def _touch_member(
        self,
        device_id: str,
        now: float,
        *,
        control_identity: bytes | None = None,
        transform_identity: bytes | None = None,
        stealth: bool | None = None,
    ) -> tuple[Member | None, bool]:
        """Find or create the member; returns (member, created)."""
        member = self.members.get(device_id)
        if member is not None:
            member.last_update = now
            self.devices[device_id].last_seen = now
            return member, False
        client_no = self._assign_number(device_id, now)
        if client_no is None:
            return None, False
        member = Member(
            device_id=device_id,
            client_no=client_no,
            control_identity=control_identity,
            transform_identity=transform_identity,
            last_update=now,
            stealth=bool(stealth),
        )
        self.members[device_id] = member
        self._journal_member(member)
        self.empty_since = None
        self.mapping_dirty = True
        self.pose_dirty = True
        return member, True

    def _journal_member(self, member: Member) -> None:
        self.changes.append(
            ("member", self.room_id, member.device_id, member.control_identity, member.stealth)
        )

    # ----------------------------------------------------------- snapshots

    def mapping_payload(self) -> bytes:
        return encode(DeviceIdMapping(self.settings.server_version, self._mapping_entries()))

    def _mapping_entries(self) -> tuple[MappingEntry, ...]:
        # Client-number assignment order == order of self.numbers insertion for
        # numbers given by the counter; reused numbers go to the end naturally.
        order = {no: i for i, no in enumerate(self.numbers)}
        members = sorted(self.members.values(), key=lambda m: order.get(m.client_no, 0))
        return tuple(MappingEntry(m.client_no, m.stealth, m.device_id) for m in members)

    def _var_entries(self, variables: dict[str, Var]) -> tuple[VarEntry, ...]:
        return tuple(VarEntry(name, var.value, var.last_writer) for name, var in variables.items())

    def full_nv_payloads(self) -> list[bytes]:
        payloads = []
        if self.globals:
            payloads.append(encode(GlobalVarSync(self._var_entries(self.globals))))
        clients = tuple(
            ClientVars(client_no, self._var_entries(self.client_vars.get(device_id, {})))
            for client_no, device_id in self.numbers.items()
        )
        if clients:
            payloads.append(encode(ClientVarSync(clients)))
        return payloads

    def _object_snapshot(self) -> list[bytes]:
        return [
            encode(OwnershipChanged(object_id, obj.owner, 0))
            for object_id, obj in self.objects.items()
        ]

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
            out.extend((to_client, p) for p in self._object_snapshot())
        elif member.control_identity != identity:
            had_identity = member.control_identity is not None
            member.control_identity = identity
            stealth_changed = True  # journals the new identity below
            out.append((to_client, self.mapping_payload()))
            out.extend((to_client, p) for p in self.full_nv_payloads())
            if not had_identity:
                out.extend((to_client, p) for p in self._object_snapshot())
            self.mapping_dirty = True
        if stealth_changed and not created:
            self._journal_member(member)
            self.mapping_dirty = True
            self.pose_dirty = True
        if stealth:
            self.pose_dirty = True
        return out

    def _control_sender(self, identity: bytes, device_id: str, now: float) -> Member | None:
        member, created = self._touch_member(device_id, now, control_identity=identity, stealth=False)
        if member is None:
            return None
        if not created and member.control_identity != identity:
            member.control_identity = identity
            self._journal_member(member)
            self.mapping_dirty = True
        return member

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
        return [(recipients, payload)] if recipients else []

    def _count_nv_write(self, now: float) -> None:
        if now - self._nv_window_start >= self.settings.nv_monitor_window_size:
            self._nv_window_start = now
            self._nv_window_count = 0
            self._nv_warned = False
        self._nv_window_count += 1
        if self._nv_window_count > self.settings.nv_monitor_threshold and not self._nv_warned:
            self._nv_warned = True
            log.warning(
                "room %r: %d NV writes within %.1fs (threshold %d)",
                self.room_id,
                self._nv_window_count,
                self.settings.nv_monitor_window_size,
                self.settings.nv_monitor_threshold,
            )

    def _clean_name_value(self, name: str, value: str) -> tuple[str, str] | None:
        name = truncate_text(name, self.settings.max_var_name_length)
        value = truncate_text(value, self.settings.max_var_value_length)
        if not name:
            return None
        if not name_fits_wire(name):
            self.counters.nv_writes_refused += 1
            log.warning("room %r: variable name over 255 UTF-8 bytes refused", self.room_id)
            return None
        return name, value

    def on_global_var_set(
        self, identity: bytes, device_id: str, name: str, value: str, now: float
    ) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is None:
            return []
        cleaned = self._clean_name_value(name, value)
        if cleaned is None:
            return []
        name, value = cleaned
        if (
            name not in self.globals
            and name not in self.pending_globals
            and len(self.globals.keys() | self.pending_globals.keys()) >= self.settings.max_global_vars
        ):
            self.counters.nv_writes_refused += 1
            log.warning("room %r: global variable limit reached, %r refused", self.room_id, name)
            return []
        self._count_nv_write(now)
        if self.pending_since is None:
            self.pending_since = now
        self.pending_globals[name] = (value, sender.client_no)
        return []

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
        if sender is None:
            return []
        cleaned = self._clean_name_value(name, value)
        if cleaned is None:
            return []
        name, value = cleaned
        target_device = self.numbers.get(target_client_no)
        if target_device is None:
            self.counters.nv_writes_refused += 1
            log.warning("room %r: client variable for unmapped client %d", self.room_id, target_client_no)
            return []
        stored = self.client_vars.get(target_device, {})
        if name not in stored and (target_client_no, name) not in self.pending_client:
            pending_names = {n for (no, n) in self.pending_client if no == target_client_no}
            if len(stored.keys() | pending_names) >= self.settings.max_client_vars:
                self.counters.nv_writes_refused += 1
                log.warning("room %r: client variable limit reached for %d", self.room_id, target_client_no)
                return []
        self._count_nv_write(now)
        if self.pending_since is None:
            self.pending_since = now
        self.pending_client[(target_client_no, name)] = (value, sender.client_no)
        return []

    def on_client_var_clear(self, identity: bytes, device_id: str, now: float) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is None:
            return []
        self._delete_client_vars(device_id, sender.client_no, None)
        payload = encode(ClientVarSync((ClientVars(sender.client_no, ()),)))
        recipients = self._control_identities()
        return [(recipients, payload)] if recipients else []

    def _delete_client_vars(self, device_id: str, client_no: int | None, name: str | None) -> int:
        stored = self.client_vars.get(device_id)
        removed = 0
        if stored:
            if name is None:
                removed = len(stored)
                del self.client_vars[device_id]
            elif name in stored:
                del stored[name]
                removed = 1
        if client_no is not None:
            for key in [k for k in self.pending_client if k[0] == client_no and (name is None or k[1] == name)]:
                del self.pending_client[key]
        if removed:
            self.changes.append(("client_var_del", self.room_id, device_id, name))
        return removed

    def on_ownership_request(
        self, identity: bytes, device_id: str, operation: int, object_id: int, now: float
    ) -> list[Unicast]:
        sender = self._control_sender(identity, device_id, now)
        if sender is None or object_id == 0:
            return []
        obj = self.objects.get(object_id)
        if obj is None:
            if self._object_limit_reached():
                return []
            obj = self.objects[object_id] = RoomObject()
            self.changes.append(("object", self.room_id, object_id, 0))
        if operation == OWNERSHIP_OP_REQUEST:
            return self._set_owner(object_id, obj, sender.client_no)
        if operation == OWNERSHIP_OP_RELEASE:
            if obj.owner == sender.client_no:
                return self._set_owner(object_id, obj, 0)
            payload = encode(OwnershipRejected(object_id, obj.owner, OWNERSHIP_REJECT_NOT_OWNER))
            return [((identity,), payload)]
        return []

    def _object_limit_reached(self) -> bool:
        if len(self.objects) < self.settings.max_objects_per_room:
            return False
        self.counters.objects_refused += 1
        log.warning("room %r: object limit (%d) reached", self.room_id, self.settings.max_objects_per_room)
        return True

    def _set_owner(self, object_id: int, obj: RoomObject, new_owner: int) -> list[Unicast]:
        previous = obj.owner
        obj.owner = new_owner
        self.changes.append(("object", self.room_id, object_id, new_owner))
        if obj.pose_bytes is not None:
            self.objects_dirty = True
        recipients = self._control_identities()
        payload = encode(OwnershipChanged(object_id, new_owner, previous))
        return [(recipients, payload)] if recipients else []

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
        return []

    def on_object_pose(
        self, device_id: str, object_id: int, pose_seq: int, pose_bytes: bytes, now: float
    ) -> list[Unicast]:
        member = self.members.get(device_id)
        if member is None or object_id == 0:
            # Object poses need membership (not W5): a stranger gets no number.
            self.counters.object_poses_refused += 1
            return []
        out: list[Unicast] = []
        obj = self.objects.get(object_id)
        if obj is None:
            if self._object_limit_reached():
                return []
            obj = self.objects[object_id] = RoomObject()
            out = self._set_owner(object_id, obj, member.client_no)
        elif obj.owner != member.client_no:
            return []
        obj.pose_bytes = pose_bytes
        obj.pose_seq = pose_seq
        obj.pose_time = now
        self.objects_dirty = True
        return out

    # --------------------------------------------------------------- timers

    def flush_nv(self, now: float) -> list[Unicast]:
        """Apply buffered writes and return the delta syncs (BEHAVIOR §10.2)."""
        self.last_nv_flush = now
        # How long the oldest buffered write waited: the NV set -> sync latency.
        self.last_flush_wait = None if self.pending_since is None else now - self.pending_since
        self.pending_since = None
        out: list[Unicast] = []
        changed_globals: list[VarEntry] = []
        for name, (value, writer) in self.pending_globals.items():
            if self._apply_global(name, value, writer):
                changed_globals.append(VarEntry(name, value, writer))
        self.pending_globals.clear()
        changed_clients: dict[int, None] = {}
        for (target_no, name), (value, writer) in self.pending_client.items():
            device_id = self.numbers.get(target_no)
            if device_id is not None and self._apply_client_var(device_id, name, value, writer):
                changed_clients[target_no] = None
        self.pending_client.clear()
        recipients = self._control_identities()
        if not recipients:
            return out
        if changed_globals:
            out.append((recipients, encode(GlobalVarSync(tuple(changed_globals)))))
        if changed_clients:
            out.append((recipients, self._client_sync_payload(changed_clients)))
        return out

    def _client_sync_payload(self, client_nos: Any) -> bytes:
        clients = tuple(
            ClientVars(no, self._var_entries(self.client_vars.get(self.numbers[no], {})))
            for no in client_nos
        )
        return encode(ClientVarSync(clients))

    def _apply_global(self, name: str, value: str, writer: int) -> bool:
        current = self.globals.get(name)
        if current is not None and current.value == value:
            return False
        self.write_seq += 1
        self.globals[name] = Var(value, writer, self.write_seq)
        self.counters.nv_writes_applied += 1
        self.changes.append(("global", self.room_id, name, value, writer, self.write_seq))
        return True

    def _apply_client_var(self, device_id: str, name: str, value: str, writer: int) -> bool:
        stored = self.client_vars.setdefault(device_id, {})
        current = stored.get(name)
        if current is not None and current.value == value:
            return False
        self.write_seq += 1
        stored[name] = Var(value, writer, self.write_seq)
        self.counters.nv_writes_applied += 1
        self.changes.append(("client_var", self.room_id, device_id, name, value, writer, self.write_seq))
        return True

    def nv_flush_due(self, now: float) -> bool:
        return bool(self.pending_globals or self.pending_client) and (
            now - self.last_nv_flush >= self.settings.nv_flush_interval
        )

    def next_nv_flush_at(self) -> float | None:
        if not (self.pending_globals or self.pending_client):
            return None
        return self.last_nv_flush + self.settings.nv_flush_interval

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
        recipients = self._control_identities()
        return [(recipients, self.mapping_payload())] if recipients else []

    def sweep(self, now: float, *, expire_devices: bool = True) -> list[Unicast]:
        """Timeouts, device expiry and ownership releases (BEHAVIOR §6, §2)."""
        out: list[Unicast] = []
        timeout = self.settings.client_timeout
        for member in [m for m in self.members.values() if now - m.last_update > timeout]:
            out.extend(self.remove_member(member.device_id))
        if expire_devices:
            expiry = self.settings.device_id_expiry_time
            for device_id in [
                d for d, dev in self.devices.items() if d not in self.members and now - dev.last_seen > expiry
            ]:
                self._expire_device(device_id)
        if not self.members and self.empty_since is None:
            self.empty_since = now
        return out

    def remove_member(self, device_id: str) -> list[Unicast]:
        member = self.members.pop(device_id)
        self.changes.append(("member_remove", self.room_id, device_id))
        # The pose body leaves with the member (never tied to a bare number).
        self.pose_dirty = True
        self.mapping_dirty = True
        out: list[Unicast] = []
        for object_id, obj in self.objects.items():
            if obj.owner == member.client_no:
                out.extend(self._set_owner(object_id, obj, 0))
        return out

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
        device = self.devices.pop(device_id)
        self.numbers.pop(device.client_no, None)
        self.client_vars.pop(device_id, None)
        for key in [k for k in self.pending_client if k[0] == device.client_no]:
            del self.pending_client[key]
        self.changes.append(("device_expire", self.room_id, device_id))

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
        return self.pose_dirty and since >= 1.0 / self.settings.transform_broadcast_rate - 1e-9

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
        if not self.objects:
            return False
        since = now - self.last_objects_broadcast
        if self.objects_dirty and since >= 1.0 / self.settings.transform_broadcast_rate - 1e-9:
            return True
        return since >= self.settings.object_idle_broadcast_interval

    def build_room_objects(self, now: float) -> bytes | None:
        self.objects_dirty = False
        self.last_objects_broadcast = now
        posed = [
            (object_id, obj.owner, obj.pose_seq, obj.pose_time, obj.pose_bytes)
            for object_id, obj in self.objects.items()
            if obj.pose_bytes is not None
        ]
        if not posed:
            return None
        return assemble_room_objects(now, posed)

    # ----------------------------------------------------------------- REST

    def rest_client_number(self, device_id: str) -> int | None:
        device = self.devices.get(device_id)
        return device.client_no if device else None

    def _check_rest_variables(self, variables: dict[str, str]) -> None:
        for name, value in variables.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise RestValidationError("names and values must be strings")
            if not name or len(name) > self.settings.max_var_name_length or not name_fits_wire(name):
                raise RestValidationError(
                    f"variable name must be 1-{self.settings.max_var_name_length} characters"
                    f" and at most {MAX_STR8_BYTES} UTF-8 bytes: {name[:80]!r}"
                )
            if len(value) > self.settings.max_var_value_length:
                raise RestValidationError(
                    f"value of {name!r} exceeds {self.settings.max_var_value_length} characters"
                )

    def rest_set_client_vars(self, device_id: str, variables: dict[str, str], now: float) -> tuple[dict, list[Unicast]]:
        self._check_rest_variables(variables)
        stored = self.client_vars.get(device_id, {})
        client_no = self.rest_client_number(device_id)
        pending = {n for (no, n) in self.pending_client if no == client_no} if client_no is not None else set()
        existing = set(stored) | pending
        if len(existing | set(variables)) > self.settings.max_client_vars:
            raise NvLimitError(
                f"Too many client variables (> {self.settings.max_client_vars}) for device {device_id}"
            )
        changed = False
        for name, value in variables.items():
            if client_no is not None:
                self.pending_client.pop((client_no, name), None)
            changed |= self._apply_client_var(device_id, name, value, 0)
        state = "applied" if client_no is not None else "queued"
        result = {name: {"state": state} for name in variables}
        out: list[Unicast] = []
        if client_no is not None and changed:
            recipients = self._control_identities()
            if recipients:
                out.append((recipients, self._client_sync_payload([client_no])))
        return {"clientNo": client_no, "result": result}, out

    def rest_get_client_vars(self, device_id: str) -> dict:
        stored = self.client_vars.get(device_id, {})
        return {
            "clientNo": self.rest_client_number(device_id),
            "variables": {name: var.value for name, var in stored.items()},
        }

    def rest_delete_client_vars(self, device_id: str, name: str | None) -> tuple[dict, list[Unicast]]:
        client_no = self.rest_client_number(device_id)
        removed = self._delete_client_vars(device_id, client_no, name)
        out: list[Unicast] = []
        if client_no is not None and removed:
            recipients = self._control_identities()
            if recipients:
                out.append((recipients, self._client_sync_payload([client_no])))
        return {"clientNo": client_no, "deletedCount": removed}, out

    def rest_set_globals(self, variables: dict[str, str]) -> tuple[dict, list[Unicast]]:
        self._check_rest_variables(variables)
        existing = set(self.globals) | set(self.pending_globals)
        if len(existing | set(variables)) > self.settings.max_global_vars:
            raise NvLimitError(f"Too many global variables (> {self.settings.max_global_vars}) for room")
        changed: list[VarEntry] = []
        for name, value in variables.items():
            # Arrival order decides: this write supersedes buffered live writes.
            self.pending_globals.pop(name, None)
            if self._apply_global(name, value, 0):
                changed.append(VarEntry(name, value, 0))
        out: list[Unicast] = []
        recipients = self._control_identities()
        if changed and recipients:
            out.append((recipients, encode(GlobalVarSync(tuple(changed)))))
        return {"result": {name: {"state": "applied"} for name in variables}}, out

    def rest_get_globals(self) -> dict:
        return {"variables": {name: var.value for name, var in self.globals.items()}}

    # ------------------------------------------------------------- status

    def stats(self) -> dict[str, int]:
        stealth = sum(1 for m in self.members.values() if m.stealth)
        return {
            "members": len(self.members),
            "visible": len(self.members) - stealth,
            "stealth": stealth,
            "devices": len(self.devices),
            "objects": len(self.objects),
        }
