"""One load-generator process: many simulated clients, one zmq.Poller.

Timeline (all times are ``time.monotonic()``, which is system-wide on Linux,
so every worker and every server share one clock):

1. join: clients connect and say hello at ``join_rate``; a client starts its
   poses as soon as a DEVICE_ID_MAPPING lists its deviceId (hello re-sent
   every 5 s until then). The worker reports ``ready`` to the parent.
2. the parent answers ``go`` with the window ``[ws, we)`` and the end time.
   Until ``ws`` the run is warm-up (poses flow, nothing is counted).
3. window: room poses are counted, probes send RPCs and NV writes.
4. grace ``[we, end)``: poses continue, late probe receipts still count.

The parent talks to the worker through a Pipe whose fd is in the same poller.
"""

from __future__ import annotations

import math
import os
import random
import resource
import struct
import time
import traceback
import zlib
from array import array
from multiprocessing.connection import Connection
from typing import Any

import zmq

from bench import thread_usage
from relay.rpc_trace import RpcTrace

from . import wire
from .config import LoadConfig

# plain ints: the enum members make every flag operation a Python call
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
KIND_CTL = 0
KIND_SUB = 1
RPC_FUNCTION = b"lgProbe"
HELLO_RESEND_S = 5.0  # hello again if no mapping listed us by then
NV_PREFIX = b"lg."
_pack_u16 = struct.Struct("<H").pack_into
_pack_u32 = struct.Struct("<I").pack_into


