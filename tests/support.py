"""Test helpers: a real relay node in a subprocess, and real protocol peers.

Everything talks over 127.0.0.1 with free ports picked per node, so tests can
run side by side. Each helper cleans up its processes and sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq

from relay.protocol import decode, encode
from relay.protocol.messages import (
    ClientHello,
    DeviceIdMapping,
)

REPO = Path(__file__).resolve().parent.parent
RELAYCTL = [sys.executable, "-m", "supervisor.cli"]

# The store every RelayNode of the running test uses unless told otherwise:
# "" = SQLite in its data dir; a redis:// URL = the shared store. Set by the
# ``relay_store`` fixture, which runs a test once with each.
DEFAULT_STORE = {"url": ""}


def free_ports(count: int) -> list[int]:
    """Ports free for both TCP and UDP right now (best effort, loopback)."""
    ports: list[int] = []
    holders = []
    while len(ports) < count:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        holders += [tcp, udp]
        ports.append(port)
    for sock in holders:
        sock.close()
    return ports


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive TCP ports free on ``host`` right now."""
    import random

    for _ in range(200):
        base = random.randint(20_000, 60_000 - count)
        holders = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                holders.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in holders:
                sock.close()
        return base
    raise RuntimeError(f"no block of {count} free ports")


_CLUSTER_KEY: dict[str, str] = {}


def cluster_key_file() -> str:
    """One cluster key pair for every node a test run starts (same cluster)."""
    if "path" not in _CLUSTER_KEY:
        from relay.cluster.link_security import generate_key_file

        path = os.path.join(tempfile.mkdtemp(prefix="relay-test-key-"), "cluster.key")
        generate_key_file(path)
        _CLUSTER_KEY["path"] = path
    return _CLUSTER_KEY["path"]


