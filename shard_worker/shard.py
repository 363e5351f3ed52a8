"""All rooms of one shard: decoding, dispatch, timers. Pure, no sockets.

The worker feeds it ``(lane, identity, room, payload)`` tuples and the clock,
and gets back control unicasts ``(room, identities, payload)`` and broadcast
frames ``(topic, payload, fanout)``. Bad input is dropped here with a reason
counter and a rate-limited log line; it never raises into the worker loop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from relay.admin import Outcome, ok, refused
from relay.histogram import LatencyHistogram
from relay.protocol import ProtocolError, check_room_frame, decode_client_payload
from relay.protocol.fastpath import split_client_pose, split_object_pose
from relay.protocol.messages import (
    OBJECT_TOPIC_SUFFIX,
    ClientHello,
    ClientVarClear,
    ClientVarSet,
    GlobalVarSet,
    Lane,
    MsgType,
    OwnershipRequest,
    Rpc,
)
from shard_worker.room import NvLimitError, RestValidationError, Room, RoomCounters, RoomSettings
from shard_worker.room_view import list_rooms, room_detail

log = logging.getLogger(__name__)

UnicastOut = tuple[bytes, tuple[bytes, ...], bytes]
BroadcastOut = tuple[bytes, bytes, int]

_CLIENT_POSE = int(MsgType.CLIENT_POSE)
_OBJECT_POSE = int(MsgType.OBJECT_POSE)


class DropLog:
    """Counts drops by reason; logs at most one line per reason per interval."""

    def __init__(self, interval: float = 5.0) -> None:
        self.counts: Counter[str] = Counter()
        self._interval = interval
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last_logged.get(reason, -1e18) >= self._interval:
            extra = self._suppressed.pop(reason, 0)
            more = f" (+{extra} more since last report)" if extra else ""
            log.warning("dropped message: %s: %s%s", reason, detail, more)
            self._last_logged[reason] = now
        else:
            self._suppressed[reason] += 1


class ShardState:
    def __init__(
        self,
        settings: RoomSettings,
        *,
        store: Any = None,
        cleanup_interval: float = 1.0,
        device_sweep_interval: float = 60.0,
        ctrl_backlog_watermark: int = 5000,
        transform_min_rate_hz: float = 1.0,
        max_virtuals: int = 50,
        max_rooms: int = 10_000,
        now: float | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        self.settings = settings
        self.store = store
        self.rooms: dict[str, Room] = {}
        self.changes: list[tuple] = []
        self.drops = DropLog()
        self.messages_in: Counter[str] = Counter()
        self.cleanup_interval = cleanup_interval
        self.device_sweep_interval = device_sweep_interval
        self.ctrl_backlog_watermark = ctrl_backlog_watermark
        self.min_pose_interval = 1.0 / transform_min_rate_hz if transform_min_rate_hz > 0 else 1e18
        self.max_virtuals = max_virtuals
        self.max_rooms = max_rooms
        self.broadcast_interval = 1.0 / settings.transform_broadcast_rate
        self._timer_rooms: set[str] = set()
        self._next_broadcast = now
        self._next_cleanup = now + cleanup_interval
        self._next_device_sweep = now + device_sweep_interval
        self._last_pose_generation = now
        self.skipped_ticks = 0
        self.rooms_expired = 0
        self.nv_latency = LatencyHistogram()
        self.room_counters = RoomCounters()
        # Room frame -> validated room id: poses arrive at 10-60 Hz per client
        # and need not decode the same UTF-8 bytes every time.
        self._room_names: dict[bytes, str] = {}

    # --------------------------------------------------------------- rooms

    def _room(self, room_id: str, now: float, *, create: bool = True) -> Room | None:
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        snapshot = self.store.load_room(room_id) if self.store is not None else None
        if snapshot is None and not create:
            return None
        if len(self.rooms) >= self.max_rooms:
            raise ProtocolError("room_limit", f"shard holds {len(self.rooms)} rooms already")
        room = Room(room_id, self.settings, now)
        room.changes = self.changes
        room.counters = self.room_counters
        if snapshot is not None:
            room.restore(snapshot, now)
            if room.mapping_dirty:
                self._timer_rooms.add(room_id)
        self.rooms[room_id] = room
        return room

    # --------------------------------------------------------------- input

    def handle(
        self, lane: int, identity: bytes, room_frame: bytes, payload: bytes, now: float
    ) -> list[UnicastOut]:
        try:
            room_id = self._room_names.get(room_frame)
            if room_id is None:
                room_id = check_room_frame(room_frame)
                if len(self._room_names) >= 2 * self.max_rooms:
                    self._room_names.clear()  # bounded; refills from live traffic
                self._room_names[room_frame] = room_id
            if lane == Lane.TRANSFORM:
                return self._handle_transform(identity, room_id, payload, now)
            if lane == Lane.CONTROL:
                return self._handle_control(identity, room_id, payload, now)
            raise ProtocolError("bad_lane", f"unknown lane {lane}")
        except ProtocolError as exc:
            self.drops.drop(exc.reason, f"{str(exc)} (room {room_frame[:64]!r})")
            return []
        except Exception:  # a bug must cost one message, not the shard
            self.drops.counts["handler_error"] += 1
            log.exception("handler error for room %r", room_frame[:64])
            return []

    def _handle_transform(
        self, identity: bytes, room_id: str, payload: bytes, now: float
    ) -> list[UnicastOut]:
        msg_type = payload[0] if payload else -1
        if msg_type == _CLIENT_POSE:
            device_id, flags, body = split_client_pose(payload, self.max_virtuals)
            if not device_id:
                raise ProtocolError("empty_device_id", "client pose without device id")
            self.messages_in["client_pose"] += 1
            room = self._room(room_id, now)
            room.on_client_pose(identity, device_id, flags, body, now)
            self._timer_rooms.add(room_id)
            return []
        if msg_type == _OBJECT_POSE:
            device_id, object_id, pose_seq, pose_bytes = split_object_pose(payload)
            if not device_id:
                raise ProtocolError("empty_device_id", "object pose without device id")
            self.messages_in["object_pose"] += 1
            # Only members may move objects, so an unknown room is never created here.
            room = self._room(room_id, now, create=False)
            if room is None:
                self.room_counters.object_poses_refused += 1
                return []
            return self._tag(room, room.on_object_pose(device_id, object_id, pose_seq, pose_bytes, now))
        decode_client_payload(Lane.TRANSFORM, payload)  # raises the precise reason
        raise ProtocolError("wrong_lane", f"type {msg_type} on the transform lane")

    def _handle_control(
        self, identity: bytes, room_id: str, payload: bytes, now: float
    ) -> list[UnicastOut]:
        msg = decode_client_payload(Lane.CONTROL, payload)
        room = self._room(room_id, now)
        if isinstance(msg, ClientHello):
            self.messages_in["hello"] += 1
            out = room.on_hello(identity, msg.device_id, msg.is_stealth, now)
        elif isinstance(msg, Rpc):
            self.messages_in["rpc"] += 1
            out = room.on_rpc(identity, msg, now)
        elif isinstance(msg, GlobalVarSet):
            self.messages_in["global_var_set"] += 1
            out = room.on_global_var_set(identity, msg.device_id, msg.variable_name, msg.variable_value, now)
        elif isinstance(msg, ClientVarSet):
            self.messages_in["client_var_set"] += 1
            out = room.on_client_var_set(
                identity, msg.device_id, msg.target_client_no, msg.variable_name, msg.variable_value, now
            )
        elif isinstance(msg, ClientVarClear):
            self.messages_in["client_var_clear"] += 1
            out = room.on_client_var_clear(identity, msg.device_id, now)
        elif isinstance(msg, OwnershipRequest):
            self.messages_in["ownership_request"] += 1
            out = room.on_ownership_request(identity, msg.device_id, msg.operation_type, msg.object_id, now)
        else:  # decode_client_payload only lets the six control types through
            raise ProtocolError("wrong_lane", f"{type(msg).__name__} on the control lane")
        self._timer_rooms.add(room_id)
        # Timer work that is already due (leading-edge NV flush, mapping
        # throttle) leaves in this same loop turn, never after a poll timeout.
        out.extend(self._room_timers(room, now))
        return self._tag(room, out)

    @staticmethod
    def _tag(room: Room, unicasts: list) -> list[UnicastOut]:
        rb = room.room_id_bytes
        return [(rb, identities, payload) for identities, payload in unicasts]

    # --------------------------------------------------------------- timers

    def _room_timers(self, room: Room, now: float) -> list:
        out: list = []
        if room.nv_flush_due(now):
            out.extend(room.flush_nv(now))
            if room.last_flush_wait is not None:
                self.nv_latency.observe(room.last_flush_wait)
        if room.mapping_due(now):
            out.extend(room.broadcast_mapping(now))
        return out

    def tick(self, now: float, ctrl_backlog: int = 0) -> tuple[list[UnicastOut], list[BroadcastOut]]:
        """Run every timer that is due at ``now``."""
        unicasts: list[UnicastOut] = []
        broadcasts: list[BroadcastOut] = []
        for room_id in list(self._timer_rooms):
            room = self.rooms.get(room_id)
            if room is None:
                self._timer_rooms.discard(room_id)
                continue
            unicasts.extend(self._tag(room, self._room_timers(room, now)))
            if room.next_nv_flush_at() is None and room.next_mapping_at() is None:
                self._timer_rooms.discard(room_id)
        if now >= self._next_cleanup:
            self._next_cleanup = now + self.cleanup_interval
            expire_devices = now >= self._next_device_sweep
            if expire_devices:
                self._next_device_sweep = now + self.device_sweep_interval
            unicasts.extend(self._cleanup(now, expire_devices))
        if now >= self._next_broadcast:
            self._next_broadcast = now + self.broadcast_interval
            broadcasts = self._broadcast_tick(now, ctrl_backlog)
        return unicasts, broadcasts

    def _cleanup(self, now: float, expire_devices: bool) -> list[UnicastOut]:
        out: list[UnicastOut] = []
        for room_id, room in list(self.rooms.items()):
            out.extend(self._tag(room, room.sweep(now, expire_devices=expire_devices)))
            if room.mapping_dirty or room.pending_globals or room.pending_client:
                self._timer_rooms.add(room_id)
            if room.expired(now):
                del self.rooms[room_id]
                self._timer_rooms.discard(room_id)
                self.changes.append(("room_delete", room_id))
                self.rooms_expired += 1
                log.info("room %r expired after being empty", room_id)
        return out

    def _broadcast_tick(self, now: float, ctrl_backlog: int) -> list[BroadcastOut]:
        # Control first: a backlog above the watermark skips pose generation,
        # but never for longer than the floor rate allows.
        if (
            ctrl_backlog > self.ctrl_backlog_watermark
            and now - self._last_pose_generation < self.min_pose_interval
        ):
            self.skipped_ticks += 1
            return []
        self._last_pose_generation = now
        out: list[BroadcastOut] = []
        for room in self.rooms.values():
            if room.room_pose_due(now):
                out.append((room.room_id_bytes, room.build_room_pose(now), max(1, len(room.members))))
        for room in self.rooms.values():
            if room.room_objects_due(now):
                payload = room.build_room_objects(now)
                if payload is not None:
                    topic = room.room_id_bytes + OBJECT_TOPIC_SUFFIX
                    out.append((topic, payload, max(1, len(room.members))))
        return out

    def next_deadline(self) -> float:
        deadline = min(self._next_broadcast, self._next_cleanup)
        for room_id in self._timer_rooms:
            room = self.rooms.get(room_id)
            if room is None:
                continue
            for at in (room.next_nv_flush_at(), room.next_mapping_at()):
                if at is not None and at < deadline:
                    deadline = at
        return deadline

    def drain_changes(self) -> list[tuple]:
        if not self.changes:
            return []
        changes = self.changes[:]
        self.changes.clear()
        return changes

    # ---------------------------------------------------------------- admin

    def admin(self, request: dict, now: float) -> tuple[dict, list[UnicastOut]]:
        """REST bridge operations on room state (ops and outcomes: ``relay/admin.py``)."""
        op = request.get("op")
        room_id = request.get("room")
        if op == "stats":
            return ok(self.stats()), []
        if op == "rooms_list":
            return self._rooms_list(request), []
        if not isinstance(room_id, str):
            return refused(Outcome.BAD_REQUEST, "room id missing"), []
        device_id = request.get("device")
        # Operator actions act on rooms that exist; unlike the reference's
        # variable calls (BEHAVIOR §1) they never name a room into existence.
        create = request.get("must_exist") is not True
        try:
            if op == "room_detail":
                room = self._room(room_id, now, create=False)
                if room is None:
                    return self._no_room(room_id), []
                return ok(room_detail(room, now)), []
            if op == "evict":
                return self._evict(room_id, device_id, now)
            if op == "client_vars_set":
                room = self._room(room_id, now, create=create)
                if room is None:
                    return self._no_room(room_id), []
                body, out = room.rest_set_client_vars(device_id, request["variables"], now)
                body = {"roomId": room_id, "deviceId": device_id, "mapping": {"clientNo": body["clientNo"]}, "result": body["result"]}
                return ok(body), self._tag(room, out)
            if op == "client_vars_get":
                room = self._room(room_id, now, create=False)
                if room is None:
                    return ok({"clientNo": None, "variables": {}}), []
                return ok(room.rest_get_client_vars(device_id)), []
            if op == "client_vars_delete":
                room = self._room(room_id, now, create=False)
                if room is None:
                    if not create:
                        return self._no_room(room_id), []
                    return ok({"clientNo": None, "deletedCount": 0}), []
                body, out = room.rest_delete_client_vars(device_id, request.get("name"))
                return ok(body), self._tag(room, out)
            if op == "globals_set":
                room = self._room(room_id, now, create=create)
                if room is None:
                    return self._no_room(room_id), []
                body, out = room.rest_set_globals(request["variables"])
                return ok({"roomId": room_id, **body}), self._tag(room, out)
            if op == "globals_get":
                # Any REST global-variable call names the room into existence (§1).
                room = self._room(room_id, now)
                return ok(room.rest_get_globals()), []
        except NvLimitError as exc:
            return refused(Outcome.LIMIT_EXCEEDED, str(exc)), []
        except RestValidationError as exc:
            return refused(Outcome.INVALID, str(exc)), []
        except ProtocolError as exc:
            return refused(Outcome.UNAVAILABLE, f"room refused: {exc}"), []
        except (KeyError, TypeError, AttributeError) as exc:
            return refused(Outcome.BAD_REQUEST, f"malformed request: {exc}"), []
        return refused(Outcome.BAD_REQUEST, f"unknown op {op!r}"), []

    @staticmethod
    def _no_room(room_id: str) -> dict:
        return refused(Outcome.NOT_FOUND, f"Room '{room_id}' not found")

    def _rooms_list(self, request: dict) -> dict:
        search, limit = request.get("search", ""), request.get("limit")
        if not isinstance(search, str):
            return refused(Outcome.BAD_REQUEST, "search must be a string")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            return refused(Outcome.BAD_REQUEST, "limit must be a non-negative integer")
        total, rooms = list_rooms(self.rooms, search, limit)
        return ok({"total": total, "rooms": rooms})

    def _evict(self, room_id: str, device_id: Any, now: float) -> tuple[dict, list[UnicastOut]]:
        if not isinstance(device_id, str):
            return refused(Outcome.BAD_REQUEST, "device id missing"), []
        room = self._room(room_id, now, create=False)
        if room is None:
            return self._no_room(room_id), []
        member = room.members.get(device_id)
        if member is None:
            return refused(Outcome.NOT_FOUND, f"Device '{device_id}' is not a member of room '{room_id}'"), []
        out = room.evict_member(device_id, now)
        self._timer_rooms.add(room_id)
        # Like a timeout found by the sweep: peers see the member vanish from
        # the next mapping broadcast (leading edge: this turn if not throttled).
        out.extend(self._room_timers(room, now))
        body = {"roomId": room_id, "deviceId": device_id, "clientNo": member.client_no}
        return ok(body), self._tag(room, out)

    def stats(self) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        for room in self.rooms.values():
            totals.update(room.stats())
        return {
            "rooms": len(self.rooms),
            "clients": totals["members"],
            "visible": totals["visible"],
            "stealth": totals["stealth"],
            "devices": totals["devices"],
            "objects": totals["objects"],
            "drops": dict(self.drops.counts),
            "messages_in": dict(self.messages_in),
            "skipped_ticks": self.skipped_ticks,
            "rooms_expired": self.rooms_expired,
            "nv_sync_latency": self.nv_latency.to_dict(),
            "room_counters": asdict(self.room_counters),
        }
