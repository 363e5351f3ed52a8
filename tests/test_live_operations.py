"""Live operations on a running node, with reference clients under load.

`relayctl scale` and SIGHUP (rolling restart) move rooms between shard
workers while 20 reference clients in 8 rooms send RPCs, network variables
and poses: every RPC must reach every member of its room exactly once and
in order, every last value must be what every member and REST see, nobody
may lose their client number, and the processes that hold the client
sockets (ingress, proxy) must never restart. Run once per store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from typing import Any

import httpx

from tests.support import (
    RELAYCTL,
    REPO,
    RelayNode,
    free_port_block,
    reference_clients,
    send_pose,
    wait_for,
)

ROOMS = [f"live-{i}" for i in range(8)]
# 20 clients: rooms 0-3 have three members, rooms 4-7 two.
ASSIGNMENT = [ROOMS[i % len(ROOMS)] for i in range(20)]


def relayctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(RELAYCTL + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


class ControlLoad:
    """Every 100 ms: each client sends a pose and an RPC named after itself and
    a sequence number; each room's first member writes the global "tick"."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self.room_of = {c.device_id: room for c, room in zip(clients, ASSIGNMENT, strict=True)}
        self.sent: dict[str, list[str]] = defaultdict(list)
        # receiver device -> sender device -> RPC names in arrival order
        self.received: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.writers = {room: next(c for c in clients if self.room_of[c.device_id] == room) for room in ROOMS}
        self.last_tick: dict[str, int] = {}
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-load", daemon=True)
        self._index = {c.device_id: str(i) for i, c in enumerate(clients)}
        self._device = {v: k for k, v in self._index.items()}
        for c in clients:
            c.on_rpc_received.add_listener(
                lambda no, fn, args, me=c.device_id: self._got(me, fn))

    def _got(self, receiver: str, name: str) -> None:
        sender = self._device.get(name.split(":", 1)[0])
        if sender is not None:
            self.received[receiver][sender].append(name)

    def start(self) -> ControlLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rounds += 1
            for c in self.clients:
                send_pose(c, float(self.rounds % 7))
                name = f"{self._index[c.device_id]}:{self.rounds}"
                if c.rpc(name, []):
                    self.sent[c.device_id].append(name)
            for room, writer in self.writers.items():
                writer.set_global_variable("tick", str(self.rounds))
                self.last_tick[room] = self.rounds
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def missing(self) -> list[str]:
        """What some member has not received (yet), or received out of order or twice."""
        problems = []
        for receiver, room in self.room_of.items():
            for sender, sender_room in self.room_of.items():
                if sender_room != room:
                    continue
                got, sent = self.received[receiver][sender], self.sent[sender]
                if got != sent:
                    problems.append(f"{receiver} from {sender}: {len(got)} of {len(sent)}"
                                    f"{' (order/duplicates differ)' if sorted(got) != sorted(set(got)) or got != sent[:len(got)] else ''}")
        return problems

    def ticks_settled(self) -> bool:
        return all(
            c.get_global_variable("tick") == str(self.last_tick[self.room_of[c.device_id]])
            for c in self.clients
        )


def _state(node: RelayNode) -> dict:
    return node.supervisor_state() or {}


def _wait_layout(node: RelayNode, shards: int, timeout: float = 60.0) -> None:
    wait_for(lambda: node.layout_settled(shards), timeout, interval=0.2,
             what=f"{shards} shard slots and no retiring worker")


def _rest_global(node: RelayNode, room: str, name: str) -> str | None:
    reply = httpx.get(f"http://127.0.0.1:{node.rest_port}/v1/rooms/{room}/global-variables/{name}", timeout=5)
    return reply.json().get("value") if reply.status_code == 200 else None


def _check_after(node: RelayNode, load: ControlLoad, numbers: dict[str, int],
                 restarts_before: dict[str, int]) -> None:
    load.stop()
    deadline = time.monotonic() + 20
    while load.missing() and time.monotonic() < deadline:
        time.sleep(0.2)
    problems = load.missing()
    assert not problems, f"{len(problems)} sender/receiver pairs differ: " + "; ".join(problems[:6])
    wait_for(load.ticks_settled, 10, what="every member sees its room's last tick")
    for room in ROOMS:
        assert _rest_global(node, room, "tick") == str(load.last_tick[room]), room
    assert {c.device_id: c.client_no for c in load.clients} == numbers, "a client number changed"
    children = _state(node)["children"]
    for name in ("ingress", "proxy"):
        assert children[name]["restarts"] == restarts_before[name], f"{name} restarted: clients were cut off"
    assert load.rounds > 20, "the load must have run through the operation"


