"""The ingress: the only owner of the client-facing ROUTER sockets.

It never parses payloads. Per poll it drains, in priority order, the egress
(shard -> client unicasts), the control ROUTER, then the transform ROUTER;
inbound messages go to the shard that owns their room (rendezvous hash,
cached). Unicasts leave through the control ROUTER with ROUTER_MANDATORY and
DONTWAIT: a full recipient gets its own ordered, bounded retry queue
(``supervisor/outbound.py``), and a recipient that is gone is dropped and
counted.

Every queue this process holds is bounded, and every overflow is counted
under a drop reason (README, "Bounds"): frames over ``max_message_bytes`` are
refused by libzmq itself (the peer is disconnected before the frame is
buffered), the in-flight messages and bytes to each shard are bounded by
credit (``relay/frames.py``), and each slow recipient has an allowance.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import time
import zlib
from collections import Counter
from typing import Any

import zmq

from relay.cluster.placement import LocalRouter
from relay.cluster.view import ClusterView, encode_layout
from relay.cluster.view_file import ViewFile
from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints, cluster_endpoints, tcp_bind
from relay.frames import (
    DELIVERED_LANE,
    HEADER,
    HEADER_SIZE,
    RESET_EPOCH,
    ROUTES_LANE,
    TAG_SIZE,
    BatchBuilder,
    BatchError,
    node_tag,
    parse_credit,
    parse_done,
    period_marker,
    routes_shard,
    routing_marker,
    unpack_identities,
)
from relay.histogram import ControlHops, LatencyHistogram, PeakHistogram
from relay.logs import RateLimitedLog, setup_logging
from relay.protocol.messages import Lane
from relay.rpc_trace import RpcTrace
from relay.slow_turns import SlowTurns
from relay.status import StatusWriter
from relay.tick_grid import period_of_read, seconds_to_read
from relay.zmq_fast import recv_parts_waiting, recv_routed_waiting, send_parts
from supervisor.ingress_links import IngressLinks
from supervisor.ingress_slots import ShardSlots
from supervisor.outbound import GONE, SENT, WOULDBLOCK, OutboundQueues
from supervisor.rpc_fanout import RpcFanout

log = logging.getLogger("relay.ingress")

BATCH = 1000
MAX_ROOM_BYTES = 255
MAX_IDENTITY_BYTES = 255 - TAG_SIZE
# Messages per ingress->shard batch: bounds how much transform work a shard
# takes in one read, so control waiting in its own pipe is read soon after.
MAX_BATCH = 128
# Poses read per pass over the transform ROUTER. A tick's read is hundreds of
# poses (relay/tick_grid.py); the control ROUTER is polled between passes, so
# a control message waits behind at most one pass (well under a millisecond),
# never behind the whole read.
TRANSFORM_PASS = MAX_BATCH
STATUS_INTERVAL = 1.0
CONTROL_IO_THREAD = 1  # ZMQ_AFFINITY bitmasks
TRANSFORM_IO_THREAD = 2

# In flight to one shard (pushed, not yet read by it), per lane. Control is
# kept through a shard restart (about a second of a busy node); poses are
# latest-only, so more than about a second of them is stale anyway.
INFLIGHT_LIMITS = {
    Lane.CONTROL: (50_000, 64 * 1024 * 1024),
    Lane.TRANSFORM: (10_000, 16 * 1024 * 1024),
}
# Per-peer send pipe of the control ROUTER (libzmq counts messages). The
# reference client's DEALER holds 1024 on its side; more here would only
# delay the moment a stuck reader is noticed.
CONTROL_SNDHWM = 1024
# Unicasts handed over by shards and not yet sent: bounded on both ends of
# the pipe (shard SNDHWM + this), counted by the shards' egress_again.
EGRESS_RCVHWM = 100_000
# A slow reader's allowance (supervisor/outbound.py) and the ceiling for all.
RETRY_PER_RECIPIENT = 4096
RETRY_BYTES_PER_RECIPIENT = 4 * 1024 * 1024
RETRY_TOTAL = 100_000
RETRY_BYTES_TOTAL = 64 * 1024 * 1024
# A recipient that took nothing for this long is given up (queue dropped).
RETRY_STALL_TIMEOUT = 15.0
RETRY_MIN_INTERVAL = 0.005
RETRY_MAX_INTERVAL = 0.2


class Ingress:
    def __init__(self, config: RelayConfig, run_dir: str, heartbeat: Any = None) -> None:
        self.config = config
        self.endpoints = NodeEndpoints(run_dir)
        self.heartbeat = heartbeat
        self.view_file = ViewFile(run_dir, shards=config.shards)
        self.router = LocalRouter(self.view_file.view, self.view_file.node_id)
        # Control identities carry this node's tag (relay/frames.py): the
        # owner of a room, wherever it runs, sends unicasts back here.
        self.number = self.view_file.number
        self.tag = node_tag(self.number)
        self.links: IngressLinks | None = None
        self.stopping = False
        self.counts: Counter[str] = Counter()
        # Drops by reason (the exported counter) and their rate-limited lines.
        self.drop_log = RateLimitedLog(log)
        self.drops = self.drop_log.counts
        self.outbound = OutboundQueues(
            per_recipient_messages=RETRY_PER_RECIPIENT,
            per_recipient_bytes=RETRY_BYTES_PER_RECIPIENT,
            total_messages=RETRY_TOTAL,
            total_bytes=RETRY_BYTES_TOTAL,
            stall_timeout=RETRY_STALL_TIMEOUT,
            retry_min=RETRY_MIN_INTERVAL,
            retry_max=RETRY_MAX_INTERVAL,
            on_drop=lambda reason, count: self._drop(reason, "slow or vanished recipient", count),
        )
        self.control_latency = LatencyHistogram()
        self.control_hops = ControlHops()
        self.slow_turns = SlowTurns()
        # Credit per (lane, shard): [messages, bytes] pushed, and the totals
        # the shard last reported as read (relay/frames.py). A fresh epoch per
        # ingress process tells its batches from a predecessor's.
        self.epoch = random.getrandbits(32) or 1  # 0 is RESET_EPOCH
        # The transform ROUTER is read once per broadcast tick, just before
        # it (relay/tick_grid.py; the control ROUTER and the egress are
        # polled all the time): poses wait in their ZeroMQ pipes meanwhile,
        # so one ingress wake-up, one pushed batch per shard and one shard
        # read cover every pose of the period instead of one per arrival.
        self.transform_lead = config.transform_read_lead
        self.tick_interval = 1.0 / config.transform_broadcast_rate
        # Not before this (monotonic) is the transform ROUTER read again.
        self.transform_next_read = 0.0
        # Room RPCs this process delivers itself (supervisor/rpc_fanout.py);
        # the shard is told with the next tick's poses (DELIVERED_LANE).
        self.fanout = RpcFanout(self.tag, len(self.view_file.slots))
        self.fanout_latency = PeakHistogram()
        self.rpc_trace = RpcTrace.from_env("ingress")
        self.poll_ns = self.turn_ns = 0  # when the current turn's poll began and returned (RPC trace)
        self.delivered: dict[int, BatchBuilder] = {}
        # Per shard slot: [recipients, bytes] of the RPCs fanned out for its
        # rooms, counted in that shard's metrics (relay/metrics.py).
        self.fanout_sent: dict[int, list[int]] = {}

    def _open_sockets(self) -> None:
        # Two I/O threads, one per lane (ZMQ_AFFINITY): the network I/O of the
        # control lane never queues behind a flood on the transform lane.
        ctx = self.ctx = zmq.Context(io_threads=2)
        cfg = self.config
        self.control = ctx.socket(zmq.ROUTER)
        self.transform = ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.AFFINITY, CONTROL_IO_THREAD)
        self.transform.setsockopt(zmq.AFFINITY, TRANSFORM_IO_THREAD)
        for sock in (self.control, self.transform):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.BACKLOG, 512)
            sock.setsockopt(zmq.RCVHWM, 10_000)
            # libzmq checks each frame's announced size before buffering it
            # and disconnects the peer: an oversized frame never costs memory
            # here and never reaches a batch.
            sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control.setsockopt(zmq.SNDHWM, CONTROL_SNDHWM)
        self.control.bind(tcp_bind(cfg.host, cfg.control_port))
        self.transform.bind(tcp_bind(cfg.host, cfg.transform_port))
        self.egress = ctx.socket(zmq.PULL)
        self.egress.setsockopt(zmq.AFFINITY, CONTROL_IO_THREAD)
        self.egress.setsockopt(zmq.LINGER, 0)
        self.egress.setsockopt(zmq.RCVHWM, EGRESS_RCVHWM)
        self.egress.bind(self.endpoints.egress)
        # One PUSH per (lane, shard slot). Messages for a restarting shard
        # wait here and are delivered when it is back, within the lane's
        # credit (INFLIGHT_LIMITS); beyond it they are dropped and counted.
        # The HWM (frames, each at least one message) is only a backstop.
        self.shard_slots = ShardSlots(
            ctx, self.endpoints, self.number,
            hwm={lane: limits[0] for lane, limits in INFLIGHT_LIMITS.items()},
            affinity={Lane.CONTROL: CONTROL_IO_THREAD, Lane.TRANSFORM: TRANSFORM_IO_THREAD},
        )
        self.shard_slots.open(self.view_file.slots)
        # The slot layout's lists, changed in place by ShardSlots.change.
        self.shard_pushes = self.shard_slots.pushes
        self.batches = self.shard_slots.batches
        self.pushed = self.shard_slots.pushed
        self.acked = self.shard_slots.acked
        self.inflight_high_water = self.shard_slots.high_water
        # Batches for shards of other nodes, by router target (< 0).
        self.remote_batches: dict[int, dict[int, BatchBuilder]] = {Lane.CONTROL: {}, Lane.TRANSFORM: {}}
        self.status_writer = StatusWriter(self.endpoints.status_file("ingress"))
        self.poller = zmq.Poller()
        self.poller_no_transform = zmq.Poller()
        self.poller.register(self.egress, zmq.POLLIN)
        if cfg.store:
            links = cluster_endpoints(cfg.advertise_host, cfg.cluster_port, cfg.shards)
            self.links = IngressLinks(ctx, cfg.cluster_key_file, self.router.node_id, links["egress"],
                                      CONTROL_IO_THREAD)
            self.links.follow(self.router.view)
            self.poller.register(self.links.egress, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        for sock, _ in self.poller.sockets:
            self.poller_no_transform.register(sock, zmq.POLLIN)
        self.poller.register(self.transform, zmq.POLLIN)

    def _close_sockets(self) -> None:
        self.shard_slots.close()
        for sock in (self.control, self.transform, self.egress):
            sock.close()
        if self.links is not None:
            self.links.close()
        self.ctx.term()
        self.slow_turns.close()
        self.status_writer.close()

    def _drop(self, reason: str, detail: str, count: int = 1) -> None:
        self.drop_log.drop(reason, detail, count)

    def _poll_timeout_ms(self, now: float) -> int:
        # Sleep until the earliest retry is due, never busy-wait on a
        # recipient that is not reading (a timed retry, per recipient).
        wait = self.config.heartbeat_interval
        due = self.outbound.next_due()
        if due is not None:
            wait = min(wait, due - now)
        if now < self.transform_next_read:
            wait = min(wait, self.transform_next_read - now)
        return max(0, int(wait * 1000 + 0.999))

    def _poller_for(self, now: float) -> zmq.Poller:
        """Every socket, or all but the transform ROUTER until its next read is due."""
        return self.poller if now >= self.transform_next_read else self.poller_no_transform

    def _read_transforms(self, budget: int) -> None:
        """One pass over the transform ROUTER. Unless poses were left, every
        shard is told which tick's poses it now has, and the next read is due
        before the next tick."""
        more = self._pump_inbound(self.transform, Lane.TRANSFORM, budget)
        if not more:
            self._flush_delivered()
        if not more and self.transform_lead:
            wall = time.time()
            self.shard_slots.mark_period(period_marker(period_of_read(wall, self.tick_interval, self.transform_lead)))
            self.transform_next_read = time.monotonic() + seconds_to_read(wall, self.tick_interval, self.transform_lead)

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        self._open_sockets()
        log.info(
            "ingress ready: control %s:%d transform %s:%d -> %d shards",
            self.config.host, self.config.control_port, self.config.host,
            self.config.transform_port, len(self.shard_slots),
        )
        # A (re)started ingress cannot know what its predecessor routed: tell
        # every worker which routing holds from here on.
        self.shard_slots.mark(self._marker())
        next_status = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                if self.rpc_trace is not None:
                    self.poll_ns = time.monotonic_ns()
                events = dict(self._poller_for(now).poll(self._poll_timeout_ms(now)))
                if self.rpc_trace is not None:
                    self.turn_ns = time.monotonic_ns()
                turn = self.slow_turns
                turn.begin()
                if self.egress in events:
                    self._pump_egress(self.egress)
                if self.links is not None and self.links.egress in events:
                    self._pump_egress(self.links.egress)
                if self.outbound.queues:
                    self.counts["unicast_sent"] += self.outbound.retry_due(self._try_send, time.monotonic())
                turn.mark("egress")
                if self.control in events:
                    self._pump_inbound(self.control, Lane.CONTROL, BATCH)
                    if not self.transform_lead:
                        self._flush_delivered()  # no tick read to ride with
                turn.mark("control_in")
                # Due reads run even with nothing waiting: the shards expect the period marker.
                if self.transform in events or (self.transform_lead and time.monotonic() >= self.transform_next_read):
                    self._read_transforms(TRANSFORM_PASS)
                now = time.monotonic()
                turn.mark("transform_in")
                view = self.view_file.poll(now)
                if view is not None:
                    self._change_routing(view)
                if self.heartbeat is not None:
                    self.heartbeat.value = now
                if now >= next_status:
                    next_status = now + STATUS_INTERVAL
                    self.fanout.prune()
                    self.drop_log.flush()
                    self._write_status()
                    turn.mark("status")
                turn.end()
            # Stop intake; deliver what the shards already handed over.
            self._drain_egress_for_shutdown()
        finally:
            self._close_sockets()
            if self.rpc_trace is not None:
                try:
                    self.rpc_trace.write()
                except OSError as exc:  # a diagnostic must not fail the stop
                    log.warning("RPC trace not written to %s: %s", self.rpc_trace.path, exc)
            log.info("ingress stopped")

    def _marker(self) -> bytes:
        return routing_marker(encode_layout(self.view_file.view, self.view_file.slots))

    def _change_routing(self, view: ClusterView) -> None:
        """A new cluster view or slot layout: switch in the order ShardSlots documents."""
        for lane in (Lane.CONTROL, Lane.TRANSFORM):
            self._flush_batches(lane)
        self._flush_delivered()
        slots = self.view_file.slots
        if slots != self.shard_slots.slots:
            old = list(self.shard_slots.slots)
            self.shard_slots.change(slots, self._marker())
            self.fanout.relayout(old, list(slots), [p[0] for p in self.pushed[Lane.CONTROL]])
            log.info("routing to %d shard slot(s), incarnations %s", len(slots), slots)
        else:
            self.shard_slots.mark(self._marker())
        self.router.set_view(view)
        self.remote_batches = {Lane.CONTROL: {}, Lane.TRANSFORM: {}}
        if self.links is not None:
            self.links.follow(view)
        log.info("routing by cluster view generation %d (%d nodes)", view.generation, len(view.nodes))

    def _pump_inbound(self, sock: zmq.Socket, lane: int, budget: int) -> bool:
        """Forward up to ``budget`` messages, batched per shard; True if more may wait."""
        route = self.router.route
        batches = self.batches[lane]
        remote = self.remote_batches[lane]
        tag = self.tag if lane == Lane.CONTROL else b""
        fanout = self.fanout if lane == Lane.CONTROL else None
        pushed = self.pushed[lane]
        now_ns = time.monotonic_ns
        received = 0
        more = True
        try:
            while received < budget:
                frames = recv_routed_waiting(sock)
                if frames is None:
                    more = False
                    break
                received += 1
                if len(frames) != 3:
                    self._drop("frame_count", f"{len(frames)} frames on lane {lane}")
                    continue
                identity, room, payload = frames
                if len(room) > MAX_ROOM_BYTES:
                    self._drop("room_too_long", f"room id of {len(room)} bytes")
                    continue
                if len(identity) > MAX_IDENTITY_BYTES:
                    # A peer may choose its own routing id; the record keeps
                    # its length in one byte, with the node tag in front.
                    self._drop("internal_frame", f"routing id over {MAX_IDENTITY_BYTES} bytes")
                    continue
                sender = tag + identity
                shard = route(room)
                if shard < 0:
                    # Owned by a shard of another node: forwarded (cluster mode).
                    batch = remote.get(shard)
                    if batch is None:
                        batch = remote[shard] = BatchBuilder(lane, self.number)
                    batch.add(now_ns(), sender, room, payload)
                    if batch.count >= MAX_BATCH:
                        self._forward(lane, shard, batch)
                    continue
                if fanout is not None and self._fan_out(shard, sender, room, payload):
                    continue
                batch = batches[shard]
                batch.add(now_ns(), sender, room, payload)
                if fanout is not None and fanout.blocks(sender, room, payload):
                    fanout.pushed(room, shard, pushed[shard][0] + batch.count)
                if batch.count >= MAX_BATCH:
                    self._send_batch(lane, shard, batch)
        finally:
            self._flush_batches(lane)
            self.counts["received_control" if lane == Lane.CONTROL else "received_transform"] += received
        return more

    def _fan_out(self, shard: int, identity: bytes, room: bytes, payload: bytes) -> bool:
        """Deliver a room RPC from its route table if ``RpcFanout`` allows it
        (the shard learns of it later); False: it goes to the shard."""
        recv_ns = time.monotonic_ns()
        try:
            plan = self.fanout.plan(identity, room, payload, shard)
        except Exception:  # a bug costs the fast path of one RPC, not the ingress
            self.counts["fanout_errors"] += 1
            self.drop_log.exception("fanout_error", "RPC fan-out failed; sent to the shard")
            return False
        if plan is None:
            return False
        out, recipients = plan
        for recipient in recipients:
            self._send_unicast(recipient, room, out)
        sent = self.fanout_sent.get(shard)
        if sent is None:
            sent = self.fanout_sent[shard] = [0, 0]
        sent[0] += len(recipients)
        sent[1] += len(out) * len(recipients)
        done_ns = time.monotonic_ns()
        spent = (done_ns - recv_ns) / 1e9
        if self.rpc_trace is not None:
            self.rpc_trace.record(zlib.crc32(payload), self.poll_ns, self.turn_ns, recv_ns, done_ns)
        self.control_latency.observe(spent)
        self.fanout_latency.observe(spent)
        batch = self.delivered.get(shard)
        if batch is None:
            batch = self.delivered[shard] = BatchBuilder(DELIVERED_LANE, self.number)
        batch.add(recv_ns, identity, room, payload)
        if batch.count >= MAX_BATCH:
            self._send_delivered(shard, batch)
        return True

    def _flush_delivered(self) -> None:
        for shard, batch in self.delivered.items():
            if batch.count:
                self._send_delivered(shard, batch)

    def _send_delivered(self, shard: int, batch: BatchBuilder) -> None:
        if shard < len(self.shard_pushes[Lane.TRANSFORM]):
            self._send_batch(Lane.TRANSFORM, shard, batch)  # on the transform inlet, under its credit
        else:
            batch.clear()  # the slot is gone; its rooms' senders are refreshed by their next message

    def _flush_batches(self, lane: int) -> None:
        for shard, batch in enumerate(self.batches[lane]):
            if batch.count:
                self._send_batch(lane, shard, batch)
        for target, batch in self.remote_batches[lane].items():
            if batch.count:
                self._forward(lane, target, batch)

    def _forward(self, lane: int, target: int, batch: BatchBuilder) -> None:
        count = batch.count
        node_id, shard = self.router.remote_target(target)
        if self.links is None or not self.links.forward(node_id, shard, lane, batch.take(), count):
            batch.clear()
            self._drop("forward_failed", f"node {node_id!r} shard {shard} unreachable or full", count)

    def _send_batch(self, lane: int, shard: int, batch: BatchBuilder) -> None:
        count, nbytes = batch.count, batch.nbytes
        pushed = self.pushed[lane][shard]
        acked = self.acked[lane][shard]
        max_messages, max_bytes = INFLIGHT_LIMITS[lane]
        inflight = pushed[0] - acked[0]
        if inflight + count > max_messages or pushed[1] - acked[1] + nbytes > max_bytes:
            batch.clear()
            self._drop("shard_queue_full", f"shard-{shard} not keeping up ({inflight} messages in flight)", count)
            return
        try:
            self.shard_pushes[lane][shard].send(batch.take(self.epoch, pushed[0], pushed[1]), zmq.NOBLOCK)
        except zmq.Again:
            self._drop("shard_queue_full", f"shard-{shard} pipe full ({count} messages)", count)
            return
        pushed[0] += count
        pushed[1] += nbytes
        if inflight + count > self.inflight_high_water[lane][shard]:
            self.inflight_high_water[lane][shard] = inflight + count

    def _credit(self, frame: bytes) -> bool:
        """Apply a shard's report of what it has read (or handled); False if neither."""
        credit = parse_credit(frame)
        if credit is None:
            done = parse_done(frame)
            if done is None:
                return False
            shard, epoch, messages = done
            if epoch == self.epoch:
                self.fanout.handled(shard, messages)
            return True
        lane, shard, epoch, messages, nbytes = credit
        if lane not in self.acked or not 0 <= shard < len(self.acked[lane]):
            return True
        acked = self.acked[lane][shard]
        pushed = self.pushed[lane][shard]
        if epoch == RESET_EPOCH:
            # A (re)started shard: whatever its predecessor held is gone.
            acked[0], acked[1] = pushed
            self.counts["credit_resets"] += 1
            if lane == Lane.CONTROL:
                self.fanout.reset_shard(shard, pushed[0])
            return True
        if epoch != self.epoch:
            return True  # meant for a predecessor of this process
        # Totals only grow; an echo cannot exceed what was pushed.
        acked[0] = min(max(acked[0], messages), pushed[0])
        acked[1] = min(max(acked[1], nbytes), pushed[1])
        return True

    def _pump_egress(self, sock: zmq.Socket) -> None:
        tag = self.tag
        for _ in range(BATCH):
            frames = recv_parts_waiting(sock)
            if frames is None:
                return
            if len(frames) != 4 or len(frames[0]) != HEADER_SIZE:
                if len(frames) == 1 and self._credit(frames[0]):
                    continue
                self._drop("internal_frame", f"{len(frames)} egress frames")
                continue
            egress_ns = time.monotonic_ns()
            lane, _origin, recv_ns, pushed_ns, read_ns, queued_ns, sent_ns = HEADER.unpack(frames[0])
            room, payload = frames[1], frames[2]
            if lane == ROUTES_LANE:
                self._route_table(sock, room, payload, frames[3])
                continue
            try:
                identities = unpack_identities(frames[3])
            except BatchError as exc:
                self._drop("internal_frame", str(exc))
                continue
            if sock is not self.egress:
                self.counts["remote_unicasts"] += len(identities)
            for identity in identities:
                if identity[:TAG_SIZE] != tag:
                    self._drop("foreign_identity", "unicast for another node's client")
                    continue
                self._send_unicast(identity[TAG_SIZE:], room, payload)
            if recv_ns:
                done_ns = time.monotonic_ns()
                self.control_latency.observe((done_ns - recv_ns) / 1e9)
                if read_ns and sock is self.egress:
                    self.control_hops.observe(recv_ns, pushed_ns, read_ns, queued_ns, sent_ns, egress_ns, done_ns)

    def _route_table(self, sock: zmq.Socket, room: bytes, table: bytes, sender: bytes) -> None:
        if sock is not self.egress:
            self._drop("internal_frame", "route table from another node")
            return
        try:
            shard = routes_shard(sender)
        except BatchError as exc:
            self._drop("internal_frame", str(exc))
            return
        self.fanout.set_table(shard, room, table)

    def _try_send(self, frames: list[bytes]) -> int:
        try:
            send_parts(self.control, frames)
            return SENT
        except zmq.Again:
            return WOULDBLOCK
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                self._drop("unicast_error", str(exc))
            return GONE

    def _send_unicast(self, identity: bytes, room: bytes, payload: bytes) -> None:
        frames = [identity, room, payload]
        outbound = self.outbound
        if identity in outbound.queues:
            # Keep per-recipient order: never overtake what is already waiting.
            outbound.enqueue(identity, frames, time.monotonic())
            return
        result = self._try_send(frames)
        if result == SENT:
            self.counts["unicast_sent"] += 1
        elif result == WOULDBLOCK:
            self.counts["unicast_wouldblock"] += 1
            outbound.enqueue(identity, frames, time.monotonic())
        else:
            self._drop("unicast_unreachable", "recipient disconnected")

    def _drain_egress_for_shutdown(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not self.egress.poll(50):
                break
            self._pump_egress(self.egress)
        self.counts["unicast_sent"] += self.outbound.flush_all(self._try_send, time.monotonic())

    def _write_status(self) -> None:
        self.status_writer.submit(
            {
                "pid": os.getpid(),
                "counts": dict(self.counts),
                "drops": dict(self.drops),
                "retry_recipients": len(self.outbound),
                "retry_queued": self.outbound.queued_messages,
                "retry_queued_bytes": self.outbound.queued_bytes,
                "retry_high_water": self.outbound.high_water_messages,
                "retry_high_water_bytes": self.outbound.high_water_bytes,
                # Pushed to each shard and not yet read by it, per lane.
                "inflight": {
                    lane.name.lower(): [p[0] - a[0] for p, a in zip(self.pushed[lane], self.acked[lane], strict=True)]
                    for lane in self.pushed
                },
                "inflight_bytes": {
                    lane.name.lower(): [p[1] - a[1] for p, a in zip(self.pushed[lane], self.acked[lane], strict=True)]
                    for lane in self.pushed
                },
                "inflight_high_water": {
                    lane.name.lower(): list(marks) for lane, marks in self.inflight_high_water.items()
                },
                "route_cache": len(self.router),
                "slots": list(self.shard_slots.slots),
                "slot_counts": dict(self.shard_slots.counts),
                "view_generation": self.router.view.generation,
                "links": self.links.stats() if self.links is not None else None,
                "control_latency": self.control_latency.to_dict(),
                "control_hops": self.control_hops.to_dict(),
                # RPCs delivered from route tables: receive -> last ROUTER send.
                "fanout_latency": self.fanout_latency.to_dict(),
                "rpc_fanout": {**self.fanout.counts, "rooms": len(self.fanout.rooms),
                               "pending_rooms": len(self.fanout.last_push),
                               "sent_by_shard": {str(k): v for k, v in self.fanout_sent.items()}},
                "slow_turns": self.slow_turns.to_dict(),
                "status_writes_replaced": self.status_writer.replaced,
                "status_write_failures": self.status_writer.failures,
            },
        )


def run_ingress(config_dict: dict, run_dir: str, heartbeat: Any = None) -> None:
    config = RelayConfig.from_dict(config_dict)
    setup_logging("ingress", config.log_level_console, config.log_json_console, config.log_dir)
    ingress = Ingress(config, run_dir, heartbeat)

    def handle_term(signum: int, frame: Any) -> None:
        ingress.stopping = True

    signal.signal(signal.SIGTERM, handle_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ingress.run()
