"""A relay node on the shared store (real valkey-server), end to end:
store outage under load, restart from the store alone, node-id uniqueness."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from relay.hashing import shard_for_room
from tests.support import RawClient, RelayNode, reference_clients, send_pose, wait_for
from tests.valkey_server import ValkeyServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def server():
    s = ValkeyServer().start()
    yield s
    s.close()


def room_on_shard(shard: int, shards: int = 2, prefix: str = "cs") -> str:
    return next(f"{prefix}-{i}" for i in range(100) if shard_for_room(f"{prefix}-{i}".encode(), shards) == shard)


def rest_global(node: RelayNode, room: str, name: str) -> str | None:
    reply = httpx.get(f"http://127.0.0.1:{node.rest_port}/v1/rooms/{room}/global-variables/{name}", timeout=5)
    return reply.json()["value"] if reply.status_code == 200 else None


def test_store_outage_under_load_loses_no_acknowledged_value(server: ValkeyServer) -> None:
    with RelayNode(shards=2, store=server.url, node_id="n1") as node:
        room = room_on_shard(0)
        with reference_clients(node, [room, room]) as (writer, watcher):
            wait_for(lambda: writer.client_no and watcher.client_no, 10, what="numbers")
            numbers = (writer.client_no, watcher.client_no)
            seen: list[int] = []
            watcher.on_global_variable_changed.add_listener(
                lambda name, old, new, *rest: name == "counter" and seen.append(int(new))
            )
            n = 0

            def write_for(seconds: float) -> None:
                nonlocal n
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    send_pose(watcher, 1.0)  # a silent member would time out after 5 s
                    writer.set_global_variable("counter", str(n))
                    n += 1
                    time.sleep(0.05)

            write_for(1.5)
            server.stop_keeping_data()
            outage_started = time.monotonic()
            write_for(3.0)
            # The node says it is degraded, and keeps serving the room.
            wait_for(lambda: (node.supervisor_state() or {}).get("cluster", {}).get("store_degraded"),
                     5, what="membership degraded")
            health = httpx.get(f"http://127.0.0.1:{node.metrics_port}/healthz", timeout=5).json()
            assert health["store_degraded"] is True and health["status"] == "degraded"
            wait_for(lambda: ((node.child_status("shard-0") or {}).get("store") or {}).get("degraded"),
                     5, what="shard degraded")
            seen_in_outage = len(seen)
            write_for(max(0.0, 10.0 - (time.monotonic() - outage_started)))
            assert len(seen) > seen_in_outage, "the room stopped syncing during the outage"
            server.start()
            write_for(1.0)

            def flushed() -> bool:
                st = (node.child_status("shard-0") or {}).get("store") or {}
                return st.get("degraded") is False and st.get("buffered_records") == 0

            wait_for(flushed, 10, what="buffer flushed after the outage")
            st = node.child_status("shard-0")["store"]
            assert st["outages"] == 1 and st["dropped_records"] == 0 and st["rejected_writes"] == 0
            assert st["unpersisted_announced"] > 0
            wait_for(lambda: not (node.supervisor_state() or {}).get("cluster", {}).get("store_degraded"),
                     5, what="membership back")
            write_for(0.5)
            wait_for(lambda: seen and seen[-1] == n - 1, 5, what="last write synced")
            last_seen = seen[-1]
            # Now lose the shard's memory: everything must come from the store.
            old_pid = node.child_pid("shard-0")
            os.kill(old_pid, signal.SIGKILL)
            wait_for(lambda: node.child_pid("shard-0") not in (None, old_pid), 10, what="shard restart")
            assert wait_for(lambda: rest_global(node, room, "counter"), 10, what="REST read") == str(last_seen)
            with reference_clients(node, [room]) as (late,):
                wait_for(lambda: late.get_global_variable("counter") is not None, 10, what="joiner snapshot")
                assert late.get_global_variable("counter") == str(last_seen)
            raw = RawClient(node, room, writer.device_id, subscribe=False)
            try:
                assert raw.join() == numbers[0], "client numbers survive the outage and the crash"
            finally:
                raw.close()


def test_a_node_restarted_elsewhere_finds_its_rooms_in_the_store(server: ValkeyServer, tmp_path) -> None:
    url = server.url
    with RelayNode(shards=2, store=url, node_id="n1") as node:
        a = RawClient(node, "moved", "dev-a", subscribe=False)
        b = RawClient(node, "moved", "dev-b", subscribe=False)
        try:
            assert (a.join(), b.join()) == (1, 2)
            reply = httpx.post(f"http://127.0.0.1:{node.rest_port}/v1/rooms/moved/global-variables",
                               json={"variables": {"scene": "forest"}}, timeout=5)
            assert reply.status_code == 200
        finally:
            a.close()
            b.close()
        assert node.stop() == 0
    # Another run dir and data dir, another shard count: only the store remains.
    with RelayNode(shards=3, store=url, node_id="n1") as again:
        assert rest_global(again, "moved", "scene") == "forest"
        b = RawClient(again, "moved", "dev-b", subscribe=False)
        c = RawClient(again, "moved", "dev-c", subscribe=False)
        try:
            assert b.join() == 2
            assert c.join() == 3
        finally:
            b.close()
            c.close()


def test_a_node_id_held_by_a_live_node_is_refused(server: ValkeyServer) -> None:
    with RelayNode(shards=1, store=server.url, node_id="twin"):
        twin = RelayNode(shards=1, store=server.url, node_id="twin").start(wait=False)
        try:
            assert twin.proc.wait(15) != 0
            assert "held by a live node" in twin.log_text()
        finally:
            twin.stop()


def _view_nodes(node: RelayNode) -> list[str]:
    cluster = (node.supervisor_state() or {}).get("cluster") or {}
    return [n["node_id"] for n in cluster.get("nodes") or ()]


def test_rooms_of_a_dead_node_are_served_by_the_survivor_with_nothing_lost(server: ValkeyServer) -> None:
    """Two nodes on 127.0.0.2 and 127.0.0.3; kill -9 of one whole node.

    Measures the unavailability window (kill -> the survivor serves the room),
    bounded by membership TTL + refresh + lease TTL (3 + 1 + 4 s by default).
    """
    from relay.cluster.placement import owner_of
    from relay.cluster.view import ClusterView, NodeInfo
    from relay.protocol.messages import GlobalVarSet, GlobalVarSync

    a = RelayNode(shards=1, store=server.url, node_id="a", host="127.0.0.2")
    b = RelayNode(shards=1, store=server.url, node_id="b", host="127.0.0.3")
    try:
        a.start()
        b.start()
        wait_for(lambda: _view_nodes(a) == ["a", "b"] and _view_nodes(b) == ["a", "b"], 10, what="2-node view")
        view = ClusterView(1, (NodeInfo("a", 1), NodeInfo("b", 1)))
        room = next(f"fo-{i}" for i in range(200) if owner_of(f"fo-{i}".encode(), view)[0] == "a")
        x = RawClient(a, room, "dev-x", subscribe=False)
        try:
            assert x.join() == 1
            x.send_control(GlobalVarSet(0, "dev-x", "scene", "forest"))
            assert x.recv_control_until(lambda m: isinstance(m, GlobalVarSync), 3) is not None
        finally:
            x.close()
        os.killpg(a.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        y = RawClient(b, room, "dev-y", subscribe=False)
        try:
            def served() -> int | None:
                y.hello()
                msg = y.recv_control_until(lambda m: hasattr(m, "mappings"), 0.2)
                return msg is not None and next(e.client_no for e in msg.mappings if e.device_id == "dev-y")

            number = wait_for(served, 20, interval=0.05, what="survivor serves the room")
            window = time.monotonic() - killed
            print(f"unavailability window after kill -9 of a node: {window:.2f} s")
            assert number == 2, "the dead node's client numbers are kept (dev-x has 1)"
            sync = y.recv_control_until(lambda m: isinstance(m, GlobalVarSync), 3)
            assert sync is not None and {(e.name, e.value) for e in sync.variables} == {("scene", "forest")}
            assert window < 3.0 + 1.0 + 4.0 + 4.0  # TTLs plus a generous margin for a loaded CI box
        finally:
            y.close()
        assert _view_nodes(b) == ["b"]
    finally:
        a.stop()
        b.stop()