def _start_load(node: RelayNode, clients: list[Any]) -> tuple[ControlLoad, dict[str, int], dict[str, int]]:
    wait_for(lambda: all(c.client_no for c in clients), 20, what="20 client numbers")
    numbers = {c.device_id: c.client_no for c in clients}
    children = _state(node)["children"]
    restarts = {name: children[name]["restarts"] for name in ("ingress", "proxy")}
    load = ControlLoad(clients).start()
    wait_for(lambda: load.rounds >= 10 and not load.missing(), 15, interval=0.2, what="load flowing")
    return load, numbers, restarts


def _node(shards: int, most: int) -> RelayNode:
    node = RelayNode(shards=shards)
    if node.store:
        # Node-link ports for the most shards the test scales to (relay/endpoints.py).
        node.cluster_port = free_port_block(2 + 3 * most, node.host)
    return node  # started by ``with``


def test_scaling_2_4_1_shards_under_load_loses_nothing(relay_store: str) -> None:
    with _node(2, 4) as node, reference_clients(node, ASSIGNMENT) as clients:
        load, numbers, restarts = _start_load(node, clients)
        before = node.shard_pids()
        result = relayctl("scale", "4", "--run-dir", node.run_dir)
        assert result.returncode == 0, result.stderr
        _wait_layout(node, 4)
        after_up = node.shard_pids()
        # Scaling up keeps the workers that were there and moves only what changed.
        assert {k: after_up[k] for k in before} == before
        wait_for(lambda: load.rounds >= 40, 15, what="load through the new layout")
        # 4 of the 8 rooms belong to the new shards (rendezvous, relay/hashing.py).
        wait_for(lambda: sum((node.child_status(f"shard-{k}") or {}).get("rooms", 0) for k in (2, 3)) == 4,
                 10, what="the new shards serve their rooms")

        os.kill(node.proc.pid, signal.SIGTTOU)  # one fewer, as with gunicorn
        _wait_layout(node, 3)
        result = relayctl("scale", "1", "--run-dir", node.run_dir)
        assert result.returncode == 0, result.stderr
        _wait_layout(node, 1)
        assert node.shard_pids()["shard-0"] == before["shard-0"]
        wait_for(lambda: load.rounds >= 70, 15, what="load on one shard")
        _check_after(node, load, numbers, restarts)
        status = node.child_status("shard-0") or {}
        assert status.get("rooms") == len(ROOMS)
        handed = status.get("handovers", {})
        assert handed.get("loaded_after_wait", 0) + handed.get("released", 0) > 0, status
        # The workers that left are gone, not lingering.
        for name, pid in after_up.items():
            if name != "shard-0":
                wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 10, what=f"{name} exited")


def test_sighup_rolling_restart_under_load_loses_nothing(relay_store: str) -> None:
    with _node(2, 2) as node, reference_clients(node, ASSIGNMENT) as clients:
        load, numbers, restarts = _start_load(node, clients)
        before = node.shard_pids()
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: all(node.shard_pids().get(k) not in (None, pid) for k, pid in before.items()),
                 60, interval=0.2, what="every shard worker replaced")
        _wait_layout(node, 2)
        wait_for(lambda: load.rounds >= 50, 15, what="load through the restart")
        _check_after(node, load, numbers, restarts)
        for pid in before.values():
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), "a replaced worker is still running"
        assert "rolling restart" in node.log_text().lower()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("State:") and "Z" in line for line in fh)
    except OSError:
        return True


def test_a_shard_that_cannot_start_stops_the_node_with_a_clear_error() -> None:
    node = RelayNode(shards=2, store="").start()  # SQLite: one file per shard
    try:
        path = os.path.join(node.data_dir, "shard-1.sqlite3")
        pid = node.shard_pids()["shard-1"]
        os.kill(pid, signal.SIGKILL)
        with open(path, "r+b") as fh:  # a disk fault: the file is no database any more
            fh.write(b"\x00garbage" * 512)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        started = time.monotonic()
        code = node.proc.wait(timeout=60)
        took = time.monotonic() - started
        assert code == 1
        text = node.log_text()
        assert "shard-1" in text and "shard-1.sqlite3" in text, text[-3000:]
        print(f"node stopped {took:.1f}s after the fault")
        assert took < 45
    finally:
        node.stop()
