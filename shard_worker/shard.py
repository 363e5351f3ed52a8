"""All rooms of one shard: decoding, dispatch, timers. Pure, no sockets.

The worker feeds it ``(lane, identity, room, payload)`` tuples and the clock,
and gets back control unicasts ``(room, identities, payload)`` and broadcast
frames ``(topic, payload, fanout)``. Bad input is dropped here with a reason
counter and a rate-limited log line; it never raises into the worker loop.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from relay.admin import Outcome, ok, refused
from relay.frames import DELIVERED_LANE, TAG_SIZE, encode_routes
from relay.histogram import LatencyHistogram
from relay.logs import RateLimitedLog
from relay.protocol import ProtocolError, check_room_frame, decode_client_payload
from relay.protocol.fastpath import check_pose_body, split_client_pose, split_object_pose
from relay.protocol.messages import (
    FLAG_STEALTH,
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
from relay.tick_grid import seconds_to_tick
from shard_worker.room import (
    Member,
    NvLimitError,
    RestValidationError,
    Room,
    RoomCounters,
    RoomSettings,
)
from shard_worker.room import limited_log as room_log
from shard_worker.room_view import list_rooms, room_detail
from shard_worker.store.base import LeaseBusy, RoomStore, StoreUnavailable

log = logging.getLogger(__name__)

UnicastOut = tuple[bytes, tuple[bytes, ...], bytes]
BroadcastOut = tuple[bytes, bytes, int]

_CLIENT_POSE = int(MsgType.CLIENT_POSE)
_OBJECT_POSE = int(MsgType.OBJECT_POSE)
_TRANSFORM = int(Lane.TRANSFORM)
# Connections remembered for the repeat-pose path; past this the memory is
# dropped and refills from live traffic.
MAX_POSE_SENDERS = 200_000


# Messages for a room whose lease another shard still holds wait here
# (bounded per room and per shard, overflow counted) until the lease is
# released or expires; then they are handled in arrival order.
HELD_PER_ROOM = 2_000
HELD_TOTAL = 20_000
# The previous owner releases a room within milliseconds of reading its
# routing marker; the wait for it is the room's hand-over pause.
HELD_RETRY_INTERVAL = 0.01


# Rooms evicted from memory whose expiry falls due are deleted at most this
# many per cleanup (each may cost a lease round trip in cluster mode).
EVICTED_EXPIRY_BATCH = 256
# Control-rate buckets kept at most (one per control connection that sent
# recently); past it they all start afresh.
CONTROL_BUCKETS_MAX = 100_000


@dataclass(slots=True)
class EvictedRoom:
    """What a shard keeps of a room it dropped from memory: the clocks its
    durable state does not hold (BEHAVIOR §1 room expiry, §2 device expiry,
    queued client variables' expiry), so a stay out of memory never extends
    a lifetime."""

    empty_since: float
    last_seen: dict[str, float]
    queued_since: dict[str, float]


@dataclass
class HeldRoom:
    since: float
    retry_at: float
    messages: deque[tuple[int, bytes, bytes, bytes]] = field(default_factory=deque)


class ShardState:
    def __init__(
        self,
        settings: RoomSettings,
        *,
        store: RoomStore | None = None,
        cleanup_interval: float = 1.0,
        device_sweep_interval: float = 60.0,
        ctrl_backlog_watermark: int = 5000,
        transform_min_rate_hz: float = 1.0,
        max_virtuals: int = 50,
        max_rooms: int = 10_000,
        room_idle_evict: float = 60.0,
        max_evicted_rooms: int = 100_000,
        max_control_rate: float = 0.0,
        now: float | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        self.settings = settings
        self.store = store
        self.rooms: dict[str, Room] = {}
        self.changes: list[tuple] = []
        # Drops by reason (exported as relay_drops_total) and their log lines,
        # one per reason per interval; other per-event lines share the limiter.
        self.drops = RateLimitedLog(log)
        self.events = RateLimitedLog(log)
        self.messages_in: Counter[str] = Counter()
        # Of messages_in["rpc"], those the ingress had already fanned out.
        self.rpcs_delivered_by_ingress = 0
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
        self.handover_wait = LatencyHistogram()
        self.room_counters = RoomCounters()
        # Room frame -> validated room id: poses arrive at 10-60 Hz per client
        # and need not decode the same UTF-8 bytes every time.
        self._room_names: dict[bytes, str] = {}
        # Transform identity -> (room frame, device header bytes, room, member)
        # of its last accepted pose. A connection's next pose with the same
        # header skips the room and member lookups and the device id decode
        # (_repeat_pose); swept of gone rooms and members by every cleanup.
        self._pose_senders: dict[bytes, tuple[bytes, bytes, Room, Member]] = {}
        # Cluster mode: whether this shard owns a room in the current view,
        # and which node holds a control connection (for the console).
        self.owns: Callable[[str], bool] | None = None
        self.node_of: Callable[[bytes | None], str | None] | None = None
        self.held: dict[str, HeldRoom] = {}
        self.held_total = 0
        # A held room gives up after this long (the old owner's lease must
        # have expired by then, or that owner is alive and still serving).
        self.hold_timeout = 10.0
        self.handovers = Counter()
        # Running totals for stats(): only rooms touched since the last call
        # are recounted, so a status write costs what changed, not O(rooms).
        # Every path that can change a room's members, devices or objects
        # reaches it through _room() or _cleanup(), which mark it here.
        self._stats_dirty: set[str] = set()
        # Rooms whose RPC route table may have changed (Room.rpc_routes): the
        # worker republishes them to its ingress, a room gone as an empty table.
        self.routes_dirty: set[str] = set()
        self._room_stats: dict[str, tuple[int, int, int, int]] = {}
        self._totals = [0, 0, 0, 0]  # members, stealth, devices, objects
        # Bounded state (W13): empty rooms leave memory (see _evict_room).
        # Evicted rooms' clocks, oldest eviction first, and a heap of
        # (empty since, room id) for their expiry; stale heap entries are
        # skipped. Empty rooms that may go at the cap, least recently used
        # first (rebuilt by every cleanup). Rooms whose lease to give back
        # once this turn's journal is written.
        self.room_idle_evict = room_idle_evict
        self.max_evicted = max_evicted_rooms
        self.evicted: dict[str, EvictedRoom] = {}
        self._evicted_expiry: list[tuple[float, str]] = []
        self._evict_candidates: deque[tuple[str, float]] = deque()
        self._to_release: list[str] = []
        self.bounds: Counter[str] = Counter()
        # Admission: control messages per connection per second (0 = off),
        # one token bucket [tokens, last refill] per control identity.
        self.max_control_rate = max_control_rate
        self._control_buckets: dict[bytes, list[float]] = {}

    # --------------------------------------------------------------- rooms

    def _room(self, room_id: str, now: float, *, create: bool = True) -> Room | None:
        room = self.rooms.get(room_id)
        if room is not None:
            room.last_touch = now
            self._stats_dirty.add(room_id)
            return room
        if self.store is None and not create:
            return None
        if self.owns is not None and not self.owns(room_id):
            # Sent by an ingress whose view is a moment behind ours: loading
            # it here would take the lease from its rightful owner.
            raise ProtocolError("not_owner", f"room {room_id!r} belongs to another shard in this view")
        if len(self.rooms) >= self.max_rooms and not self._evict_for_space(now):
            raise ProtocolError("room_limit", f"shard holds {len(self.rooms)} rooms with members or pending work")
        snapshot = None
        if self.store is not None:
            # Lease first, then load: the state read is the state no other
            # shard can change any more (LeaseBusy propagates to the caller).
            self.store.acquire(room_id)
            snapshot = self.store.load_room(room_id)
            if snapshot is None and not create:
                self.store.release([room_id])
                return None
        room = Room(room_id, self.settings, now)
        room.changes = self.changes
        room.counters = self.room_counters
        room.routes_dirty = self.routes_dirty
        evicted = self.evicted.pop(room_id, None)
        if snapshot is not None:
            room.restore(snapshot, now)
            if evicted is not None:
                room.restore_times(evicted.empty_since, evicted.last_seen, evicted.queued_since, now)
                self.bounds["rooms_reloaded"] += 1
            if room.mapping_dirty:
                self._timer_rooms.add(room_id)
        self.rooms[room_id] = room
        self._stats_dirty.add(room_id)
        return room

    # ----------------------------------------------------- bounded state (W13)

    def _store_usable(self) -> bool:
        """A store that can take the room back now and hand it out again later."""
        return self.store is not None and not self.store.health().degraded

    def _evict_room(self, room_id: str, room: Room, now: float, reason: str) -> None:
        """Drop an idle room from memory (``Room.idle``: no members, nothing pending).

        With a store, its durable state stays there and reloads lazily on the
        next touch (``_room``); the shard keeps only the clocks the store does
        not hold (``EvictedRoom``), so the room still expires after
        ``empty_room_expiry_time`` empty and its devices after
        ``device_id_expiry_time`` unseen. Its lease is given back after this
        turn's journal (``take_released``). Without a store there is nothing
        to reload from: the room is deleted as if it had expired (only ever
        at the cap, the alternative being a shard refusing every new room).
        """
        del self.rooms[room_id]
        self._stats_dirty.add(room_id)
        self.routes_dirty.add(room_id)
        self._timer_rooms.discard(room_id)
        if self.store is None:
            self.changes.append(("room_delete", room_id))
            self.bounds["rooms_dropped_at_cap"] += 1
            self.events.warning(
                "room_dropped_at_cap", "room %r dropped with its state: shard at max_rooms_per_shard "
                "(%d) and no store to evict it to", room_id, self.max_rooms,
            )
            return
        last_seen, queued_since = room.eviction_times()
        empty_since = room.empty_since if room.empty_since is not None else now
        self._index_evicted(room_id, EvictedRoom(empty_since, last_seen, queued_since))
        self._to_release.append(room_id)
        self.bounds[f"rooms_evicted_{reason}"] += 1
        self.events.info("room_evicted", "room %r evicted from memory (%s); it reloads when used", room_id, reason)

    def _index_evicted(self, room_id: str, entry: EvictedRoom) -> None:
        evicted = self.evicted
        evicted.pop(room_id, None)  # re-evicted: goes to the end
        while len(evicted) >= self.max_evicted:
            oldest = next(iter(evicted))
            del evicted[oldest]
            self.bounds["evicted_index_overflow"] += 1
            self.events.warning(
                "evicted_index_overflow", "%d evicted rooms tracked (max_evicted_rooms_per_shard): "
                "room %r no longer counts down to expiry; its state stays stored until it is used again",
                self.max_evicted, oldest,
            )
        evicted[room_id] = entry
        heap = self._evicted_expiry
        heapq.heappush(heap, (entry.empty_since, room_id))
        if len(heap) > 2 * len(evicted) + 1024:
            heap[:] = [(e.empty_since, r) for r, e in evicted.items()]
            heapq.heapify(heap)

    def _evict_for_space(self, now: float) -> bool:
        """At the room cap: evict the least recently used idle room, if any."""
        candidates = self._evict_candidates
        if not candidates or (self.store is not None and not self._store_usable()):
            return False  # nothing idle, or it could not be reloaded until the store is back
        while candidates:
            room_id, touched = candidates.popleft()
            room = self.rooms.get(room_id)
            if room is None or room.last_touch != touched or not room.idle():
                continue  # gone, used since, or busy again
            self._evict_room(room_id, room, now, "at_cap")
            return True
        return False

    def _expire_evicted(self, now: float) -> None:
        """Delete the durable state of evicted rooms empty for longer than the
        expiry, as ``_cleanup`` does for the rooms in memory."""
        heap, evicted = self._evicted_expiry, self.evicted
        expiry = self.settings.empty_room_expiry_time
        budget = EVICTED_EXPIRY_BATCH
        while heap and budget and now - heap[0][0] > expiry:
            empty_since, room_id = heap[0]
            entry = evicted.get(room_id)
            if entry is None or entry.empty_since != empty_since or room_id in self.rooms:
                heapq.heappop(heap)  # reloaded, re-evicted or forgotten since
                continue
            if self.owns is not None and not self.owns(room_id):
                # Another shard owns it in this view: its business now (a
                # limitation: that shard does not know how long it was empty).
                heapq.heappop(heap)
                del evicted[room_id]
                continue
            if self.store is not None:
                try:
                    self.store.acquire(room_id)
                except LeaseBusy:
                    heapq.heappop(heap)
                    del evicted[room_id]  # served elsewhere: not empty for us to judge
                    continue
                except StoreUnavailable:
                    return  # next cleanup
            heapq.heappop(heap)
            del evicted[room_id]
            budget -= 1
            self.changes.append(("room_delete", room_id))
            self._to_release.append(room_id)
            self.rooms_expired += 1
            self.bounds["evicted_rooms_expired"] += 1
            self.events.info("room_expired", "room %r expired after being empty (out of memory)", room_id)

    def take_released(self) -> list[str]:
        """Rooms evicted or deleted this turn whose lease the worker gives back
        once the turn's journal is written (none reloaded since)."""
        if not self._to_release:
            return []
        rooms = [r for r in dict.fromkeys(self._to_release) if r not in self.rooms]
        self._to_release.clear()
        return rooms

    def release_later(self, room_ids: list[str]) -> None:
        """The store could not take the leases back this turn; try again next turn."""
        self._to_release.extend(room_ids)

    # ---------------------------------------------------- admission control

    def _control_allowed(self, identity: bytes, now: float) -> bool:
        """Token bucket per control connection: ``max_control_rate`` per second,
        a burst of one second's worth (at least one message)."""
        rate = self.max_control_rate
        capacity = max(rate, 1.0)
        buckets = self._control_buckets
        bucket = buckets.get(identity)
        if bucket is None:
            if len(buckets) >= CONTROL_BUCKETS_MAX:
                buckets.clear()
            buckets[identity] = [capacity - 1.0, now]
            return True
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0 - 1e-9:  # 0.2 s x 5/s is one token, whatever the floats say
            bucket[0] = max(0.0, tokens - 1.0)
            return True
        bucket[0] = tokens
        return False

    def _sweep_control_buckets(self, now: float) -> None:
        """Forget buckets that have refilled: they hold nothing a new one would not."""
        rate = self.max_control_rate
        capacity = max(rate, 1.0)
        full = [i for i, (tokens, at) in self._control_buckets.items() if tokens + (now - at) * rate >= capacity]
        for identity in full:
            del self._control_buckets[identity]

    # --------------------------------------------------------------- input

    def handle(
        self, lane: int, identity: bytes, room_frame: bytes, payload: bytes, now: float
    ) -> list[UnicastOut]:
        if lane == _TRANSFORM:
            sender = self._pose_senders.get(identity)
            if sender is not None and self._repeat_pose(sender, identity, room_frame, payload, now):
                return []
        try:
            room_id = self._room_names.get(room_frame)
            if room_id is None:
                room_id = check_room_frame(room_frame)
                if len(self._room_names) >= 2 * self.max_rooms:
                    self._room_names.clear()  # bounded; refills from live traffic
                self._room_names[room_frame] = room_id
            if self.held and room_id in self.held:
                # Behind the messages already waiting: per-client order holds.
                self._hold(LeaseBusy(room_id, "the previous owner", 0.0),
                           lane, identity, room_frame, payload, now)
                return []
            if lane == Lane.TRANSFORM:
                return self._handle_transform(identity, room_frame, room_id, payload, now)
            if lane == Lane.CONTROL:
                return self._handle_control(identity, room_id, payload, now)
            if lane == DELIVERED_LANE:
                return self._handle_delivered(identity, room_id, payload, now)
            raise ProtocolError("bad_lane", f"unknown lane {lane}")
        except ProtocolError as exc:
            self.drops.drop(exc.reason, f"{str(exc)} (room {room_frame[:64]!r})")
            return []
        except LeaseBusy as exc:
            self._hold(exc, lane, identity, room_frame, payload, now)
            return []
        except StoreUnavailable as exc:
            self.drops.drop("store_unavailable", f"room {room_frame[:64]!r} not loaded: {exc}")
            return []
        except Exception:  # a bug must cost one message, not the shard
            self.drops.exception("handler_error", "handler error for room %r", room_frame[:64])
            return []

    def _repeat_pose(
        self, sender: tuple[bytes, bytes, Room, Member], identity: bytes, room_frame: bytes,
        payload: bytes, now: float,
    ) -> bool:
        """Apply a pose from a connection whose last pose named the same room
        and device (same bytes), if nothing but the pose changes; else False
        and the full path (``_handle_transform``) runs, with its drop reasons."""
        frame, head, room, member = sender
        if room_frame != frame or not payload.startswith(head):
            return False
        room_id = room.room_id
        if self.rooms.get(room_id) is not room or (self.held and room_id in self.held):
            return False
        start = len(head)
        try:
            flags = check_pose_body(payload, start, self.max_virtuals)
        except ProtocolError:
            return False
        if not room.repeat_pose(member, identity, bool(flags & FLAG_STEALTH), payload[start:], now):
            return False
        room.last_touch = now
        self._stats_dirty.add(room_id)
        self.messages_in["client_pose"] += 1
        return True

    def _remember_pose_sender(
        self, identity: bytes, room_frame: bytes, room: Room, device_id: str, header: bytes
    ) -> None:
        member = room.members.get(device_id)
        if member is None or member.transform_identity != identity:
            return
        senders = self._pose_senders
        if identity not in senders and len(senders) >= MAX_POSE_SENDERS:
            senders.clear()  # bounded; refills from live traffic
        senders[identity] = (room_frame, header, room, member)

    def _sweep_pose_senders(self) -> None:
        rooms = self.rooms
        self._pose_senders = {
            identity: sender for identity, sender in self._pose_senders.items()
            if rooms.get(sender[2].room_id) is sender[2]
            and sender[2].members.get(sender[3].device_id) is sender[3]
        }

    def _handle_transform(
        self, identity: bytes, room_frame: bytes, room_id: str, payload: bytes, now: float
    ) -> list[UnicastOut]:
        msg_type = payload[0] if payload else -1
        if msg_type == _CLIENT_POSE:
            device_id, flags, body = split_client_pose(payload, self.max_virtuals)
            if not device_id:
                raise ProtocolError("empty_device_id", "client pose without device id")
            self.messages_in["client_pose"] += 1
            room = self._room(room_id, now)
            out = room.on_client_pose(identity, device_id, flags, body, now)
            self._remember_pose_sender(identity, room_frame, room, device_id, payload[: len(payload) - len(body)])
            if room.mapping_dirty:
                # A new member or a changed connection: the mapping timer.
                self._timer_rooms.add(room_id)
            # Only a new member's queued client variables (announced to the room).
            return self._tag(room, out) if out else []
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
        if self.max_control_rate and not self._control_allowed(identity, now):
            raise ProtocolError("control_rate_limited", f"connection over {self.max_control_rate:g} control messages/s")
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

    def _handle_delivered(
        self, identity: bytes, room_id: str, payload: bytes, now: float
    ) -> list[UnicastOut]:
        """An RPC the ingress fanned out itself (relay/frames.py DELIVERED_LANE)."""
        msg = decode_client_payload(Lane.CONTROL, payload)
        if not isinstance(msg, Rpc):
            raise ProtocolError("wrong_lane", f"{type(msg).__name__} delivered by the ingress")
        self.messages_in["rpc"] += 1
        self.rpcs_delivered_by_ingress += 1
        room = self._room(room_id, now)
        out = room.on_rpc_delivered(identity, msg.device_id, now)
        self._timer_rooms.add(room_id)
        return self._tag(room, out) if out else []

    def rpc_routes(self, room_id: str, tag: bytes, max_entries: int) -> bytes:
        """The room's encoded RPC route table for the ingress of the node tagged
        ``tag``, or b"" (the shard keeps the room's RPCs): the room is gone,
        a member's control connection is on another node, or it is too big."""
        room = self.rooms.get(room_id)
        if room is None:
            return b""
        entries = room.rpc_routes()
        if len(entries) > max_entries or any(e[2][:TAG_SIZE] != tag for e in entries):
            return b""
        return encode_routes(entries)

    @staticmethod
    def _tag(room: Room, unicasts: list) -> list[UnicastOut]:
        rb = room.room_id_bytes
        return [(rb, identities, payload) for identities, payload in unicasts]

    # ------------------------------------------------------------ hand-over

    def _hold(self, busy: LeaseBusy, lane: int, identity: bytes, room_frame: bytes,
              payload: bytes, now: float) -> None:
        held = self.held.get(busy.room_id)
        if held is None:
            retry_at = now + min(max(busy.retry_after, 0.0), HELD_RETRY_INTERVAL)
            held = self.held[busy.room_id] = HeldRoom(since=now, retry_at=retry_at)
            self.handovers["waits"] += 1
            log.info("room %r: waiting for %s to hand it over", busy.room_id, busy.holder)
        if len(held.messages) >= HELD_PER_ROOM or self.held_total >= HELD_TOTAL:
            self.drops.drop("handover_hold_full", f"room {busy.room_id!r}: held messages at their bound")
            return
        held.messages.append((lane, identity, room_frame, payload))
        self.held_total += 1

    def retry_held(self, now: float) -> list[UnicastOut]:
        """Handle the held messages of rooms whose lease can now be taken."""
        out: list[UnicastOut] = []
        for room_id, held in list(self.held.items()):
            if now < held.retry_at:
                continue
            try:
                self._room(room_id, now)
            except LeaseBusy as busy:
                if now - held.since < self.hold_timeout:
                    held.retry_at = now + HELD_RETRY_INTERVAL
                    continue
                self.drops.counts["handover_timeout"] += len(held.messages)
                log.error("room %r: %s kept its lease for %.1fs; %d held messages dropped",
                          room_id, busy.holder, now - held.since, len(held.messages))
            except (StoreUnavailable, ProtocolError) as exc:
                self.drops.counts["handover_failed"] += len(held.messages)
                log.error("room %r: cannot load after hand-over: %s", room_id, exc)
            else:
                self.handovers["loaded_after_wait"] += 1
                self.handover_wait.observe(now - held.since)
            del self.held[room_id]
            self.held_total -= len(held.messages)
            if room_id not in self.rooms:
                continue
            for lane, identity, room_frame, payload in held.messages:
                out.extend(self.handle(lane, identity, room_frame, payload, now))
        return out

    def next_held_retry(self) -> float | None:
        return min((h.retry_at for h in self.held.values()), default=None)

    def release_rooms(self, room_ids: list[str], now: float) -> list[UnicastOut]:
        """Stop serving rooms another shard now owns (hand-over, leave).

        Pending NV writes are flushed first, so their syncs go out and their
        records reach the store with this turn's journal; the caller then
        journals and releases the leases. Returns the flush's unicasts.
        """
        out: list[UnicastOut] = []
        for room_id in room_ids:
            room = self.rooms.pop(room_id, None)
            if room is None:
                continue
            self._stats_dirty.add(room_id)
            self.routes_dirty.add(room_id)
            if room.pending_globals or room.pending_client:
                out.extend(self._tag(room, room.flush_nv(now)))
            self._timer_rooms.discard(room_id)
            self.handovers["released"] += 1
        return out

    def forget_rooms(self, room_ids: list[str]) -> None:
        """Drop rooms whose lease was lost to another owner: their state is theirs now."""
        for room_id in room_ids:
            if self.rooms.pop(room_id, None) is not None:
                self._stats_dirty.add(room_id)
                self.routes_dirty.add(room_id)
                self._timer_rooms.discard(room_id)
                self.handovers["deposed"] += 1
                log.error("room %r: lease lost to another owner; dropped from memory", room_id)

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

    def tick(
        self, now: float, ctrl_backlog: int = 0, *, wall: float | None = None, hold_broadcast: bool = False,
    ) -> tuple[list[UnicastOut], list[BroadcastOut]]:
        """Run every timer that is due at ``now``.

        ``wall``: the wall clock now; the next broadcast tick is then put on
        the shared grid (relay/tick_grid.py), where the ingress reads poses
        just before it. ``hold_broadcast``: poses of this period are still
        being read, so a due broadcast waits for the next call.
        """
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
        if now >= self._next_broadcast and not hold_broadcast:
            interval = self.broadcast_interval
            self._next_broadcast = now + (interval if wall is None else seconds_to_tick(wall, interval))
            broadcasts = self._broadcast_tick(now, ctrl_backlog)
        return unicasts, broadcasts

    def _cleanup(self, now: float, expire_devices: bool) -> list[UnicastOut]:
        out: list[UnicastOut] = []
        idle_evict = self.room_idle_evict if self._store_usable() else 0.0
        candidates: list[tuple[float, str]] = []
        for room_id, room in list(self.rooms.items()):
            before = (len(room.members), len(room.devices))
            out.extend(self._tag(room, room.sweep(now, expire_devices=expire_devices)))
            if (len(room.members), len(room.devices)) != before:
                self._stats_dirty.add(room_id)
            if room.mapping_dirty or room.pending_globals or room.pending_client:
                self._timer_rooms.add(room_id)
            if room.expired(now):
                del self.rooms[room_id]
                self._stats_dirty.add(room_id)
                self.routes_dirty.add(room_id)
                self._timer_rooms.discard(room_id)
                self.changes.append(("room_delete", room_id))
                self.rooms_expired += 1
                self.events.info("room_expired", "room %r expired after being empty", room_id)
            elif room.idle():
                quiet_since = max(room.last_touch, room.empty_since if room.empty_since is not None else now)
                if idle_evict and now - quiet_since >= idle_evict:
                    self._evict_room(room_id, room, now, "idle")
                else:
                    candidates.append((room.last_touch, room_id))
        candidates.sort()
        self._evict_candidates = deque((room_id, touched) for touched, room_id in candidates)
        if self.evicted:
            self._expire_evicted(now)
        if self._control_buckets:
            self._sweep_control_buckets(now)
        if self._pose_senders:
            self._sweep_pose_senders()
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

    @property
    def next_broadcast_at(self) -> float:
        """When the next broadcast tick is due (monotonic)."""
        return self._next_broadcast

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

    def flush_logs(self) -> None:
        """Report the suppressed counts of every rate-limited log line of this shard."""
        for limiter in (self.drops, self.events, room_log):
            limiter.flush()

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
                return ok(room_detail(room, now, self.node_of)), []
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
                # Unlike the reference (BEHAVIOR §1), reading never creates a
                # room: an unknown room has no variables (W13).
                room = self._room(room_id, now, create=False)
                if room is None:
                    return ok({"variables": {}}), []
                return ok(room.rest_get_globals()), []
        except NvLimitError as exc:
            return refused(Outcome.LIMIT_EXCEEDED, str(exc)), []
        except RestValidationError as exc:
            return refused(Outcome.INVALID, str(exc)), []
        except ProtocolError as exc:
            return refused(Outcome.UNAVAILABLE, f"room refused: {exc}"), []
        except (LeaseBusy, StoreUnavailable) as exc:
            return refused(Outcome.UNAVAILABLE, f"room unavailable: {exc}"), []
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

    def _refresh_totals(self) -> list[int]:
        totals = self._totals
        cache = self._room_stats
        for room_id in self._stats_dirty:
            room = self.rooms.get(room_id)
            if room is None:
                new = (0, 0, 0, 0)
            else:
                counts = room.stats()
                new = (counts["members"], counts["stealth"], counts["devices"], counts["objects"])
            old = cache.pop(room_id, (0, 0, 0, 0))
            if room is not None:
                cache[room_id] = new
            for i in range(4):
                totals[i] += new[i] - old[i]
        self._stats_dirty.clear()
        return totals

    def stats(self) -> dict[str, Any]:
        members, stealth, devices, objects = self._refresh_totals()
        return {
            "rooms": len(self.rooms),
            "clients": members,
            "visible": members - stealth,
            "stealth": stealth,
            "devices": devices,
            "objects": objects,
            "drops": dict(self.drops.counts),
            "messages_in": dict(self.messages_in),
            "rpcs_delivered_by_ingress": self.rpcs_delivered_by_ingress,
            "skipped_ticks": self.skipped_ticks,
            "rooms_expired": self.rooms_expired,
            "evicted_rooms": len(self.evicted),
            "bounds": dict(self.bounds),
            "nv_sync_latency": self.nv_latency.to_dict(),
            "handover_wait": self.handover_wait.to_dict(),
            "handovers": dict(self.handovers),
            "held_rooms": len(self.held),
            "held_messages": self.held_total,
            "room_counters": asdict(self.room_counters),
        }
