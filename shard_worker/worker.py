"""The shard worker process: thin I/O around ``ShardState``.

One thread, no locks. Each loop turn: read inbound client messages (bounded
batch), answer REST admin requests, run due timers, journal the turn's durable
changes, then send control (bounded by ``ctrl_drain_batch``) before any
transform broadcast, and broadcasts only as the token bucket allows.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import Counter
from time import monotonic_ns
from typing import Any

import orjson
import zmq

from relay.admin import Outcome, refused
from relay.cluster.placement import owner_of
from relay.cluster.view import decode_layout
from relay.cluster.view_file import ViewFile
from relay.config import RelayConfig
from relay.endpoints import INTERNAL_RECONNECT_MS, NodeEndpoints, cluster_endpoints
from relay.frames import (
    DELIVERED_LANE,
    HEADER,
    RESET_EPOCH,
    TAG_SIZE,
    BatchError,
    batch_mark,
    batch_pushed_at,
    credit_frame,
    done_frame,
    iter_batch,
    node_tag,
    parse_marker,
    parse_period,
    routes_frames,
    stamp_sent,
    tag_of,
    unicast_frames,
)
from relay.logs import setup_logging
from relay.protocol.messages import Lane
from relay.slow_turns import SlowTurns
from relay.status import StatusWriter
from relay.tick_grid import MAX_POSE_WAIT, period_of_tick
from relay.zmq_fast import recv_frame_waiting, send_parts
from shard_worker.control_queue import ControlQueue
from shard_worker.room import RoomSettings
from shard_worker.shaping import LatestOnly, TokenBucket
from shard_worker.shard import ShardState
from shard_worker.shard_links import ShardLinks
from shard_worker.store.factory import open_room_store

log = logging.getLogger("relay.shard")

_DELIVERED = bytes((DELIVERED_LANE,))

CONTROL_BATCH = 2000
# Poses handled per turn (whole ingress batches of at most 128 messages): a
# tick's poses arrive at once (relay/tick_grid.py), and control read between
# turns then waits behind one batch (well under a millisecond), not the tick's.
TRANSFORM_BATCH = 128
# Poses only matter at a broadcast tick (latest-only), so the transform pipes
# are read right before each tick, just after the ingress pushed the period's
# poses (relay/tick_grid.py), and otherwise at most every MAX_POSE_WAIT. The
# tick's broadcast waits, at most this long past due, while a read left poses
# in the pipe or the ingress's period marker for the tick (relay/frames.py)
# has not been read yet: a late ingress read then costs the broadcast a few
# milliseconds, not the period's poses. Control is polled in between.
BROADCAST_HOLD_MAX = 0.02
ADMIN_BATCH = 64
STATUS_INTERVAL = 1.0
# Credit (relay/frames.py) is echoed once this much was read since the last
# echo on a lane, or this long after the first read not yet echoed. The
# ingress's bound only needs to see progress well before it fills (its limits
# are tens of thousands of messages), while an echo per batch cost a send, an
# ingress wake-up and a receive per batch (BENCHMARKS.md, "Where the CPU goes").
CREDIT_EVERY_MESSAGES = 512
CREDIT_EVERY_BYTES = 1 << 20
CREDIT_MAX_DELAY = 0.05
# Largest room whose RPCs the ingress fans out itself (supervisor/
# rpc_fanout.py); a bigger room's table (about 50 bytes a member) would be
# resent on every join and leave, so its RPCs stay with the shard.
ROUTES_MAX_MEMBERS = 512


class ShardWorker:
    def __init__(self, config: RelayConfig, shard_index: int, run_dir: str, heartbeat: Any = None,
                 *, incarnation: int = 0) -> None:
        self.config = config
        self.index = shard_index
        # Slot ``index`` of the node's layout, served by this incarnation
        # until a layout gives the slot to another (rolling restart) or drops
        # it (scale down): then this worker hands every room over and exits.
        self.incarnation = incarnation
        self.retiring = False
        self.name = f"shard-{shard_index}"
        self.endpoints = NodeEndpoints(run_dir)
        self.heartbeat = heartbeat
        self.stopping = False
        now = time.monotonic()
        self.view_file = ViewFile(run_dir, shards=config.shards)
        self.node_id = self.view_file.node_id
        self.number = self.view_file.number
        self.tag = node_tag(self.number)
        self.links: ShardLinks | None = None
        self.store = open_room_store(
            config, shard_index, self.view_file.node_id, self.view_file.epoch, incarnation=incarnation,
            member_stamp=self._member_stamp, member_alive=self._member_alive,
        )
        # The routing this node's ingress uses: the view as of its last
        # routing marker (relay/frames.py), not the newest view.json, so this
        # worker never refuses a room the ingress still sends it.
        self.routing_view = self.view_file.view
        self._next_renew = now + config.lease_ttl / 3
        self.state = ShardState(
            RoomSettings.from_config(config),
            store=self.store,
            cleanup_interval=config.cleanup_interval,
            device_sweep_interval=config.device_sweep_interval,
            ctrl_backlog_watermark=config.ctrl_backlog_watermark,
            transform_min_rate_hz=config.transform_min_rate_hz,
            max_virtuals=config.max_virtual_transforms,
            max_rooms=config.max_rooms_per_shard,
            room_idle_evict=config.room_idle_evict_seconds,
            max_evicted_rooms=config.max_evicted_rooms_per_shard,
            max_control_rate=config.max_control_rate_per_client,
            now=now,
        )
        if self.store is not None:
            me = (self.node_id, shard_index)
            self.state.owns = lambda room_id: (
                not self.retiring and owner_of(room_id.encode("utf-8"), self.routing_view) == me
            )
        if config.store:
            self.state.node_of = lambda identity: self._member_stamp(identity)[0] if identity else None
        self.control = ControlQueue(config.ctrl_queue_max)
        self.pending = LatestOnly()
        self.bucket = TokenBucket(config.transform_budget_bytes_per_sec, now)
        self.counters = {
            "unicast_frames_sent": 0,
            "unicast_recipients": 0,
            "broadcasts_sent": 0,
            "broadcast_bytes": 0,
            "broadcast_again": 0,
            "egress_again": 0,
            "admin_requests": 0,
            "journal_records": 0,
            "rooms_handed_over": 0,
            "routing_markers": 0,
            "forwarded_in": 0,
            "cluster_broadcast_again": 0,
            # Ticks whose broadcast waited for the period's poses, and those
            # sent at the bound without them (relay/tick_grid.py).
            "broadcast_holds": 0,
            "broadcast_hold_expired": 0,
            "unicast_bytes": 0,
            # RPC route tables queued for the ingress, and refused by a full queue.
            "routes_published": 0,
            "routes_refused": 0,
        }
        # Recipients per message type id (control lane, out) and broadcasts per type id.
        self.out_by_type: Counter[int] = Counter()
        self.broadcast_by_type: Counter[int] = Counter()
        self._next_status = now
        # Per lane: (ingress epoch, messages, bytes) of the last batch read,
        # and what was last reported back (the ingress's credit, frames.py).
        self._read_marks: dict[int, tuple[int, int, int]] = {}
        self._reported_marks: dict[int, tuple[int, int, int]] = {}
        # When the reads not yet echoed must be (None: all echoed).
        self._credit_due: float | None = None
        # When the transform pipes are read next, unless a broadcast tick comes first.
        self._next_transform_read = now
        # The ingress marks each tick whose poses it has pushed (it reads the
        # transform port ahead of the tick only with a read lead).
        self._expect_periods = config.transform_read_lead > 0
        self._period_read = -1
        self._holding_broadcast = False
        # Well inside a tick, so that a held broadcast never runs into the next.
        self._hold_max = min(BROADCAST_HOLD_MAX, self.state.broadcast_interval / 4)
        self.slow_turns = SlowTurns()
        # First thing after start: release what a predecessor held (frames.py).
        self._reset_lanes = [Lane.CONTROL, Lane.TRANSFORM]
        # Route tables for the ingress's RPC fan-out, and the DONE mark that
        # lets it use them (relay/frames.py): the last control batch read from
        # this node's ingress, until reported with nothing left to send.
        self.rpc_fast_path = config.rpc_fast_path and not config.max_control_rate_per_client
        self._done_mark: tuple[int, int] | None = None

    # ------------------------------------------------------------- sockets

    def _open_sockets(self) -> None:
        ctx = self.ctx = zmq.Context()
        self.control_inbox = ctx.socket(zmq.PULL)
        self.transform_inbox = ctx.socket(zmq.PULL)
        for lane, sock in ((Lane.CONTROL, self.control_inbox), (Lane.TRANSFORM, self.transform_inbox)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self.endpoints.shard_inbox(self.index, lane, self.incarnation))
        self.status_writer = StatusWriter(self.endpoints.status_file(self.name))
        self.admin_sock = ctx.socket(zmq.ROUTER)
        self.admin_sock.setsockopt(zmq.LINGER, 0)
        self.admin_sock.bind(self.endpoints.shard_admin(self.index, self.incarnation))
        self.egress = ctx.socket(zmq.PUSH)
        self.egress.setsockopt(zmq.LINGER, 2000)
        self.egress.setsockopt(zmq.SNDHWM, 100_000)
        self.egress.setsockopt(zmq.RECONNECT_IVL, INTERNAL_RECONNECT_MS)
        self.egress.connect(self.endpoints.egress)
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        # High mark on the internal hop: subscription bursts and broadcast
        # bursts must not be lost between shard and proxy.
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.setsockopt(zmq.RECONNECT_IVL, INTERNAL_RECONNECT_MS)
        self.pub.connect(self.endpoints.proxy_xsub)
        # The transform pipes are not polled: they are read when due (_turn).
        self.poller = zmq.Poller()
        self.poller.register(self.control_inbox, zmq.POLLIN)
        self.poller.register(self.admin_sock, zmq.POLLIN)
        if self.config.store:
            cfg = self.config
            mine = cluster_endpoints(cfg.advertise_host, cfg.cluster_port, max(cfg.shards, self.index + 1))
            self.links = ShardLinks(ctx, cfg.cluster_key_file, mine, self.index, self.node_id)
            self.links.follow(self.view_file.view)
            for sock in (self.links.inlets[Lane.CONTROL], self.links.admin):
                self.poller.register(sock, zmq.POLLIN)

    def _close_sockets(self) -> None:
        for sock in (self.control_inbox, self.transform_inbox, self.admin_sock, self.pub, self.egress):
            sock.close()
        if self.links is not None:
            self.links.close()
        self.ctx.term()
        self.slow_turns.close()
        self.status_writer.close()

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        self._open_sockets()
        log.info("%s ready (rooms load lazily from the %s store)", self.name,
                 self.store.kind if self.store is not None else "no")
        try:
            while not self.stopping and not self.retiring:
                self._turn()
            self._drain_for_shutdown()
            if self.store is not None and self.state.held:
                log.error("%s: %d held message(s) for %d room(s) not handled at stop", self.name,
                          self.state.held_total, len(self.state.held))
        finally:
            if self.store is not None:
                self.store.close()
            self._close_sockets()
            log.info("%s stopped", self.name)

    def _poll_timeout_ms(self, now: float) -> int:
        if len(self.control):
            return 0
        if self._holding_broadcast:
            # Poses left in the pipe: read on at once. Waiting for the marker:
            # the transform pipes are not polled, so look again shortly.
            return 0 if now >= self._next_transform_read else 1
        wait = self.state.next_deadline() - now
        held_at = self.state.next_held_retry()
        if held_at is not None:
            wait = min(wait, held_at - now)
        if len(self.pending):
            first = next(iter(self.pending.frames.values()))
            wait = min(wait, self.bucket.seconds_until(len(first.payload) * first.fanout))
        if self._credit_due is not None:
            wait = min(wait, self._credit_due - now)
        wait = min(wait, self._next_transform_read - now)
        wait = min(wait, self.config.heartbeat_interval)
        return max(0, int(wait * 1000 + 0.999))

    def _turn(self) -> None:
        now = time.monotonic()
        events = dict(self.poller.poll(self._poll_timeout_ms(now)))
        turn = self.slow_turns
        turn.begin()
        now, wall = time.monotonic(), time.time()
        drain_budget = self.config.ctrl_drain_batch
        # Control first: transforms waiting in their own pipe cannot delay it,
        # and its answers leave (journaled) before a transform batch is even
        # looked at, so they never wait for the pose work of this turn.
        links = self.links
        control_in = self.control_inbox in events
        if links is not None and links.inlets[Lane.CONTROL] in events:
            self._read_inbox(links.inlets[Lane.CONTROL], CONTROL_BATCH, now, Lane.CONTROL, credit=False)
            control_in = True
        if self.control_inbox in events:
            self._read_inbox(self.control_inbox, CONTROL_BATCH, now, Lane.CONTROL)
        turn.mark("control_rules")
        if control_in:
            self._journal()
            turn.mark("control_journal")
            self._publish_routes()
            drain_budget -= self._send_control(drain_budget)
            self._send_done()
            turn.mark("control_send")
        transforms_left = False
        due = self.state.next_broadcast_at
        if now >= self._next_transform_read or now >= due:
            transforms_left = not self._read_transforms(now)
        if self.admin_sock in events:
            self._read_admin(self.admin_sock, now)
        if links is not None and links.admin in events:
            self._read_admin(links.admin, now)
        turn.mark("transform_admin")
        if self.state.held:
            self._enqueue(self.state.retry_held(now), 0)
        self._cluster_upkeep(now)
        turn.mark("held_upkeep")
        unread = due <= now and (transforms_left or self._period_unread(due, now, wall))
        hold = unread and now < due + self._hold_max
        if hold and not self._holding_broadcast:
            self.counters["broadcast_holds"] += 1
        elif unread and not hold:
            self.counters["broadcast_hold_expired"] += 1  # sent without the period's last poses
        self._holding_broadcast = hold
        unicasts, broadcasts = self.state.tick(now, len(self.control), wall=wall, hold_broadcast=hold)
        self._enqueue(unicasts, 0)
        for topic, payload, fanout in broadcasts:
            self.pending.put(topic, payload, fanout)
        turn.mark("timers")
        self._journal()
        self._release_evicted()
        turn.mark("journal")
        self._publish_routes()
        self._send_control(drain_budget)
        self._send_done()
        self._send_broadcasts(now)
        if self._reset_lanes or (self._credit_due is not None and now >= self._credit_due):
            self._send_credit()
        turn.mark("send")
        if self.heartbeat is not None:
            self.heartbeat.value = now
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            self._write_status()
            turn.mark("status")
        turn.end(rooms=len(self.state.rooms), ctrl_queue=len(self.control))

    def _period_unread(self, due: float, now: float, wall: float) -> bool:
        """True while the ingress's marker for the tick due at ``due`` is not read."""
        if not self._expect_periods:
            return False
        return self._period_read < period_of_tick(wall - (now - due), self.state.broadcast_interval)

    def _read_transforms(self, now: float) -> bool:
        """Read the transform pipes; True if drained (else the next read is due at once)."""
        drained = self._read_inbox(self.transform_inbox, TRANSFORM_BATCH, now, Lane.TRANSFORM)
        if self.links is not None:
            drained &= self._read_inbox(self.links.inlets[Lane.TRANSFORM], TRANSFORM_BATCH, now, Lane.TRANSFORM,
                                        credit=False)
        self._next_transform_read = now + MAX_POSE_WAIT if drained else now
        return drained

    def _read_inbox(self, inbox: zmq.Socket, batch: int, now: float, lane: int, *, credit: bool = True) -> bool:
        """Handle up to ``batch`` messages (whole ingress batches) from one lane; True if it was drained.

        ``credit``: batches from this node's ingress are echoed back as credit;
        batches forwarded by other nodes' ingresses are bounded by their PUSH
        high-water marks instead.
        """
        handle = self.state.handle
        handled = 0
        while handled < batch:
            frame = recv_frame_waiting(inbox)
            if frame is None:
                return True
            try:
                if credit:
                    period = parse_period(frame)
                    if period is not None:
                        self._period_read = max(self._period_read, period)
                        continue
                    layout = parse_marker(frame)
                    if layout is not None:
                        self._on_routing_marker(layout, now)
                        if self.retiring:
                            return True
                        continue
                    mark = batch_mark(frame)
                    # A batch built without an ingress epoch is credit for no
                    # ingress, and epoch 0 on the egress would mean RESET.
                    if mark[0] != RESET_EPOCH:
                        self._read_marks[lane] = mark
                        self._credit_read(lane, mark, now)
                        if lane == Lane.CONTROL:
                            self._done_mark = mark[:2]
                before = handled
                # Hops are timed only for this node's ingress: another node's
                # clock is not ours (relay/frames.py HEADER).
                read_ns = monotonic_ns() if credit else 0
                pushed_ns = batch_pushed_at(frame) if credit else 0
                # RPCs the ingress fanned out ride on the transform inlet.
                record_lane = DELIVERED_LANE if lane == Lane.TRANSFORM and frame[:1] == _DELIVERED else lane
                for _lane, _origin, recv_ns, identity, room, payload in iter_batch(frame):
                    handled += 1
                    out = handle(record_lane, identity, room, payload, now)
                    if out:
                        self._enqueue(out, recv_ns, read_ns, pushed_ns)
                if not credit:
                    self.counters["forwarded_in"] += handled - before
            except BatchError as exc:
                self.state.drops.drop("internal_frame", f"bad batch from ingress: {exc}")
        return False

    def _credit_read(self, lane: int, mark: tuple[int, int, int], now: float) -> None:
        """Schedule the echo of a batch read: soon if much is unreported, else within the delay."""
        reported = self._reported_marks.get(lane)
        if (
            reported is None
            or reported[0] != mark[0]
            or mark[1] - reported[1] >= CREDIT_EVERY_MESSAGES
            or mark[2] - reported[2] >= CREDIT_EVERY_BYTES
        ):
            self._credit_due = now
        elif self._credit_due is None:
            self._credit_due = now + CREDIT_MAX_DELAY

    def _send_credit(self) -> None:
        """Tell the ingress how far each lane has been read (bounds its in-flight queue)."""
        while self._reset_lanes:
            try:
                self.egress.send(credit_frame(self._reset_lanes[0], self.index, RESET_EPOCH, 0, 0), zmq.NOBLOCK)
            except zmq.Again:
                self.counters["egress_again"] += 1
                return
            self._reset_lanes.pop(0)
        for lane, mark in self._read_marks.items():
            if self._reported_marks.get(lane) == mark:
                continue
            epoch, messages, nbytes = mark
            try:
                self.egress.send(credit_frame(lane, self.index, epoch, messages, nbytes), zmq.NOBLOCK)
            except zmq.Again:
                self.counters["egress_again"] += 1
                return  # the egress is full; the next turn reports the newer totals
            self._reported_marks[lane] = mark
        self._credit_due = None

    def _enqueue(self, unicasts: list, recv_ns: int, read_ns: int = 0, pushed_ns: int = 0) -> None:
        """Queue unicasts; ``recv_ns``/``read_ns``: when the message that caused
        them reached the ingress and this shard (0 for timers), stamped into
        each frame with the time rules were done (relay/frames.py HEADER)."""
        push = self.control.push
        queued_ns = monotonic_ns() if read_ns else 0
        out_by_type = self.out_by_type
        number, tag = self.number, self.tag
        single_node = self.links is None or not self.links.remote_nodes
        for room_bytes, identities, payload in unicasts:
            if single_node or all(i[:TAG_SIZE] == tag for i in identities):
                groups = ((number, identities),)
            else:
                # Recipients on several nodes: one frame per node's egress.
                by_node: dict[int, list[bytes]] = {}
                for identity in identities:
                    by_node.setdefault(tag_of(identity), []).append(identity)
                groups = tuple(by_node.items())
            for node, group in groups:
                if push(unicast_frames(room_bytes, payload, group, recv_ns, node, pushed_ns, read_ns, queued_ns)):
                    self.counters["unicast_recipients"] += len(group)
                    out_by_type[payload[0]] += len(group)
                    self.counters["unicast_bytes"] += len(payload) * len(group)
                else:
                    self.state.drops.drop("control_queue_full", f"unicast for room {room_bytes[:64]!r} refused")

    def _read_admin(self, sock: zmq.Socket, now: float) -> None:
        for _ in range(ADMIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counters["admin_requests"] += 1
            if len(frames) != 3:
                continue
            peer, request_id, body = frames
            try:
                request = orjson.loads(body)
                if not isinstance(request, dict):
                    raise ValueError("request is not an object")
                deadline = request.get("deadline")
                if isinstance(deadline, (int, float)) and time.time() > deadline:
                    # The bridge already told its caller the shard was
                    # unavailable: applying it now would make that answer a lie.
                    reply, unicasts = refused(Outcome.UNAVAILABLE, "request expired in the shard queue"), []
                else:
                    reply, unicasts = self.state.admin(request, now)
            except (orjson.JSONDecodeError, ValueError) as exc:
                reply, unicasts = refused(Outcome.BAD_REQUEST, f"bad admin request: {exc}"), []
            except Exception:  # one bad request must not take the shard down
                self.state.events.exception("admin_error", "admin request failed: %r", body[:200])
                reply, unicasts = refused(Outcome.INTERNAL_ERROR, "internal error in shard"), []
            self._enqueue(unicasts, 0)
            # Journal before the reply: an "ok" means the write is on disk.
            self._journal()
            sock.send_multipart([peer, request_id, orjson.dumps(reply)])

    def _journal(self) -> None:
        changes = self.state.drain_changes()
        if changes and self.store is not None:
            refused = self.store.apply(changes)
            self.counters["journal_records"] += len(changes)
            if refused:
                self.state.forget_rooms(refused)

    def _release_evicted(self) -> None:
        """Give back the leases of rooms evicted or deleted this turn, now that
        their last records are journalled (a no-op for SQLite)."""
        released = self.state.take_released()
        if not released or self.store is None:
            return
        if self.store.health().degraded:
            # Their last records wait in the store's buffer, which writes only
            # rooms whose lease this shard still holds: let go after the flush.
            self.state.release_later(released)
            return
        self.store.release(released)

    def _member_stamp(self, identity: bytes | None) -> tuple[str, int]:
        """(node id, node epoch) of the node whose ingress holds a control identity."""
        if identity is not None and len(identity) >= TAG_SIZE:
            node = self.view_file.view.by_number(tag_of(identity))
            if node is not None:
                return node.node_id, node.epoch
        return self.node_id, self.view_file.epoch

    def _member_alive(self, node_id: str, epoch: int) -> bool:
        """A stored member's connection lives while its node's incarnation does."""
        node = self.view_file.view.node(node_id)
        return node is not None and node.epoch == epoch

    def _cluster_upkeep(self, now: float) -> None:
        """Leases, store retries and view changes: cheap unless something is due."""
        if self.store is None:
            return
        refused = self.store.maintain(now)
        if refused:
            self.state.forget_rooms(refused)
        if now >= self._next_renew:
            self._next_renew = now + self.config.lease_ttl / 3
            lost = self.store.renew(list(self.state.rooms))
            if lost:
                self.state.forget_rooms(lost)
        view = self.view_file.poll(now)
        if view is not None and self.links is not None:
            self.links.follow(view)
        if self.links is not None and self.links.unbound:
            self.links.bind_pending()

    def _on_routing_marker(self, layout: bytes, now: float) -> None:
        """The ingress routes by ``layout`` from here on: hand over what is no longer ours.

        Everything it routed here before has been read (relay/frames.py), so
        the new owner, waiting for the lease, continues exactly where this
        worker stops. A worker whose slot is gone or given to a new
        incarnation hands over every room and stops.
        """
        try:
            view, slots = decode_layout(layout)
        except (ValueError, KeyError, TypeError) as exc:
            self.state.drops.drop("internal_frame", f"bad routing marker: {exc}")
            return
        self.counters["routing_markers"] += 1
        self.routing_view = view
        retiring = self.index >= len(slots) or slots[self.index] != self.incarnation
        if self.store is None:
            # Nothing to hand over through: rooms live in this process only
            # (the supervisor refuses to scale a node without a store).
            self.retiring = retiring
            return
        if retiring and self.state.held:
            # Messages waiting for a lease this worker was about to get:
            # take the rooms now so that they are handed over with the rest.
            for held in self.state.held.values():
                held.retry_at = 0.0
            self._enqueue(self.state.retry_held(now), 0)
        self.retiring = retiring
        me = (self.node_id, self.index)
        moving = [r for r in self.state.rooms if retiring or owner_of(r.encode("utf-8"), view) != me]
        if moving:
            self.hand_over(moving, now)
        if retiring:
            log.info("%s (incarnation %d) retired by the layout %s: %d room(s) handed over",
                     self.name, self.incarnation, slots, len(moving))

    def hand_over(self, room_ids: list[str], now: float) -> None:
        """Release rooms to their new owner: flush, journal, send, then let go of the lease."""
        started = time.monotonic()
        self._enqueue(self.state.release_rooms(room_ids, now), 0)
        self._journal()
        self.store.release(room_ids)
        self.counters["rooms_handed_over"] += len(room_ids)
        log.info("%s handed over %d room(s) in %.1f ms", self.name, len(room_ids),
                 (time.monotonic() - started) * 1000)

    def _send_control(self, budget: int) -> int:
        """Send up to ``budget`` queued control frames; return how many went out."""
        local = self.egress
        number = self.number
        links = self.links
        control = self.control
        sent = 0
        now_ns = monotonic_ns()
        while sent < budget and len(control):
            frames = control.peek()
            if links is None:
                # One node: every frame is for this node's egress (no header read).
                sock, node = local, number
            else:
                node = HEADER.unpack_from(frames[0])[1]
                sock = local if node == number else links.egress_for(node)
            if sock is None:
                control.pop()
                self.state.drops.drop("unicast_no_route", f"no egress for node number {node}")
                continue
            header = frames[0]
            frames[0] = stamp_sent(header, now_ns)
            try:
                send_parts(sock, frames)
            except zmq.Again:
                frames[0] = header
                self.counters["egress_again"] += 1
                break
            control.pop()
            sent += 1
            self.counters["unicast_frames_sent"] += 1
        return sent

    def _publish_routes(self) -> None:
        """Queue the route table of every room whose table may have changed,
        in order with the unicasts already queued (supervisor/rpc_fanout.py)."""
        dirty = self.state.routes_dirty
        if not dirty:
            return
        if not self.rpc_fast_path:
            dirty.clear()
            return
        tables = self.state.rpc_routes
        for room_id in list(dirty):
            table = tables(room_id, self.tag, ROUTES_MAX_MEMBERS)
            if not self.control.push(routes_frames(room_id.encode("utf-8"), table, self.number, self.index)):
                # Retried next turn; until then no DONE, so the ingress keeps
                # this shard's rooms on the slow path.
                self.counters["routes_refused"] += 1
                return
            dirty.discard(room_id)
            self.counters["routes_published"] += 1

    def _send_done(self) -> None:
        """Report the control messages handled once all they caused is on the egress."""
        mark = self._done_mark
        if mark is None or len(self.control) or self.state.routes_dirty or not self.rpc_fast_path:
            return
        try:
            self.egress.send(done_frame(self.index, mark[0], mark[1]), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["egress_again"] += 1
            return
        self._done_mark = None

    def _send_broadcasts(self, now: float) -> None:
        frames = self.pending.frames
        while frames:
            topic = next(iter(frames))
            frame = frames[topic]
            deducted = self.bucket.try_take(len(frame.payload) * frame.fanout, now)
            if deducted is None:
                return
            try:
                self.pub.send_multipart([topic, frame.payload], zmq.NOBLOCK)
            except zmq.Again:
                self.bucket.refund(deducted)
                self.counters["broadcast_again"] += 1
                return
            if self.links is not None and self.links.remote_nodes:
                # Other nodes' subscribers of this room, through their proxies;
                # a full link loses this latest-only frame, never blocks.
                try:
                    self.links.pub.send_multipart([topic, frame.payload], zmq.NOBLOCK)
                except zmq.Again:
                    self.counters["cluster_broadcast_again"] += 1
            del frames[topic]
            self.counters["broadcasts_sent"] += 1
            self.broadcast_by_type[frame.payload[0]] += 1
            self.counters["broadcast_bytes"] += len(frame.payload)

    def _drain_for_shutdown(self) -> None:
        """Stop intake, flush what is queued, persist."""
        deadline = time.monotonic() + 2.0
        self._journal()
        while len(self.control) and time.monotonic() < deadline:
            self._send_control(self.config.ctrl_drain_batch)
            if len(self.control):
                time.sleep(0.005)
        if len(self.control):
            log.warning("%s: %d control frames not delivered at shutdown", self.name, len(self.control))

    def _write_status(self) -> None:
        self.state.flush_logs()
        status = self.state.stats()
        status.update(
            {
                "pid": os.getpid(),
                "ctrl_queue_depth": len(self.control),
                "ctrl_queue_high_water": self.control.high_water,
                "ctrl_queue_refused": self.control.refused,
                "pending_broadcasts": len(self.pending),
                "replaced_frames": self.pending.replaced,
                "tokens": self.bucket.tokens,
                "refunds": self.bucket.refunds,
                "unicast_out_by_type": dict(self.out_by_type),
                "node_id": self.node_id,
                "links": self.links.stats() if self.links is not None else None,
                "store": vars(self.store.health()) if self.store is not None else None,
                "broadcast_out_by_type": dict(self.broadcast_by_type),
                "slow_turns": self.slow_turns.to_dict(),
                "status_writes_replaced": self.status_writer.replaced,
                "status_write_failures": self.status_writer.failures,
                **self.counters,
            }
        )
        self.status_writer.submit(status)


def run_shard(
    config_dict: dict, shard_index: int, run_dir: str, incarnation: int = 0, heartbeat: Any = None
) -> None:
    """Process entry point (spawned by the supervisor as slot ``shard_index``, ``incarnation``)."""
    config = RelayConfig.from_dict(config_dict)
    setup_logging(f"shard-{shard_index}", config.log_level_console, config.log_json_console, config.log_dir)
    from shard_worker.store.base import StoreError

    try:
        worker = ShardWorker(config, shard_index, run_dir, heartbeat, incarnation=incarnation)

        def handle_term(signum: int, frame: Any) -> None:
            worker.stopping = True

        signal.signal(signal.SIGTERM, handle_term)
        # Ctrl-C reaches the whole process group; the supervisor decides the order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.run()
    except StoreError as exc:
        # Serving on would announce changes that are not on disk; the
        # supervisor restarts the shard (with backoff while this persists).
        log.error("shard-%d: journal unusable, exiting: %s", shard_index, exc)
        from relay.fatal import record_fatal

        record_fatal(run_dir, f"shard-{shard_index}", str(exc))
        sys.exit(1)
