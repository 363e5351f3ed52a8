"""Crashes, hangs and restarts with real processes and real signals."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import httpx
import pytest

from relay.hashing import shard_for_room
from shard_worker.store.sqlite_store import shard_store_path
from tests.support import (
    RELAYCTL,
    REPO,
    RawClient,
    RelayNode,
    reference_clients,
    send_pose,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def room_on_shard(shard: int, shards: int = 2, prefix: str = "dur") -> str:
    return next(f"{prefix}-{i}" for i in range(100) if shard_for_room(f"{prefix}-{i}".encode(), shards) == shard)


def wait_new_pid(node: RelayNode, name: str, old_pid: int, timeout: float) -> int:
    return wait_for(lambda: (pid := node.child_pid(name)) not in (None, old_pid) and pid, timeout,
                    interval=0.01, what=f"{name} restarted")


@pytest.mark.usefixtures("relay_store")
def test_shard_kill9_mid_nv_stream_loses_nothing_acknowledged() -> None:
    """Everything a client saw acknowledged before a kill -9 is there after it.

    Each check below would fail if its record kind were not journaled:
    writes that were still in flight at the kill can reach the new shard, so
    the assertions rest on state that nothing re-creates after the restart
    (values written once, before the stream; numbers of devices that are
    silent by then, and an arrival order that would renumber everyone).
    """
    with RelayNode(shards=2) as node:
        room = room_on_shard(0)
        # Two devices take numbers 1 and 2 and go silent for good.
        gone = [RawClient(node, room, f"gone-{k}", subscribe=False) for k in range(2)]
        gone_numbers = [client.join() for client in gone]
        for client in gone:
            client.close()
        assert gone_numbers == [1, 2]
        with reference_clients(node, [room, room]) as (writer, watcher):
            wait_for(lambda: writer.client_no and watcher.client_no, 10, what="numbers")
            numbers = (writer.client_no, watcher.client_no)
            assert sorted(numbers) == [3, 4]
            # Written once and acknowledged (the watcher saw the syncs), never again.
            writer.set_global_variable("early", "kept")
            writer.set_client_variable(writer.client_no, "mine", "kept")
            wait_for(lambda: watcher.get_global_variable("early") == "kept"
                     and watcher.get_client_variable(writer.client_no, "mine") == "kept",
                     5, what="early values acknowledged")
            seen: list[str] = []
            writer.on_global_variable_changed.add_listener(lambda name, old, new, *rest: seen.append(new))
            old_pid = node.child_pid("shard-0")
            for n in range(60):
                writer.set_global_variable("counter", str(n))
                writer.set_client_variable(writer.client_no, f"cv{n % 5}", str(n))
                if n == 30:
                    os.kill(old_pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    seen_before_kill = [v for v in seen if v != "kept"]
                time.sleep(0.02)
            new_pid = wait_new_pid(node, "shard-0", old_pid, 5)
            assert new_pid != old_pid
            assert time.monotonic() - killed_at < 5
            assert seen_before_kill, "nothing was synced before the kill"
            last_seen = seen_before_kill[-1]
            # The client keeps working without a restart: new writes are synced again.
            def synced_again() -> bool:
                writer.set_global_variable("after", "restart")
                return watcher.get_global_variable("after") == "restart"

            wait_for(synced_again, 10, interval=0.2, what="sync after restart")
            base = f"http://127.0.0.1:{node.rest_port}/v1/rooms/{room}"
            # Everything seen before the kill is durable: read it back over REST ...
            assert httpx.get(f"{base}/global-variables/early", timeout=5).json() == {"value": "kept"}
            mine = httpx.get(f"{base}/devices/{writer.device_id}/client-variables/mine", timeout=5)
            assert mine.json() == {"clientNo": numbers[0], "value": "kept"}
            rest = httpx.get(f"{base}/global-variables/counter", timeout=5)
            assert rest.status_code == 200
            assert int(rest.json()["value"]) >= int(last_seen)
            # ... and over the wire, by a joiner that gets the full snapshot.
            with reference_clients(node, [room]) as (late,):
                wait_for(lambda: late.get_global_variable("counter") is not None, 5, what="joiner snapshot")
                assert late.get_global_variable("early") == "kept"
                assert int(late.get_global_variable("counter")) >= int(last_seen)
                wait_for(lambda: late.client_no is not None, 5)
                # The counter survived: a new device never reuses a number.
                assert late.client_no == 5
            assert (writer.client_no, watcher.client_no) == numbers
            # A device silent since before the kill keeps its number.
            back = RawClient(node, room, "gone-1", subscribe=False)
            try:
                assert back.join() == gone_numbers[1], "client numbers survive the crash"
            finally:
                back.close()


@pytest.mark.usefixtures("relay_store")
def test_shard_restart_keeps_members_reachable() -> None:
    """Members and their control identities are journaled: unicasts still arrive.

    After the restart nobody sends a hello, and the recipient sends nothing at
    all: it is reachable only through the identity the journal kept.
    """
    with RelayNode(shards=1) as node:
        a = RawClient(node, "reach", "reach-a", subscribe=False)
        b = RawClient(node, "reach", "reach-b", subscribe=False)
        try:
            a.join()
            b.join()
            b.drain_control()
            old = node.child_pid("shard-0")
            os.kill(old, signal.SIGKILL)
            wait_new_pid(node, "shard-0", old, 5)
            from relay.protocol.messages import Rpc

            def b_hears_a() -> bool:
                # a's RPC re-registers a (the sender), never b.
                a.send_control(Rpc(0, "reach-a", (), "ping", "[]"))
                return b.recv_control_until(lambda m: isinstance(m, Rpc), 0.5) is not None

            # Within client_timeout (5 s) of the restore, before b would time out.
            wait_for(b_hears_a, 4, interval=0.1, what="RPC after shard restart")
        finally:
            a.close()
            b.close()


def test_ingress_then_proxy_kill9_clients_recover() -> None:
    with RelayNode(shards=2) as node:
        with reference_clients(node, ["recover", "recover"]) as (a, b):
            wait_for(lambda: a.client_no and b.client_no, 10, what="numbers")
            got_rpc: list[str] = []
            b.on_rpc_received.add_listener(lambda no, fn, args: got_rpc.append(fn))

            def working(tag: str, since: float) -> bool:
                send_pose(a, 1.0)
                send_pose(b, 2.0)
                # Any control message re-registers a reconnected client's identity.
                a.rpc(tag, [])
                b.rpc("keepalive", [])
                snap = a.get_room_transform_data()
                # A room pose received after the kill, listing both members.
                fresh = snap is not None and snap.timestamp > since and len(snap.clients) == 2
                return fresh and tag in got_rpc

            wait_for(lambda: working("before", 0.0), 10, interval=0.1, what="baseline")
            for child in ("ingress", "proxy"):
                pid = node.child_pid(child)
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                wait_new_pid(node, child, pid, 5)
                got_rpc.clear()
                wait_for(lambda child=child, killed=killed: working(f"after-{child}", killed), 10,
                         interval=0.1, what=f"recovery after {child} kill")


@pytest.mark.usefixtures("relay_store")
def test_hung_shard_is_detected_and_replaced(tmp_path) -> None:
    with RelayNode(shards=2) as node:
        pid = node.child_pid("shard-1")
        os.kill(pid, signal.SIGSTOP)
        try:
            new_pid = wait_new_pid(node, "shard-1", pid, 15)
            assert new_pid != pid
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        room = room_on_shard(1)
        client = RawClient(node, room, "after-hang", subscribe=False)
        try:
            assert client.join(timeout=5) == 1
        finally:
            client.close()
        assert "silent for" in node.log_text()


def test_sigterm_under_load_exits_cleanly_and_state_returns(tmp_path) -> None:
    data_dir = str(tmp_path / "data")
    node = RelayNode(shards=2, data_dir=data_dir).start()
    rooms = [room_on_shard(0), room_on_shard(1)]
    try:
        with reference_clients(node, rooms) as clients:
            wait_for(lambda: all(c.client_no for c in clients), 10, what="numbers")
            for n in range(50):
                for c in clients:
                    c.set_global_variable("score", str(n))
                    send_pose(c, float(n))
                time.sleep(0.01)
            wait_for(lambda: all(c.get_global_variable("score") == "49" for c in clients), 5, what="synced")
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            code = node.proc.wait(timeout=10)
            assert time.monotonic() - started < 5.0
            assert code == 0
    finally:
        node.stop()
    for shard in range(2):
        with sqlite3.connect(shard_store_path(data_dir, shard)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with RelayNode(shards=2, data_dir=data_dir) as again:
        for room in rooms:
            with reference_clients(again, [room]) as (client,):
                wait_for(lambda c=client: c.get_global_variable("score") == "49", 5, what="restored state")


def test_corrupt_data_dir_refuses_to_start_and_names_the_file(tmp_path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    bad = shard_store_path(str(data_dir), 1)
    with open(bad, "wb") as fh:
        fh.write(b"this is not a database" * 100)
    node = RelayNode(shards=2, data_dir=str(data_dir))
    proc = subprocess.run(RELAYCTL + node.args, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert bad in proc.stderr
