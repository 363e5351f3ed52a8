"""Soak: a relay node under churn for N minutes, watched for leaks, bound
violations, lost acknowledged state and unexpected deaths.

    make soak                       # 30 minutes (SOAK_MINUTES=1 for the CI smoke)
    .venv/bin/python -m bench.soak --minutes 30 [--shards 2] [--kill-every 240]

It starts ``relayctl start --shards 2`` on free loopback ports with its own
run and data directories, then runs, all at once:

- ledger rooms: a writer sets global and client variables ("seq:<n>", a
  counter per name), a watcher in the same room records every value whose
  sync it received -- the ledger of acknowledged values;
- REST writes into the ledger rooms (a 200 is an acknowledgement too);
- churn: clients joining and leaving rooms that appear and empty (they
  expire 60 s after their last member left), sending poses and RPCs;
- a client that never reads its control socket and keeps being sent to;
- bursts of malformed input (bad frames, bad payloads, refused writes, a
  frame over max_message_bytes);
- one shard killed with SIGKILL every ``--kill-every`` seconds.

Every ``--sample-every`` seconds it records, per process, RSS and open file
descriptors (/proc), and from the status files the queue lengths and
message counters; the metrics endpoint must answer. At the end it re-reads
every ledger value over REST and through a fresh client.

It writes ``bench/results/soak-<date>-<N>m.{csv,json,png}`` and exits 1 if,
after the warm-up, RSS or descriptors of a process grow faster than the
stated slopes, any queue exceeded its bound, any acknowledged value is
missing or older than acknowledged, or any process died that the soak did
not kill.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import zmq

from bench.servers import free_ports as bench_free_ports
from relay.config import RelayConfig
from relay.protocol import decode, encode
from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    ClientHello,
    ClientPose,
    ClientVarSet,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSet,
    GlobalVarSync,
    PlacedRotation,
    PoseBody,
    Rpc,
)
from supervisor import ingress as ingress_bounds

# ---------------------------------------------------------------- criteria

# Growth allowed after the warm-up, per process lifetime (a killed shard's
# successor is a new series). A leak of one small object per message at the
# soak's rates grows by megabytes per minute; allocator noise does not.
RSS_SLOPE_LIMIT_KIB_PER_MIN = 512.0
FD_SLOPE_LIMIT_PER_MIN = 0.5
# A process's first minute (rooms reloaded, caches filling) is not a trend.
SERIES_WARMUP_S = 60.0
MIN_SERIES_SAMPLES = 6

LEDGER_ROOMS = 4
LEDGER_NAMES = 4
CHURN_ROOMS = 6
CHURN_DEVICES = 36
CHURN_ROOM_EPOCH_S = 300.0  # churn rooms get new names every 5 minutes
EMPTY_ROOM_EXPIRY_S = 60.0
MALFORMED_EVERY_S = 45.0
STUCK_ROOM = b"soak-stuck"
DEFAULTS = RelayConfig()
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ports:
    control: int
    pub: int
    transform: int
    rest: int
    metrics: int


def free_ports() -> Ports:
    """The bench's consecutive control/pub/transform ports and a REST port
    (bench/servers.py), plus a free metrics port distinct from all four."""
    base = bench_free_ports()
    taken = {base.control, base.pub, base.transform, base.rest}
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            metrics = sock.getsockname()[1]
        if metrics not in taken:
            return Ports(base.control, base.pub, base.transform, base.rest, metrics)
    raise RuntimeError("no free ports")


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seq_of(value: str | None) -> int:
    if not value or not value.startswith("seq:"):
        return -1
    try:
        return int(value[4:])
    except ValueError:
        return -1


# ------------------------------------------------------------------ clients


class Client:
    """A protocol peer on one thread: control DEALER (+ optional transform DEALER)."""

    def __init__(self, ctx: zmq.Context, ports: Any, room: bytes, device: str, transform: bool = False) -> None:
        self.room = room
        self.device = device
        self.client_no: int | None = None
        self.control = ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(f"tcp://127.0.0.1:{ports.control}")
        self.transform = None
        if transform:
            self.transform = ctx.socket(zmq.DEALER)
            self.transform.setsockopt(zmq.LINGER, 0)
            self.transform.setsockopt(zmq.SNDHWM, 2)
            self.transform.connect(f"tcp://127.0.0.1:{ports.transform}")
        self.pose_seq = 0

    def send(self, msg: Any) -> None:
        try:
            self.control.send_multipart([self.room, encode(msg)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # a full pipe is the client's problem, as with Unity

    def hello(self) -> None:
        self.send(ClientHello(8, 0, self.device))

    def pose(self) -> None:
        if self.transform is None:
            return
        self.pose_seq = (self.pose_seq + 1) & 0xFFFF
        body = PoseBody(self.pose_seq, FLAG_HEAD_VALID, 0x1F, head=PlacedRotation(self.pose_seq, 150, 0, 0xE0080200))
        try:
            self.transform.send_multipart([self.room, encode(ClientPose(8, self.device, body))], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def drain(self) -> list[Any]:
        out = []
        while True:
            try:
                _room, payload = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            except ValueError:
                continue
            msg = decode(payload)
            if isinstance(msg, DeviceIdMapping) and self.client_no is None:
                for entry in msg.mappings:
                    if entry.device_id == self.device:
                        self.client_no = entry.client_no
            out.append(msg)

    def close(self) -> None:
        self.control.close()
        if self.transform is not None:
            self.transform.close()


# ------------------------------------------------------------------- ledger


@dataclass
class Ledger:
    """Acknowledged values: (room, kind, name[, device]) -> highest seq acknowledged."""

    acked: dict[tuple, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, key: tuple, value: str | None) -> None:
        seq = seq_of(value)
        if seq < 0:
            return
        with self.lock:
            if seq > self.acked.get(key, -1):
                self.acked[key] = seq


class Load:
    """Every traffic source of the soak, each on its own thread."""

    def __init__(self, ports: Any, rest_port: int, ledger: Ledger, stop: threading.Event) -> None:
        self.ports = ports
        self.rest_port = rest_port
        self.ledger = ledger
        self.stop = stop
        self.ctx = zmq.Context()
        self.counts: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.writers: dict[bytes, Client] = {}

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._guard, args=(fn,), name=fn.__name__, daemon=True)
            for fn in (self.ledger_rooms, self.rest_writes, self.churn, self.stuck_reader, self.malformed)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # a load bug must fail the soak, not hide in a thread
            self.errors.append(f"{fn.__name__}: {exc!r}")
            self.stop.set()

    # -- ledger rooms: writer + watcher per room
    def ledger_rooms(self) -> None:
        pairs = []
        for k in range(LEDGER_ROOMS):
            room = f"soak-ledger-{k}".encode()
            writer = Client(self.ctx, self.ports, room, f"ledger-writer-{k}")
            watcher = Client(self.ctx, self.ports, room, f"ledger-watcher-{k}")
            writer.hello()
            watcher.hello()
            pairs.append((room, writer, watcher))
            self.writers[room] = writer
        counters: dict[tuple, int] = defaultdict(int)
        next_hello = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_hello:
                next_hello = now + 1.0
                for _room, writer, watcher in pairs:
                    watcher.hello()  # keep-alive (BEHAVIOR §6)
                    if writer.client_no is None:
                        writer.hello()
            for room, writer, watcher in pairs:
                name = f"g{random.randrange(LEDGER_NAMES)}"
                counters[(room, name)] += 1
                writer.send(GlobalVarSet(0, writer.device, name, f"seq:{counters[(room, name)]}"))
                if writer.client_no is not None:
                    cname = f"c{random.randrange(LEDGER_NAMES)}"
                    counters[(room, cname)] += 1
                    writer.send(ClientVarSet(0, writer.device, writer.client_no, cname, f"seq:{counters[(room, cname)]}"))
                self.counts["nv_writes"] += 2
                writer.drain()
                for msg in watcher.drain():
                    if isinstance(msg, GlobalVarSync):
                        for var in msg.variables:
                            self.ledger.ack((room.decode(), "global", var.name), var.value)
                    elif isinstance(msg, ClientVarSync) and writer.client_no is not None:
                        for client in msg.clients:
                            if client.client_no == writer.client_no:
                                for var in client.variables:
                                    self.ledger.ack((room.decode(), "client", var.name, writer.device), var.value)
            time.sleep(0.25)
        for _room, writer, watcher in pairs:
            writer.close()
            watcher.close()

    # -- REST: global writes into the ledger rooms
    def rest_writes(self) -> None:
        n = 0
        while not self.stop.wait(1.0):
            n += 1
            room = f"soak-ledger-{n % LEDGER_ROOMS}"
            name = f"rest{n % 3}"
            body = json.dumps({"variables": {name: f"seq:{n}"}}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.rest_port}/v1/rooms/{room}/global-variables",
                data=body, headers={"Content-Type": "application/json"}, method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        # A 200 means journaled (the shard writes before replying).
                        self.ledger.ack((room, "global", name), f"seq:{n}")
                        self.counts["rest_ok"] += 1
            except (urllib.error.URLError, OSError):
                self.counts["rest_failed"] += 1  # 503 while a shard restarts: not acknowledged

    # -- churn: clients join and leave rooms that appear and empty
    def churn(self) -> None:
        live: dict[str, Client] = {}
        started = time.monotonic()
        next_action = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            epoch = int((now - started) // CHURN_ROOM_EPOCH_S)
            if now >= next_action:
                next_action = now + 0.5
                if len(live) < CHURN_DEVICES // 2 or random.random() < 0.5:
                    device = f"churn-{random.randrange(CHURN_DEVICES)}"
                    if device not in live:
                        room = f"soak-churn-{epoch}-{random.randrange(CHURN_ROOMS)}".encode()
                        client = live[device] = Client(self.ctx, self.ports, room, device, transform=True)
                        client.hello()
                        self.counts["joins"] += 1
                if live and random.random() < 0.45:
                    device = random.choice(list(live))
                    live.pop(device).close()  # leaves by going silent (no explicit leave exists)
                    self.counts["leaves"] += 1
                for client in random.sample(list(live.values()), min(3, len(live))):
                    client.send(Rpc(0, client.device, (), "soakPing", '["churn"]'))
                    self.counts["rpcs"] += 1
            for client in live.values():
                client.pose()
                client.drain()
            self.counts["poses"] += len(live)
            time.sleep(0.1)
        for client in live.values():
            client.close()

    # -- a client that never reads
    def stuck_reader(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.connect(f"tcp://127.0.0.1:{self.ports.control}")
        sock.send_multipart([STUCK_ROOM, encode(ClientHello(8, 0, "soak-stuck"))])
        rpc = encode(Rpc(0, "soak-stuck", (), "stuck", '["' + "s" * 2000 + '"]'))
        # 100 x 2 KB/s echoed to itself only: its pipe and the kernel buffers
        # fill within a minute, then its retry queue fills, stalls and is dropped.
        while not self.stop.wait(0.05):
            for _ in range(5):
                try:
                    sock.send_multipart([STUCK_ROOM, rpc], zmq.NOBLOCK)
                    self.counts["stuck_rpcs"] += 1
                except zmq.Again:
                    pass
        sock.close()

    # -- malformed bursts
    def malformed(self) -> None:
        limit = DEFAULTS.max_message_bytes
        while not self.stop.wait(MALFORMED_EVERY_S):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{self.ports.control}")
            room = b"soak-malformed"
            burst = [
                [b"one-frame-only"],
                [room, b""],
                [room, b"\xff\x00garbage"],
                [room, bytes([19, 7, 0, 11]) + b"bad-version"],  # protocol version 7
                [b"\xff\xfe", encode(ClientHello(8, 0, "bad-room"))],
                [room, encode(ClientVarSet(0, "soak-malformed", 999, "v", "x"))],  # unmapped target
            ]
            for _ in range(40):
                for frames in burst:
                    try:
                        sock.send_multipart(frames, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
            self.counts["malformed"] += 40 * len(burst)
            time.sleep(0.2)
            try:
                sock.send_multipart([room, b"\x03" + bytes(limit)], zmq.NOBLOCK)  # disconnects the peer
            except zmq.Again:
                pass
            time.sleep(0.2)
            sock.close()


# ------------------------------------------------------------------- /proc


def proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------- node


class Node:
    def __init__(self, shards: int, workdir: Path) -> None:
        self.shards = shards
        self.ports = free_ports()
        self.metrics_port = self.ports.metrics
        self.run_dir = workdir / "run"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "relay.log"
        config = workdir / "soak.toml"
        # Churn rooms must actually expire during the soak (room deletion is
        # part of what is watched); everything else is the default.
        config.write_text(f"empty_room_expiry_time = {EMPTY_ROOM_EXPIRY_S}\n")
        self.argv = [
            sys.executable, "-m", "supervisor.cli", "start", "--shards", str(shards), "--host", "127.0.0.1",
            "--control-port", str(self.ports.control), "--transform-port", str(self.ports.transform),
            "--pub-port", str(self.ports.pub), "--rest-api-port", str(self.ports.rest),
            "--metrics-port", str(self.metrics_port), "--no-server-discovery",
            "--run-dir", str(self.run_dir), "--data-dir", str(self.data_dir), "--config", str(config),
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.state()
            children = state.get("children") or {}
            if children and all(c.get("alive") for c in children.values()) and self.metrics_ok():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited during start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError("relay did not become ready in 30 s")

    def state(self) -> dict[str, Any]:
        return read_json(self.run_dir / "supervisor.json")

    def status(self, child: str) -> dict[str, Any]:
        return read_json(self.run_dir / f"status-{child}.json")

    def metrics_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                return r.status == 200 and b"relay_child_up" in r.read()
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "stop", "--run-dir", str(self.run_dir), "--timeout", "15"],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        ).returncode
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left behind
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return code if code != 0 else self.proc.returncode


# ---------------------------------------------------------------- sampling

PROCESSES = ("supervisor", "ingress", "proxy", "rest")


def sample(node: Node, started: float, shards: int) -> tuple[dict[str, Any], list[str]]:
    """One CSV row and the bound violations seen in it."""
    now = time.monotonic()
    state = node.state()
    children = state.get("children") or {}
    row: dict[str, Any] = {"t_s": round(now - started, 1)}
    pids = {"supervisor": node.proc.pid if node.proc else None}
    pids.update({name: child.get("pid") for name, child in children.items()})
    for name in (*PROCESSES, *(f"shard-{k}" for k in range(shards))):
        pid = pids.get(name)
        row[f"{name}_pid"] = pid
        row[f"{name}_rss_kib"] = proc_rss_kib(pid) if pid else None
        row[f"{name}_fds"] = proc_fds(pid) if pid else None
        row[f"{name}_restarts"] = (children.get(name) or {}).get("restarts", 0) if name != "supervisor" else 0
    violations = []
    ingress = node.status("ingress")
    counts = ingress.get("counts") or {}
    row["rx_control"] = counts.get("received_control", 0)
    row["rx_transform"] = counts.get("received_transform", 0)
    row["unicast_sent"] = counts.get("unicast_sent", 0)
    row["ingress_drops"] = sum((ingress.get("drops") or {}).values())
    row["retry_queued"] = ingress.get("retry_queued", 0)
    row["retry_queued_bytes"] = ingress.get("retry_queued_bytes", 0)
    if row["retry_queued"] > ingress_bounds.RETRY_TOTAL or row["retry_queued_bytes"] > ingress_bounds.RETRY_BYTES_TOTAL:
        violations.append(f"retry queue {row['retry_queued']} msgs / {row['retry_queued_bytes']} B over its bound")
    for lane, (max_messages, max_bytes) in ingress_bounds.INFLIGHT_LIMITS.items():
        name = lane.name.lower()
        inflight = (ingress.get("inflight") or {}).get(name) or [0]
        inflight_bytes = (ingress.get("inflight_bytes") or {}).get(name) or [0]
        row[f"inflight_{name}_max"] = max(inflight)
        if max(inflight) > max_messages or max(inflight_bytes) > max_bytes:
            violations.append(f"in-flight {name} {inflight} msgs / {inflight_bytes} B over its bound")
    ctrl_max = pending_max = 0
    shard_drops = 0
    for k in range(shards):
        st = node.status(f"shard-{k}")
        ctrl_max = max(ctrl_max, st.get("ctrl_queue_depth", 0))
        pending = st.get("pending_broadcasts", 0)
        pending_max = max(pending_max, pending)
        shard_drops += sum((st.get("drops") or {}).values())
        row[f"shard-{k}_rooms"] = st.get("rooms", 0)
        row[f"shard-{k}_clients"] = st.get("clients", 0)
        if st.get("ctrl_queue_depth", 0) > DEFAULTS.ctrl_queue_max:
            violations.append(f"shard-{k} control queue {st.get('ctrl_queue_depth')} over its bound")
        if pending > 2 * max(1, st.get("rooms", 0)):
            violations.append(f"shard-{k} pending broadcasts {pending} > 2 x rooms")
    row["ctrl_queue_max"] = ctrl_max
    row["pending_broadcasts_max"] = pending_max
    row["shard_drops"] = shard_drops
    row["metrics_ok"] = int(node.metrics_ok())
    return row, violations


def slope_per_min(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 60.0


def trends(rows: list[dict[str, Any]], warmup_s: float, shards: int) -> list[dict[str, Any]]:
    """Slopes of RSS and descriptors per process lifetime, after the warm-ups."""
    out = []
    for name in (*PROCESSES, *(f"shard-{k}" for k in range(shards))):
        by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row.get(f"{name}_pid") and row.get(f"{name}_rss_kib") is not None:
                by_pid[row[f"{name}_pid"]].append(row)
        for pid, series in by_pid.items():
            born = series[0]["t_s"]
            kept = [r for r in series if r["t_s"] >= max(warmup_s, born + SERIES_WARMUP_S)]
            entry: dict[str, Any] = {"process": name, "pid": pid, "samples": len(kept)}
            if len(kept) >= MIN_SERIES_SAMPLES:
                entry["rss_kib_per_min"] = round(slope_per_min([(r["t_s"], r[f"{name}_rss_kib"]) for r in kept]), 1)
                entry["fds_per_min"] = round(slope_per_min([(r["t_s"], r[f"{name}_fds"]) for r in kept]), 3)
                entry["rss_kib_last"] = kept[-1][f"{name}_rss_kib"]
                entry["fds_last"] = kept[-1][f"{name}_fds"]
            out.append(entry)
    return out


# ------------------------------------------------------------ final checks


def verify_ledger(node: Node, ledger: Ledger, writers: dict[bytes, Client]) -> tuple[int, list[str]]:
    """Every acknowledged value must be there, at least as new, over REST and on the wire."""
    lost = []
    with ledger.lock:
        acked = dict(ledger.acked)
    base = f"http://127.0.0.1:{node.ports.rest}/v1/rooms"
    for key, seq in sorted(acked.items()):
        room, kind, name = key[0], key[1], key[2]
        if kind == "global":
            url = f"{base}/{room}/global-variables/{name}"
        else:
            url = f"{base}/{room}/devices/{key[3]}/client-variables/{name}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                value = json.loads(response.read()).get("value")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            value = f"<{exc}>"
        if seq_of(value) < seq:
            lost.append(f"REST {key}: acknowledged seq {seq}, found {value!r}")
    # A fresh client of each ledger room gets the full snapshot on joining.
    ctx = zmq.Context()
    try:
        for k in range(LEDGER_ROOMS):
            room = f"soak-ledger-{k}"
            fresh = Client(ctx, node.ports, room.encode(), f"soak-fresh-{k}")
            fresh.hello()
            globals_seen: dict[str, str] = {}
            client_seen: dict[int, dict[str, str]] = {}
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if fresh.control.poll(200):
                    for msg in fresh.drain():
                        if isinstance(msg, GlobalVarSync):
                            globals_seen.update({v.name: v.value for v in msg.variables})
                        elif isinstance(msg, ClientVarSync):
                            for c in msg.clients:
                                client_seen[c.client_no] = {v.name: v.value for v in c.variables}
                elif fresh.client_no is not None and globals_seen:
                    break
            writer = writers.get(room.encode())
            for key, seq in acked.items():
                if key[0] != room:
                    continue
                if key[1] == "global":
                    value = globals_seen.get(key[2])
                elif writer is not None and writer.client_no is not None:
                    value = client_seen.get(writer.client_no, {}).get(key[2])
                else:
                    continue
                if seq_of(value) < seq:
                    lost.append(f"fresh client {key}: acknowledged seq {seq}, snapshot has {value!r}")
            fresh.close()
    finally:
        ctx.term()
    return len(acked), lost


# -------------------------------------------------------------------- plot


def plot(rows: list[dict[str, Any]], kills: list[dict[str, Any]], shards: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    names = (*PROCESSES, *(f"shard-{k}" for k in range(shards)))
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    nan = float("nan")  # a sample taken while a killed shard restarts: a gap, not a zero
    for name in names:
        axes[0].plot(t, [r[f"{name}_rss_kib"] / 1024 if r[f"{name}_rss_kib"] else nan for r in rows], label=name)
        axes[1].plot(t, [r[f"{name}_fds"] if r[f"{name}_fds"] else nan for r in rows], label=name)
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [r["retry_queued"] for r in rows], label="ingress retry queue (msgs)")
    axes[2].plot(t, [r["inflight_control_max"] for r in rows], label="in flight to a shard, control (max)")
    axes[2].plot(t, [r["inflight_transform_max"] for r in rows], label="in flight to a shard, transform (max)")
    axes[2].plot(t, [r["ctrl_queue_max"] for r in rows], label="shard control queue (max)")
    axes[2].set_ylabel("queue length")
    rates = [0.0] + [
        (b["rx_control"] + b["rx_transform"] - a["rx_control"] - a["rx_transform"]) / max(1e-9, b["t_s"] - a["t_s"])
        for a, b in zip(rows, rows[1:], strict=False)
    ]
    axes[3].plot(t, [max(0.0, r) for r in rates], label="messages received/s (ingress)")
    drops = [0.0] + [
        (b["ingress_drops"] + b["shard_drops"] - a["ingress_drops"] - a["shard_drops"]) / max(1e-9, b["t_s"] - a["t_s"])
        for a, b in zip(rows, rows[1:], strict=False)
    ]
    axes[3].plot(t, [max(0.0, d) for d in drops], label="drops/s (all reasons)")
    axes[3].set_ylabel("per second")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        for kill in kills:
            ax.axvline(kill["t_s"] / 60, color="red", alpha=0.3, linewidth=1)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_title(title + " (red lines: SIGKILL of a shard)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(stem: Path) -> int:
    summary = json.loads(Path(f"{stem}.json").read_text())
    with open(f"{stem}.csv", newline="") as fh:
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]
    plot(rows, summary["kills"], summary["shards"], Path(f"{stem}.png"),
         f"soak {summary['minutes']:g} min, {summary['shards']} shards")
    return 0


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--kill-every", type=float, default=None, help="seconds between shard kills (default 240, or 40%% of a short run)")
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before trends count (default 5 min, or 1/3 of a short run)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", type=Path, metavar="STEM", help="only redraw STEM.png from STEM.csv and STEM.json")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    duration = args.minutes * 60
    kill_every = args.kill_every or (240.0 if duration >= 600 else duration * 0.4)
    warmup = args.warmup if args.warmup is not None else (300.0 if duration >= 1200 else duration / 3)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak-{date.today().isoformat()}-{args.minutes:g}m"

    workdir = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    node = Node(args.shards, workdir)
    log(f"relay on control {node.ports.control}, REST {node.ports.rest}, metrics {node.metrics_port}; "
        f"{args.minutes:g} min, kill every {kill_every:.0f} s, warm-up {warmup:.0f} s; work dir {workdir}")
    # SIGTERM (make interrupted, CI timeout) ends the run like Ctrl-C, so the
    # relay below is always stopped and never left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node.start()
    try:
        return run(args, node, duration, kill_every, warmup, stem)
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()


def run(args: argparse.Namespace, node: Node, duration: float, kill_every: float, warmup: float, stem: Path) -> int:
    ledger = Ledger()
    stop = threading.Event()
    load = Load(node.ports, node.ports.rest, ledger, stop)
    rows: list[dict[str, Any]] = []
    violations: list[str] = []
    kills: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()
    threads = load.start()
    next_sample = started
    next_kill = started + kill_every
    kill_index = 0
    try:
        while time.monotonic() - started < duration and not stop.is_set():
            now = time.monotonic()
            if now >= next_kill:
                next_kill += kill_every
                name = f"shard-{kill_index % args.shards}"
                kill_index += 1
                pid = ((node.state().get("children") or {}).get(name) or {}).get("pid")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    kills.append({"t_s": round(now - started, 1), "child": name, "pid": pid})
                    log(f"SIGKILL {name} (pid {pid})")
            if now >= next_sample:
                next_sample += args.sample_every
                row, seen = sample(node, started, args.shards)
                rows.append(row)
                violations += [f"t={row['t_s']}s: {v}" for v in seen]
                if not row["metrics_ok"]:
                    violations.append(f"t={row['t_s']}s: /metrics did not answer")
                if node.proc.poll() is not None:
                    failures.append(f"the supervisor exited with {node.proc.returncode}")
                    break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    failures += load.errors
    # Let the last in-flight writes settle before reading everything back.
    time.sleep(2.0)
    row, seen = sample(node, started, args.shards)
    rows.append(row)
    violations += [f"t={row['t_s']}s (end): {v}" for v in seen]
    children = node.state().get("children") or {}
    expected = defaultdict(int)
    for kill in kills:
        expected[kill["child"]] += 1
    for name, child in children.items():
        if child.get("restarts", 0) != expected.get(name, 0):
            failures.append(f"{name} restarted {child.get('restarts')} times, the soak killed it {expected.get(name, 0)} times")
        if not child.get("alive"):
            failures.append(f"{name} is not running at the end")
    checked, lost = verify_ledger(node, ledger, load.writers)
    if checked == 0:
        failures.append("the ledger is empty: nothing was acknowledged")
    stop_code = node.stop()
    if stop_code != 0:
        failures.append(f"relayctl stop / relay exit status {stop_code}")

    series = trends(rows, warmup, args.shards)
    for entry in series:
        if "rss_kib_per_min" not in entry:
            continue
        if entry["rss_kib_per_min"] > RSS_SLOPE_LIMIT_KIB_PER_MIN:
            failures.append(f"{entry['process']} (pid {entry['pid']}) RSS grows {entry['rss_kib_per_min']} KiB/min")
        if entry["fds_per_min"] > FD_SLOPE_LIMIT_PER_MIN:
            failures.append(f"{entry['process']} (pid {entry['pid']}) descriptors grow {entry['fds_per_min']}/min")
    failures += violations
    failures += lost

    fieldnames: list[str] = []
    for r in rows:
        fieldnames += [k for k in r if k not in fieldnames]
    with open(f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "minutes": args.minutes, "shards": args.shards, "kill_every_s": kill_every, "warmup_s": warmup,
        "sample_every_s": args.sample_every,
        "criteria": {"rss_kib_per_min_max": RSS_SLOPE_LIMIT_KIB_PER_MIN, "fds_per_min_max": FD_SLOPE_LIMIT_PER_MIN,
                     "series_warmup_s": SERIES_WARMUP_S, "min_series_samples": MIN_SERIES_SAMPLES},
        "load": dict(load.counts), "kills": kills, "ledger_values_checked": checked, "lost": lost,
        "trends": series, "violations": violations, "failures": failures,
        "restarts": {name: child.get("restarts", 0) for name, child in children.items()},
        "final_drops": {"ingress": rows[-1]["ingress_drops"], "shards": rows[-1]["shard_drops"]},
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plot:
        try:
            plot(rows, kills, args.shards, Path(f"{stem}.png"), f"soak {args.minutes:g} min, {args.shards} shards")
        except ImportError:
            log("matplotlib not installed: no plot (make soak installs the bench extra)")
    log(f"load: {dict(load.counts)}")
    log(f"kills: {len(kills)}; ledger values checked: {checked}; lost: {len(lost)}")
    for entry in series:
        if "rss_kib_per_min" in entry:
            log(f"  {entry['process']:<10} pid {entry['pid']:<7} RSS {entry['rss_kib_last'] / 1024:6.1f} MiB "
                f"{entry['rss_kib_per_min']:+8.1f} KiB/min  fds {entry['fds_last']:4d} {entry['fds_per_min']:+.3f}/min "
                f"({entry['samples']} samples)")
        else:
            log(f"  {entry['process']:<10} pid {entry['pid']:<7} too short for a trend ({entry['samples']} samples after warm-ups)")
    log(f"results: {stem}.csv / .json" + ("" if args.no_plot else " / .png"))
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures[:50]))
        return 1
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