class Client:
    __slots__ = (
        "gid",
        "room",
        "room_id",
        "device_id",
        "ctl",
        "xfm",
        "sub",
        "pose",
        "seq_off",
        "ts_off",
        "seq",
        "client_no",
        "hello_at",
        "first_hello_at",
        "nv_max",
        "observer",
        "member_at_ws",
    )

    def __init__(self, gid: int, room: int, room_id: bytes, device_id: bytes) -> None:
        self.gid = gid
        self.room = room
        self.room_id = room_id
        self.device_id = device_id
        self.ctl: zmq.Socket | None = None
        self.xfm: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        head = (gid % 97 * 10, 160, gid // 97 * 10)
        self.pose = bytearray(wire.encode_client_pose(device_id, wire.encode_pose_body(0, head)))
        self.seq_off, self.ts_off = wire.client_pose_offsets(device_id)
        self.seq = 0
        self.client_no: int | None = None
        self.hello_at = 0.0
        self.first_hello_at = 0.0
        self.nv_max = 0
        self.observer = False
        self.member_at_ws = False


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(cfg_dict: dict[str, Any], index: int, gids: list[int], conn: Connection) -> None:
    """Process entry point; reports ("ready", …), then ("result", …) or ("error", …)."""
    try:
        _Worker(LoadConfig(**cfg_dict), index, gids, conn).run()
    except Exception:  # report, do not hang the parent
        conn.send(("error", traceback.format_exc()))


class _Worker:
    def __init__(self, cfg: LoadConfig, index: int, gids: list[int], conn: Connection) -> None:
        self.cfg = cfg
        self.index = index
        self.conn = conn
        self.rng = random.Random(f"{cfg.tag}/{index}")
        cpr = cfg.clients_per_room
        self.clients = [Client(g, g // cpr, cfg.room_id(g // cpr), cfg.device_id(g)) for g in gids]
        seen: set[int] = set()
        for c in self.clients:
            if c.room not in seen:
                seen.add(c.room)
                c.observer = True
        self.probes = [c for c in self.clients if c.gid % cpr == 0]
        _raise_nofile()
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.ctx.set(zmq.MAX_SOCKETS, 60000)
        self.poller = zmq.Poller()
        self.poller.register(conn.fileno(), zmq.POLLIN)
        self.kinds: dict[int, tuple[int, Client, zmq.Socket]] = {}
        self.polled: list[tuple[int, Client, zmq.Socket]] = []
        self.sweep_drains = 0
        self.room_subs: dict[int, zmq.Socket] = {}
        # window / counters
        self.ws = float("inf")
        self.we = float("inf")
        self.end = float("inf")
        self.rp_recv = 0
        self.rp_complete = 0
        self.rp_other_topic = 0
        self.rp_min_count = 1 << 30
        self.fresh_us = array("q")
        self.rpc_lat_us = array("q")
        self.rpc_trace = RpcTrace.from_env(f"loadgen-{cfg.tag}-{index}")
        self.poll_ns = 0  # when the loop last entered poll (RPC trace)
        self.threads: list[dict[str, Any]] = []  # own threads over the window (bench/thread_usage.py)
        self.nv_lat_us = array("q")
        self.rpc_receipts: dict[int, int] = {}
        self.rpc_sent: list[tuple[int, int]] = []
        self.nv_writes: dict[int, int] = {}
        self.ctl_by_type: dict[int, int] = {}
        self.poses_sent = 0
        self.poses_sent_window = 0
        self.poses_dropped = 0
        self.poses_skipped = 0
        self.poses_dropped_window = 0
        self.poses_skipped_window = 0
        self.ctl_sent_window = 0
        self.recv_window = 0
        self.lag_us = array("q")
        self.join_ms = array("q")
        self.loops = 0

    # ---------------------------------------------------------------- sockets
    def _connect(self, c: Client) -> None:
        cfg = self.cfg
        ctl = self.ctx.socket(zmq.DEALER)
        ctl.setsockopt(zmq.SNDHWM, 1024)
        ctl.setsockopt(zmq.RCVHWM, 1024)
        ctl.connect(cfg.endpoint(cfg.control_port))
        xfm = self.ctx.socket(zmq.DEALER)
        xfm.setsockopt(zmq.SNDHWM, 2)
        xfm.connect(cfg.endpoint(cfg.transform_port))
        c.ctl, c.xfm = ctl, xfm
        self._register(ctl, KIND_CTL, c)
        if cfg.sub_mode == "room":
            sub = self.room_subs.get(c.room)
            if sub is None:
                sub = self._sub(c)
                self.room_subs[c.room] = sub
            c.sub = sub
        else:
            c.sub = self._sub(c)

    def _sub(self, c: Client) -> zmq.Socket:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 2)
        sub.setsockopt(zmq.SUBSCRIBE, c.room_id)
        sub.connect(self.cfg.endpoint(self.cfg.pub_port))
        self._register(sub, KIND_SUB, c)
        return sub

    def _register(self, sock: zmq.Socket, kind: int, c: Client) -> None:
        # The poller watches the socket's ZMQ_FD (an int), not the socket:
        # zmq_poll over raw fds is one poll(2) call, while polling zmq
        # sockets checks ZMQ_EVENTS of every socket (~0.7 ms per call for
        # 800 sockets vs ~0.05 ms). ZMQ_FD is edge-like, so every receive
        # drains until EAGAIN and every send on a polled socket is followed
        # by a ZMQ_EVENTS check (_after_send); a 0.25 s sweep counts any
        # wake-up that was missed anyway (counted as "sweep_drains"; it also
        # catches messages that arrived between poll and sweep, so it is an
        # upper bound).
        fd = sock.get(zmq.FD)
        self.poller.register(fd, zmq.POLLIN)
        self.kinds[fd] = (kind, c, sock)
        self.polled.append((kind, c, sock))

    def _after_send(self, c: Client) -> None:
        sock = c.ctl
        if sock is not None and sock.get(EVENTS) & POLLIN:
            self._on_ctl(sock, c, time.monotonic())

    def _hello(self, c: Client, now: float) -> None:
        assert c.ctl is not None
        c.ctl.send_multipart([c.room_id, wire.encode_hello(c.device_id)])
        c.hello_at = now
        if not c.first_hello_at:
            c.first_hello_at = now
        self._after_send(c)

    # --------------------------------------------------------------- receive
    def _on_ctl(self, sock: zmq.Socket, c: Client, now: float) -> None:
        counting = self.ws <= now
        # ZMQ_EVENTS both tells whether a whole message is queued and resets
        # the socket's ZMQ_FD edge; cheaper than ending on an EAGAIN exception.
        while sock.get(EVENTS) & POLLIN:
            frames = sock.recv_multipart()
            payload = frames[-1]
            if not payload:
                continue
            t = payload[0]
            self.ctl_by_type[t] = self.ctl_by_type.get(t, 0) + 1
            if counting and now < self.we:
                self.recv_window += 1
            if t == wire.MSG_RPC:
                parsed = wire.parse_rpc(payload)
                if parsed is None or parsed[0] != RPC_FUNCTION:
                    continue
                parts = parsed[1][2:-2].split(b'","')
                key = (int(parts[0]) << 20) | int(parts[1])
                recv_ns = time.monotonic_ns()
                self.rpc_lat_us.append((recv_ns - int(parts[2])) // 1000)
                if self.rpc_trace is not None:
                    self.rpc_trace.record(zlib.crc32(payload), int(parts[2]), self.poll_ns, int(now * 1e9), recv_ns)
                self.rpc_receipts[key] = self.rpc_receipts.get(key, 0) + 1
            elif t == wire.MSG_GLOBAL_VAR_SYNC or t == wire.MSG_GLOBAL_VAR_SET:
                for name, value in wire.iter_global_vars(payload):
                    if not name.startswith(NV_PREFIX):
                        continue
                    seq_b, _, ts_b = value.partition(b":")
                    try:
                        seq, sent_ns = int(seq_b), int(ts_b)
                    except ValueError:
                        continue
                    if seq > c.nv_max:  # first sight of a newer value at this member
                        c.nv_max = seq
                        self.nv_lat_us.append((time.monotonic_ns() - sent_ns) // 1000)
            elif t == wire.MSG_DEVICE_ID_MAPPING and c.client_no is None:
                no = wire.find_client_no(payload, c.device_id)
                if no is not None:
                    c.client_no = no
                    self.join_ms.append(int((now - c.first_hello_at) * 1000))

    def _on_sub(self, sock: zmq.Socket, c: Client, now: float) -> None:
        counting = self.ws <= now < self.we
        visible = self.cfg.clients_per_room
        observer = c.observer
        while sock.get(EVENTS) & POLLIN:
            frames = sock.recv_multipart()
            payload = frames[-1]
            if frames[0] != c.room_id or not payload or payload[0] != wire.MSG_ROOM_POSE:
                self.rp_other_topic += 1
                continue
            if not counting:
                continue
            self.recv_window += 1
            self.rp_recv += 1
            n = payload[2]
            count = payload[11 + n] | (payload[12 + n] << 8)
            if count >= visible:
                self.rp_complete += 1
            elif count < self.rp_min_count:
                self.rp_min_count = count
            if observer and count:
                stamps = wire.room_pose_timestamps(payload, 13 + n, count)
                if stamps:
                    now_us = time.monotonic_ns() // 1000
                    self.fresh_us.append(min((now_us - s) & 0xFFFFFFFF for s in stamps))

    # ------------------------------------------------------------------ send
    def _send_bucket(self, bucket: list[Client], counting: bool) -> None:
        ts = (time.monotonic_ns() // 1000) & 0xFFFFFFFF
        sent = 0
        for c in bucket:
            if c.client_no is None:
                continue
            buf = c.pose
            c.seq = (c.seq + 1) & 0xFFFF
            _pack_u16(buf, c.seq_off, c.seq)
            _pack_u32(buf, c.ts_off, ts)
            xfm = c.xfm
            try:
                # frames [room_id, payload]; HWM is checked on the first part,
                # so a full pipe refuses the whole message (Unity drops too)
                xfm.send(c.room_id, NOBLOCK_MORE)  # type: ignore[union-attr]
            except zmq.Again:
                self.poses_dropped += 1
                if counting:
                    self.poses_dropped_window += 1
                continue
            xfm.send(buf, NOBLOCK)  # type: ignore[union-attr]
            sent += 1
        self.poses_sent += sent
        if counting:
            self.poses_sent_window += sent

    def _probe_gap(self, rate: float) -> float:
        # Jittered (uniform 0.5-1.5 periods, same mean rate): a probe period
        # that divides the server's 10 Hz broadcast period would otherwise
        # sample one fixed phase of it per run, and whether that phase sits on
        # a room-pose fan-out burst would decide the run's p99.
        return self.rng.uniform(0.5, 1.5) / rate

    def _send_probes(self, now: float, state: dict[int, list[float]]) -> float:
        """Send due probe messages; return the next probe due time."""
        cfg = self.cfg
        nxt = float("inf")
        for c in self.probes:
            times = state[c.gid]
            if c.client_no is None:
                continue
            if cfg.rpc_hz > 0 and times[0] <= now:
                seq = int(times[2]) + 1
                times[2] = seq
                args = b'["%d","%d","%d"]' % (c.gid, seq, time.monotonic_ns())
                c.ctl.send_multipart(  # type: ignore[union-attr]
                    [c.room_id, wire.encode_rpc(c.client_no, c.device_id, RPC_FUNCTION, args)]
                )
                self.rpc_sent.append(((c.gid << 20) | seq, c.room))
                self.ctl_sent_window += 1
                times[0] += self._probe_gap(cfg.rpc_hz)
                self._after_send(c)
            if cfg.nv_hz > 0 and times[1] <= now:
                seq = int(times[3]) + 1
                times[3] = seq
                value = b"%d:%d" % (seq, time.monotonic_ns())
                name = NV_PREFIX + cfg.tag.encode()
                c.ctl.send_multipart(  # type: ignore[union-attr]
                    [c.room_id, wire.encode_global_var_set(c.client_no, c.device_id, name, value)]
                )
                self.nv_writes[c.room] = seq
                self.ctl_sent_window += 1
                times[1] += self._probe_gap(cfg.nv_hz)
                self._after_send(c)
            nxt = min(nxt, times[0] if cfg.rpc_hz > 0 else nxt, times[1] if cfg.nv_hz > 0 else nxt)
        return nxt

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        cfg = self.cfg
        clients = self.clients
        period = 1.0 / cfg.pose_hz
        # one bucket per client at most: fewer wake-ups for small runs
        tick = max(min(cfg.tick, period), period / max(1, len(clients)))
        nb = max(1, round(period / tick))
        tick = period / nb
        buckets: list[list[Client]] = [[] for _ in range(nb)]
        for c in clients:
            buckets[(c.gid * 7919) % nb].append(c)
        bucket_sizes = [len(b) for b in buckets]

        t_start = time.monotonic()
        join_deadline = t_start + cfg.join_timeout
        next_hello = 0
        ready_sent = False
        next_tick = t_start
        bucket_i = 0
        probe_next = float("inf")
        probe_state: dict[int, list[float]] = {}
        cpu_ws = cpu_we = 0.0
        threads_ws: thread_usage.ThreadSample = {}
        phase = 0  # 0 join/warm-up, 1 window, 2 grace
        poll = self.poller.poll
        kinds = self.kinds
        conn_fd = self.conn.fileno()
        unmapped = len(clients)
        last_resend_check = t_start
        last_sweep = t_start

        while True:
            now = time.monotonic()
            # ---- joins (paced) and hello re-sends
            if next_hello < len(clients):
                allowed = min(len(clients), int((now - t_start) * cfg.join_rate) + 1)
                while next_hello < allowed:
                    c = clients[next_hello]
                    self._connect(c)
                    self._hello(c, now)
                    next_hello += 1
            if unmapped and now - last_resend_check > 0.25:
                last_resend_check = now
                unmapped = 0
                for c in clients[:next_hello]:
                    if c.client_no is None:
                        unmapped += 1
                        if now - c.hello_at > HELLO_RESEND_S:
                            self._hello(c, now)
                unmapped += len(clients) - next_hello
            if not ready_sent and next_hello == len(clients) and (
                unmapped == 0 or now > join_deadline
            ):
                joined = sum(1 for c in clients if c.client_no is not None)
                self.conn.send(("ready", {"joined": joined, "clients": len(clients)}))
                ready_sent = True

            if now - last_sweep > 0.25:
                last_sweep = now
                self._sweep(now)

            # ---- window bookkeeping
            if phase == 0 and now >= self.ws:
                phase = 1
                cpu_ws = _cpu()
                threads_ws = thread_usage.sample([os.getpid()])
                for c in clients:
                    c.member_at_ws = c.client_no is not None
                for c in self.probes:
                    off = (c.room % max(1, cfg.rooms)) / max(1, cfg.rooms)
                    probe_state[c.gid] = [
                        self.ws + off / cfg.rpc_hz if cfg.rpc_hz > 0 else float("inf"),
                        self.ws + (off + 0.5) / cfg.nv_hz if cfg.nv_hz > 0 else float("inf"),
                        0.0,
                        0.0,
                    ]
                probe_next = self.ws
            if phase == 1 and now >= self.we:
                phase = 2
                cpu_we = _cpu()
                self.threads = thread_usage.diff(threads_ws, thread_usage.sample([os.getpid()]), self.we - self.ws,
                                                 {os.getpid(): f"loadgen-{self.index}"})
                probe_next = float("inf")
            if now >= self.end:
                break

            # ---- poses
            if now >= next_tick:
                behind = now - next_tick
                if behind > period:
                    skip = int(behind / tick)
                    for j in range(skip):
                        n_skip = bucket_sizes[(bucket_i + j) % nb]
                        self.poses_skipped += n_skip
                        if phase == 1:
                            self.poses_skipped_window += n_skip
                    bucket_i = (bucket_i + skip) % nb
                    next_tick += skip * tick
                counting = phase == 1
                while next_tick <= now:
                    if counting:
                        self.lag_us.append(int((now - next_tick) * 1e6))
                    self._send_bucket(buckets[bucket_i], counting)
                    bucket_i = (bucket_i + 1) % nb
                    next_tick += tick
            # ---- probes
            if phase == 1 and now >= probe_next:
                probe_next = self._send_probes(now, probe_state)

            # ---- wait for input or the next timer
            deadline = min(next_tick, probe_next, self.end, (self.ws, self.we, self.end)[phase])
            if next_hello < len(clients):
                deadline = min(deadline, now + 0.005)
            # zmq rounds the timeout down to whole ms: round up instead of spinning
            timeout = max(0, math.ceil((deadline - time.monotonic()) * 1000.0))
            self.poll_ns = time.monotonic_ns()
            events = poll(timeout)
            self.loops += 1
            if not events:
                continue
            now = time.monotonic()
            for fd, _ in events:
                if fd == conn_fd:
                    self._on_parent()
                    continue
                kind, c, sock = kinds[fd]
                if kind == KIND_SUB:
                    self._on_sub(sock, c, now)
                else:
                    self._on_ctl(sock, c, now)

        if self.rpc_trace is not None:
            self.rpc_trace.write()
        self.conn.send(("result", self._result(cpu_ws, cpu_we, len(clients))))
        for _, _, sock in self.polled:
            sock.close(0)
        for c in clients:
            if c.xfm is not None:
                c.xfm.close(0)
        self.ctx.term()

    def _sweep(self, now: float) -> None:
        for kind, c, sock in self.polled:
            if sock.get(EVENTS) & POLLIN:
                self.sweep_drains += 1
                if kind == KIND_SUB:
                    self._on_sub(sock, c, now)
                else:
                    self._on_ctl(sock, c, now)

    def _on_parent(self) -> None:
        msg = self.conn.recv()
        if msg[0] == "go":
            _, self.ws, self.we, self.end = msg
        elif msg[0] == "stop":
            self.end = 0.0

    def _result(self, cpu_ws: float, cpu_we: float, n: int) -> dict[str, Any]:
        members: dict[int, int] = {}
        nv_max: dict[int, list[int]] = {}
        for c in self.clients:
            if c.member_at_ws:
                members[c.room] = members.get(c.room, 0) + 1
                nv_max.setdefault(c.room, []).append(c.nv_max)
        return {
            "worker": self.index,
            "clients": n,
            "joined": sum(1 for c in self.clients if c.client_no is not None),
            "members_at_ws": members,
            "join_ms": list(self.join_ms),
            "subs": len(self.clients) if self.cfg.sub_mode == "client" else len(self.room_subs),
            "poses_sent": self.poses_sent,
            "poses_sent_window": self.poses_sent_window,
            "poses_dropped_hwm": self.poses_dropped,
            "poses_skipped": self.poses_skipped,
            "poses_dropped_hwm_window": self.poses_dropped_window,
            "poses_skipped_window": self.poses_skipped_window,
            "lag_us": list(self.lag_us),
            "rp_recv": self.rp_recv,
            "rp_complete": self.rp_complete,
            "rp_other_topic": self.rp_other_topic,
            "rp_min_count": self.rp_min_count,
            "fresh_us": list(self.fresh_us),
            "rpc_sent": self.rpc_sent,
            "rpc_receipts": self.rpc_receipts,
            "rpc_lat_us": list(self.rpc_lat_us),
            "nv_writes": self.nv_writes,
            "nv_max": nv_max,
            "nv_lat_us": list(self.nv_lat_us),
            "ctl_by_type": self.ctl_by_type,
            "ctl_sent_window": self.ctl_sent_window,
            "recv_window": self.recv_window,
            "cpu_window_s": cpu_we - cpu_ws,
            "cpu_total_s": _cpu(),
            "loops": self.loops,
            "sweep_drains": self.sweep_drains,
            "threads": self.threads,
        }
