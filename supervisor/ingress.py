"""The ingress: the only owner of the client-facing ROUTER sockets.

It never parses payloads. Per poll it drains, in priority order, the egress
(shard -> client unicasts), the control ROUTER, then the transform ROUTER;
inbound messages go to the shard that owns their room (rendezvous hash,
cached). Unicasts leave through the control ROUTER with ROUTER_MANDATORY and
DONTWAIT: a full recipient gets its own ordered retry queue (bounded), and a
recipient that is gone is dropped and counted.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections import Counter, deque
from typing import Any

import zmq

from relay.cluster.placement import REMOTE, LocalRouter
from relay.cluster.view_file import ViewFile
from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints, tcp_bind
from relay.frames import HEADER, HEADER_SIZE, BatchBuilder
from relay.histogram import LatencyHistogram
from relay.logs import setup_logging
from relay.protocol.messages import Lane
from relay.status import write_status

log = logging.getLogger("relay.ingress")

BATCH = 1000
TRANSFORM_BATCH_WHEN_CONTROL_BUSY = 100
MAX_ROOM_BYTES = 255
# Messages per ingress->shard batch: bounds how much transform work a shard
# takes in one read, so control waiting in its own pipe is read soon after.
MAX_BATCH = 128
RETRY_PER_RECIPIENT = 1024
RETRY_TOTAL = 100_000
STATUS_INTERVAL = 1.0
CONTROL_IO_THREAD = 1  # ZMQ_AFFINITY bitmasks
TRANSFORM_IO_THREAD = 2


class Ingress:
    def __init__(self, config: RelayConfig, run_dir: str, heartbeat: Any = None) -> None:
        self.config = config
        self.endpoints = NodeEndpoints(run_dir)
        self.heartbeat = heartbeat
        self.view_file = ViewFile(run_dir)
        self.router = LocalRouter(self.view_file.view, self.view_file.node_id)
        self.stopping = False
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.retry: dict[bytes, deque[list[bytes]]] = {}
        self.retry_total = 0
        self._last_drop_log: dict[str, float] = {}
        self.control_latency = LatencyHistogram()

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
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control.setsockopt(zmq.SNDHWM, 10_000)
        self.control.bind(tcp_bind(cfg.host, cfg.control_port))
        self.transform.bind(tcp_bind(cfg.host, cfg.transform_port))
        self.egress = ctx.socket(zmq.PULL)
        self.egress.setsockopt(zmq.AFFINITY, CONTROL_IO_THREAD)
        self.egress.setsockopt(zmq.LINGER, 0)
        self.egress.setsockopt(zmq.RCVHWM, 0)
        self.egress.bind(self.endpoints.egress)
        # One PUSH per (lane, shard). Messages for a restarting shard wait
        # here (bounded) and are delivered when it is back; beyond the mark
        # they are dropped and counted.
        self.shard_pushes: dict[int, list[zmq.Socket]] = {}
        for lane, hwm in ((Lane.CONTROL, 50_000), (Lane.TRANSFORM, 10_000)):
            pushes = []
            for index in range(cfg.shards):
                push = ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.AFFINITY, CONTROL_IO_THREAD if lane == Lane.CONTROL else TRANSFORM_IO_THREAD)
                push.setsockopt(zmq.LINGER, 0)
                push.setsockopt(zmq.SNDHWM, hwm)
                push.connect(self.endpoints.shard_inbox(index, lane))
                pushes.append(push)
            self.shard_pushes[lane] = pushes
        self.batches = {
            lane: [BatchBuilder(lane) for _ in range(cfg.shards)] for lane in (Lane.CONTROL, Lane.TRANSFORM)
        }
        self.poller = zmq.Poller()
        self.poller.register(self.egress, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.transform, zmq.POLLIN)

    def _close_sockets(self) -> None:
        pushes = [p for lane_pushes in self.shard_pushes.values() for p in lane_pushes]
        for sock in (self.control, self.transform, self.egress, *pushes):
            sock.close()
        self.ctx.term()

    def _drop(self, reason: str, detail: str) -> None:
        self.drops[reason] += 1
        now = time.monotonic()
        if now - self._last_drop_log.get(reason, -1e18) >= 5.0:
            self._last_drop_log[reason] = now
            log.warning("dropped: %s: %s (total %d)", reason, detail, self.drops[reason])

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        self._open_sockets()
        log.info(
            "ingress ready: control %s:%d transform %s:%d -> %d shards",
            self.config.host, self.config.control_port, self.config.host,
            self.config.transform_port, self.config.shards,
        )
        next_status = 0.0
        try:
            while not self.stopping:
                timeout = 0 if self.retry else int(self.config.heartbeat_interval * 1000)
                events = dict(self.poller.poll(timeout))
                if self.egress in events:
                    self._pump_egress()
                if self.retry:
                    self._flush_retries()
                control_busy = False
                if self.control in events:
                    control_busy = self._pump_inbound(self.control, Lane.CONTROL, BATCH)
                if self.transform in events:
                    budget = TRANSFORM_BATCH_WHEN_CONTROL_BUSY if control_busy else BATCH
                    self._pump_inbound(self.transform, Lane.TRANSFORM, budget)
                now = time.monotonic()
                view = self.view_file.poll(now)
                if view is not None:
                    self.router.set_view(view)
                    log.info("routing by cluster view generation %d (%d nodes)",
                             view.generation, len(view.nodes))
                if self.heartbeat is not None:
                    self.heartbeat.value = now
                if now >= next_status:
                    next_status = now + STATUS_INTERVAL
                    self._write_status()
            # Stop intake; deliver what the shards already handed over.
            self._drain_egress_for_shutdown()
        finally:
            self._close_sockets()
            log.info("ingress stopped")

    def _pump_inbound(self, sock: zmq.Socket, lane: int, budget: int) -> bool:
        """Forward up to ``budget`` messages, batched per shard; True if more may wait."""
        recv = sock.recv_multipart
        route = self.router.route
        batches = self.batches[lane]
        now_ns = time.monotonic_ns
        received = 0
        more = True
        try:
            while received < budget:
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
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
                if len(identity) > 255:
                    self._drop("internal_frame", "routing id over 255 bytes")
                    continue
                shard = route(room)
                if shard == REMOTE:
                    # Owned by a shard of another node: cross-node forwarding
                    # is not built yet ("Cluster, part 2").
                    self._drop("remote_owner", f"room {room[:64]!r} is owned by another node")
                    continue
                batch = batches[shard]
                batch.add(now_ns(), identity, room, payload)
                if batch.count >= MAX_BATCH:
                    self._send_batch(lane, shard, batch)
        finally:
            self._flush_batches(lane)
            self.counts["received_control" if lane == Lane.CONTROL else "received_transform"] += received
        return more

    def _flush_batches(self, lane: int) -> None:
        for shard, batch in enumerate(self.batches[lane]):
            if batch.count:
                self._send_batch(lane, shard, batch)

    def _send_batch(self, lane: int, shard: int, batch: BatchBuilder) -> None:
        count = batch.count
        try:
            self.shard_pushes[lane][shard].send(batch.take(), zmq.NOBLOCK)
        except zmq.Again:
            self.drops["shard_queue_full"] += count - 1
            self._drop("shard_queue_full", f"shard-{shard} not keeping up ({count} messages)")

    def _pump_egress(self) -> None:
        recv = self.egress.recv_multipart
        for _ in range(BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 4 or len(frames[0]) != HEADER_SIZE:
                self._drop("internal_frame", f"{len(frames)} egress frames")
                continue
            _lane, _origin, recv_ns = HEADER.unpack(frames[0])
            room, payload = frames[1], frames[2]
            for identity in frames[3:]:
                self._send_unicast(identity, room, payload)
            if recv_ns:
                self.control_latency.observe((time.monotonic_ns() - recv_ns) / 1e9)

    def _send_unicast(self, identity: bytes, room: bytes, payload: bytes) -> None:
        queue = self.retry.get(identity)
        if queue is not None:
            # Keep per-recipient order: never overtake what is already waiting.
            self._queue_retry(identity, queue, [identity, room, payload])
            return
        try:
            self.control.send_multipart([identity, room, payload], zmq.NOBLOCK)
            self.counts["unicast_sent"] += 1
        except zmq.Again:
            self.counts["unicast_wouldblock"] += 1
            queue = self.retry[identity] = deque()
            self._queue_retry(identity, queue, [identity, room, payload])
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._drop("unicast_unreachable", "recipient disconnected")
            else:
                self._drop("unicast_error", str(exc))

    def _queue_retry(self, identity: bytes, queue: deque, frames: list[bytes]) -> None:
        if len(queue) >= RETRY_PER_RECIPIENT or self.retry_total >= RETRY_TOTAL:
            self._drop("unicast_retry_full", "slow recipient")
            return
        queue.append(frames)
        self.retry_total += 1

    def _flush_retries(self) -> None:
        for identity in list(self.retry):
            queue = self.retry[identity]
            while queue:
                try:
                    self.control.send_multipart(queue[0], zmq.NOBLOCK)
                    self.counts["unicast_sent"] += 1
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    self._drop("unicast_unreachable", "recipient disconnected while queued")
                    self.retry_total -= len(queue)
                    queue.clear()
                    break
                queue.popleft()
                self.retry_total -= 1
            if not queue:
                del self.retry[identity]

    def _drain_egress_for_shutdown(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not self.egress.poll(50):
                break
            self._pump_egress()
        self._flush_retries()

    def _write_status(self) -> None:
        write_status(
            self.endpoints.status_file("ingress"),
            {
                "pid": os.getpid(),
                "counts": dict(self.counts),
                "drops": dict(self.drops),
                "retry_recipients": len(self.retry),
                "retry_queued": self.retry_total,
                "route_cache": len(self.router),
                "view_generation": self.router.view.generation,
                "control_latency": self.control_latency.to_dict(),
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