def write_config(directory: Any, **values: Any) -> str:
    """A TOML config file with flat keys, as `--config FILE` takes."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path = os.path.join(str(directory), "relay-test.toml")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# ------------------------------------------------------------------ /proc
# Linux only, like the relay's own process handling; no psutil in the test extra.


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # stat fields 14 and 15
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def restarts(node: RelayNode) -> dict[str, int]:
    children = (node.supervisor_state() or {}).get("children", {})
    return {name: child["restarts"] for name, child in children.items()}


def rest_healthy(port: int, host: str = "127.0.0.1") -> bool:
    """True when the REST bridge on ``port`` answers its health check."""
    import httpx

    try:
        return httpx.get(f"http://{host}:{port}/", timeout=0.5).json() == {"status": "ok"}
    except httpx.HTTPError:
        return False


@dataclass
class RelayNode:
    """A `relayctl start` subprocess with its ports and directories."""

    shards: int = 2
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    run_dir: str = ""
    data_dir: str = ""
    discovery: bool = False
    store: str | None = None
    node_id: str = ""
    # Client-facing address; several nodes on one machine use 127.0.0.2, .3, ...
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        (
            self.control_port,
            self.pub_port,
            self.rest_port,
            self.discovery_port,
            self.metrics_port,
            self.transform_port,
        ) = free_ports(6)  # one call: a second could hand back a port the first released
        self._tmp = tempfile.mkdtemp(prefix="relay-test-")
        self.run_dir = self.run_dir or os.path.join(self._tmp, "run")
        self.data_dir = self.data_dir or os.path.join(self._tmp, "data")
        self.log_path = os.path.join(self._tmp, "relay.log")
        self.proc: subprocess.Popen | None = None
        if self.store is None:
            self.store = DEFAULT_STORE["url"]
        self.cluster_port = free_port_block(2 + 3 * self.shards, self.host) if self.store else 0

    @property
    def args(self) -> list[str]:
        args = [
            "start",
            "--shards",
            str(self.shards),
            "--host",
            self.host,
            "--control-port",
            str(self.control_port),
            "--transform-port",
            str(self.transform_port),
            "--pub-port",
            str(self.pub_port),
            "--rest-api-port",
            str(self.rest_port),
            "--metrics-port",
            str(self.metrics_port),
            "--run-dir",
            self.run_dir,
            "--data-dir",
            self.data_dir,
        ]
        if self.store:
            args += ["--store", self.store, "--advertise", self.host, "--cluster-port", str(self.cluster_port)]
            if "--cluster-key-file" not in self.extra_args:
                args += ["--cluster-key-file", cluster_key_file()]
        if self.node_id:
            args += ["--node-id", self.node_id]
        if self.host != "127.0.0.1":
            args += ["--rest-host", self.host]  # a loopback alias: no token needed
        if self.discovery:
            args += ["--server-discovery-port", str(self.discovery_port)]
        else:
            args += ["--no-server-discovery"]
        return args + self.extra_args

    def start(self, wait: bool = True) -> RelayNode:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            RELAYCTL + self.args,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # never leave a half-started node behind
                raise
        return self

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def supervisor_state(self) -> dict | None:
        try:
            return orjson.loads(Path(self.run_dir, "supervisor.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None

    def child_status(self, name: str) -> dict | None:
        try:
            return orjson.loads(Path(self.run_dir, f"status-{name}.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None

    def child_pid(self, name: str) -> int | None:
        state = self.supervisor_state() or {}
        child = state.get("children", {}).get(name)
        return child["pid"] if child and child.get("alive") else None

    def shard_pids(self) -> dict[str, int]:
        """Pids of the shard workers currently in the layout, by child name."""
        children = (self.supervisor_state() or {}).get("children", {})
        return {name: c["pid"] for name, c in children.items() if name.startswith("shard-") and c.get("pid")}

    def layout_settled(self, shards: int) -> bool:
        """A scale or reload is over: ``shards`` slots, each with its running
        worker, nobody retiring, no operation running (supervisor.json)."""
        state = self.supervisor_state() or {}
        operation = state.get("operation") or {}
        return (len(state.get("slots", [])) == shards and len(self.shard_pids()) == shards
                and not state.get("retiring") and operation.get("state") in (None, "done"))

    def local_room(self, prefix: str = "__probe__") -> str:
        """A room id this node owns in its current cluster view (any room on one node)."""
        from relay.cluster.placement import owner_of
        from relay.cluster.view_file import ViewFile

        try:
            feed = ViewFile(self.run_dir)
        except FileNotFoundError:
            return prefix
        return next(
            f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}".encode(), feed.view)[0] == feed.node_id
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"relay exited early:\n{self.log_text()}")
            room = self.local_room() if self.store else "__probe__"
            return handshake(self, "__ready_probe__", room=room, timeout=0.3) is not None

        wait_for(ready, timeout, interval=0.1, what="relay readiness")

        def all_children_listed() -> bool:
            children = (self.supervisor_state() or {}).get("children", {})
            return bool(children) and all(c.get("alive") for c in children.values())

        wait_for(all_children_listed, timeout, interval=0.05, what="supervisor state")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._kill_leftovers()
        self._log.close()
        return self.proc.returncode

    def _kill_leftovers(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> RelayNode:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"


class RawClient:
    """A minimal in-repo protocol peer: raw DEALER/DEALER/SUB sockets."""

    def __init__(self, node: RelayNode, room: str, device_id: str, subscribe: bool = True) -> None:
        self.ctx = zmq.Context.instance()
        self.room = room
        self.room_bytes = room.encode()
        self.device_id = device_id
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(node.endpoint(node.control_port))
        self.transform = self.ctx.socket(zmq.DEALER)
        self.transform.setsockopt(zmq.LINGER, 0)
        self.transform.connect(node.endpoint(node.transform_port))
        self.sub = None
        if subscribe:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.connect(node.endpoint(node.pub_port))
            self.sub.setsockopt(zmq.SUBSCRIBE, self.room_bytes)
        self.client_no: int | None = None

    def send_control(self, msg: Any) -> None:
        self.control.send_multipart([self.room_bytes, encode(msg)])

    def send_control_raw(self, frames: list[bytes]) -> None:
        self.control.send_multipart(frames)

    def send_transform(self, msg: Any) -> None:
        self.transform.send_multipart([self.room_bytes, encode(msg)])

    def hello(self, stealth: bool = False) -> None:
        self.send_control(ClientHello(8, 1 if stealth else 0, self.device_id))

    def recv_control(self, timeout: float = 2.0) -> Any | None:
        if not self.control.poll(int(timeout * 1000)):
            return None
        room, payload = self.control.recv_multipart()
        assert room == self.room_bytes, (room, self.room_bytes)
        return decode(payload)

    def recv_control_until(self, predicate: Callable[[Any], bool], timeout: float = 3.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv_control(max(0.0, deadline - time.monotonic()))
            if msg is not None and predicate(msg):
                return msg
        return None

    def join(self, stealth: bool = False, timeout: float = 3.0) -> int:
        self.hello(stealth)
        msg = self.recv_control_until(
            lambda m: (
                isinstance(m, DeviceIdMapping)
                and any(e.device_id == self.device_id for e in m.mappings)
            ),
            timeout,
        )
        assert msg is not None, f"{self.device_id} got no mapping"
        self.client_no = next(e.client_no for e in msg.mappings if e.device_id == self.device_id)
        return self.client_no

    def recv_pub(self, timeout: float = 2.0) -> tuple[bytes, Any] | None:
        if self.sub is None or not self.sub.poll(int(timeout * 1000)):
            return None
        topic, payload = self.sub.recv_multipart()
        return topic, decode(payload)

    def drain_control(self) -> list[Any]:
        out = []
        while self.control.poll(0):
            room, payload = self.control.recv_multipart()
            out.append(decode(payload))
        return out

    def close(self) -> None:
        for sock in (self.control, self.transform, self.sub):
            if sock is not None:
                sock.close()


def handshake(
    node: RelayNode, device_id: str, room: str = "__probe__", timeout: float = 1.0
) -> int | None:
    client = RawClient(node, room, device_id, subscribe=False)
    try:
        client.hello()
        msg = client.recv_control_until(lambda m: isinstance(m, DeviceIdMapping), timeout)
        return msg.mappings[0].client_no if msg else None
    finally:
        client.close()


@contextmanager
def reference_clients(node: RelayNode, rooms: list[str]) -> Iterator[list[Any]]:
    """Reference Python clients (styly_netsync.net_sync_manager), one per room entry.

    Their receive thread is stopped before the sockets close: closing first
    can make it spin on a closed socket.
    """
    from styly_netsync import net_sync_manager

    clients = []
    try:
        for room in rooms:
            client = net_sync_manager(
                server="tcp://127.0.0.1",
                dealer_port=node.control_port,
                transform_port=node.transform_port,
                sub_port=node.pub_port,
                room=room,
            )
            clients.append(client.start())
        yield clients
    finally:
        for client in clients:
            stop_reference_client(client)


def stop_reference_client(client: Any) -> None:
    client._running = False
    thread = client._receive_thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=2.0)
    client._running = True
    client.stop()


def send_pose(client: Any, x: float, y: float = 1.5, z: float = 0.0) -> None:
    """Reference client pose; its device id must be set or all collapse onto ''."""
    from styly_netsync.types import client_transform_data, transform_data

    client.send_transform(
        client_transform_data(
            device_id=client.device_id, head=transform_data(pos_x=x, pos_y=y, pos_z=z)
        )
    )
