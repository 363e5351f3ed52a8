"""/metrics of a real node, driven by reference clients; plus the collector's pure parts.

Status files refresh once a second, so integration checks poll the endpoint
until a counter reaches its expected value, then wait past another refresh to
prove it does not overshoot.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.hashing import shard_for_room
from relay.metrics import CounterOffsets, NodeCollector
from tests.support import RelayNode, reference_clients, send_pose, wait_for

pytestmark = pytest.mark.timeout(120)

STATUS_REFRESH = 1.5  # > the children's 1 s status interval

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class Scrape:
    """One parsed /metrics page."""

    def __init__(self, text: str) -> None:
        self.values: dict[SampleKey, float] = {}
        self.monotonic: set[SampleKey] = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.values[key] = sample.value
                if family.type in ("counter", "histogram"):
                    self.monotonic.add(key)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.values.items() if n == name and want <= set(lab))

    def has(self, name: str, **labels: str) -> bool:
        want = set(labels.items())
        return any(n == name and want <= set(lab) for n, lab in self.values)


def scrape(node: RelayNode) -> Scrape:
    response = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5.0)
    response.raise_for_status()
    return Scrape(response.text)


def room_on_shard(shard: int, shards: int, prefix: str = "metrics") -> str:
    return next(
        f"{prefix}-{i}" for i in range(10_000) if shard_for_room(f"{prefix}-{i}".encode(), shards) == shard
    )


@contextmanager
def keep_alive(clients: list[Any]) -> Iterator[None]:
    """Poses at 10 Hz, as a Unity client sends them: without any, the room
    times the clients out (client_timeout 5 s) in the middle of a test."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            for i, client in enumerate(clients):
                send_pose(client, float(i))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2.0)


def join_all(clients: list[Any]) -> None:
    """Every client has a number and knows every other member."""

    def joined() -> bool:
        if any(c.client_no is None for c in clients):
            return False
        return all(c.get_client_no(o.device_id) is not None for c in clients for o in clients)

    wait_for(joined, 10.0, interval=0.05, what="reference clients joined")


def wait_value(node: RelayNode, expected: float, name: str, timeout: float = 10.0, **labels: str) -> Scrape:
    """Poll until the summed series equals ``expected``; fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        page = scrape(node)
        value = page.total(name, **labels)
        if value == expected:
            return page
        if value > expected or time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} = {value}, expected {expected}")
        time.sleep(0.2)


@pytest.fixture
def node() -> Iterator[RelayNode]:
    with RelayNode(shards=2) as running:
        yield running


# ------------------------------------------------------------ integration


def test_rpc_counters_move_by_recipients(node: RelayNode) -> None:
    room = room_on_shard(0, node.shards)
    members, broadcast_rpcs, targeted_rpcs = 3, 7, 4
    with reference_clients(node, [room] * members) as clients, keep_alive(clients):
        join_all(clients)
        before = scrape(node)
        assert before.total("relay_messages_sent_total", type="rpc", lane="control") == 0
        latency_before = before.total("relay_control_latency_seconds_count")

        for i in range(broadcast_rpcs):
            assert clients[0].rpc("Ping", [str(i)])
        for i in range(targeted_rpcs):
            assert clients[1].rpc("Poke", [str(i)], target_client_nos=[clients[2].client_no])
        expected_out = broadcast_rpcs * members + targeted_rpcs

        wait_value(node, expected_out, "relay_messages_sent_total", type="rpc", lane="control")
        # What the relay counted is what the clients got.
        wait_for(
            lambda: sum(c.get_stats()["rpc_received"] for c in clients) == expected_out,
            10.0, what="reference clients received every RPC",
        )
        time.sleep(STATUS_REFRESH)
        page = scrape(node)
        assert page.total("relay_messages_sent_total", type="rpc", lane="control") == expected_out
        # All of them from the shard that owns the room.
        assert page.total("relay_messages_sent_total", type="rpc", shard="0") == expected_out
        assert page.total("relay_room_events_total", event="rpc_fanout", shard="0") == expected_out
        assert page.total("relay_messages_received_total", type="rpc", lane="control") == (
            broadcast_rpcs + targeted_rpcs
        )
        # One latency sample per frame handed out (a broadcast RPC is one frame).
        count = page.total("relay_control_latency_seconds_count")
        assert count - latency_before >= broadcast_rpcs + targeted_rpcs
        assert page.total("relay_control_latency_seconds_bucket", le="+Inf") == count
        assert page.total("relay_control_latency_seconds_sum") > 0
        # ... and hop by hop: every frame the shard answered passed every hop,
        # and every other RPC was fanned out by the ingress from the route table.
        fanned = page.total("relay_rpc_fanout_total", path="fast")
        for hop in ("ingress_batch", "pipe_to_shard", "shard_rules", "shard_queue", "egress_pipe", "router_send"):
            assert page.total("relay_control_hop_seconds_bucket", hop=hop, le="+Inf") + fanned >= (
                broadcast_rpcs + targeted_rpcs), hop
        assert page.total("relay_rpc_fanout_seconds_count") == fanned
        assert page.total("relay_ingress_received_total", lane="control") >= (
            members + broadcast_rpcs + targeted_rpcs
        )
        assert page.total("relay_unicast_total", result="sent") >= expected_out
        assert page.total("relay_clients", shard="0", visibility="visible") == members
        assert page.total("relay_rooms", shard="0") == 1


def test_nv_latency_and_proxy_counters(node: RelayNode) -> None:
    room = room_on_shard(1, node.shards)
    members = 2
    with reference_clients(node, [room] * members) as clients, keep_alive(clients):
        join_all(clients)
        time.sleep(STATUS_REFRESH)
        before = scrape(node)
        syncs_before = before.total("relay_messages_sent_total", type="global_var_sync")
        assert clients[0].set_global_variable("score", "42")
        wait_value(node, 1, "relay_messages_received_total", type="global_var_set", shard="1")
        wait_for(
            lambda: scrape(node).total("relay_nv_sync_latency_seconds_count")
            > before.total("relay_nv_sync_latency_seconds_count"),
            10.0, what="an NV latency sample",
        )
        # The new value reached every member, and every member got one sync for it.
        wait_for(
            lambda: all(c.get_global_variable("score") == "42" for c in clients), 5.0, what="NV synced"
        )
        page = wait_value(node, syncs_before + members, "relay_messages_sent_total", type="global_var_sync")
        assert page.total("relay_nv_sync_latency_seconds_bucket", le="+Inf") == page.total(
            "relay_nv_sync_latency_seconds_count"
        )
        # Room poses go out through the proxy: frames in from the shards and out to subscribers.
        wait_for(
            lambda: scrape(node).total("relay_proxy_frames_total", socket="xpub", direction="out") > 0,
            10.0, what="proxy output counted",
        )
        page = scrape(node)
        assert page.total("relay_proxy_statistics_up") == 1
        assert page.total("relay_proxy_bytes_total", socket="xsub", direction="in") > 0
        assert page.total("relay_messages_received_total", type="client_pose", lane="transform") > 0
        assert page.total("relay_messages_sent_total", type="room_pose", lane="transform") > 0


def test_counters_survive_a_killed_shard(node: RelayNode) -> None:
    room = room_on_shard(0, node.shards)
    members, rpcs = 2, 5
    with reference_clients(node, [room] * members) as clients, keep_alive(clients):
        join_all(clients)
        for i in range(rpcs):
            assert clients[0].rpc("Ping", [str(i)])
        # This scrape is the collector's last look at the doomed instance.
        before = wait_value(node, rpcs * members, "relay_messages_sent_total", type="rpc", lane="control")
        restarts = before.total("relay_child_restarts_total", child="shard-0")
        old_pid = node.child_pid("shard-0")
        assert old_pid and (node.child_status("shard-0") or {}).get("pid") == old_pid

        os.kill(old_pid, signal.SIGKILL)
        wait_value(node, restarts + 1, "relay_child_restarts_total", child="shard-0")
        wait_for(
            lambda: (node.child_status("shard-0") or {}).get("pid") not in (None, old_pid),
            15.0, what="the new shard-0 writing its status",
        )
        after = scrape(node)
        assert after.total("relay_child_up", child="shard-0") == 1
        went_back = {
            key: (before.values[key], after.values.get(key))
            for key in before.monotonic
            if after.values.get(key, -1.0) < before.values[key]
        }
        assert not went_back, f"counters went backwards after the restart: {went_back}"
        assert after.total("relay_messages_sent_total", type="rpc", lane="control") == rpcs * members

        # New traffic adds on top of what the dead instance counted.
        def rpc_counted() -> bool:
            clients[0].rpc("Ping", ["again"])
            time.sleep(0.3)
            return scrape(node).total("relay_messages_sent_total", type="rpc") > rpcs * members

        wait_for(rpc_counted, 15.0, interval=0.5, what="RPCs counted after the restart")


def test_healthz_and_unknown_path(node: RelayNode) -> None:
    base = f"http://127.0.0.1:{node.metrics_port}"
    health = httpx.get(base + "/healthz", timeout=5.0)
    assert health.status_code == 200
    assert health.json()["children"]["ingress"] is True
    assert httpx.get(base + "/nope", timeout=5.0).status_code == 404
    # A dedicated registry: no python_gc_*/process_* of the supervisor alone.
    assert not any(name.startswith(("process_", "python_")) for name in scrape(node).names)


# ----------------------------------------------------------------- pure


def test_offsets_carry_a_restarted_instance_forward() -> None:
    offsets = CounterOffsets()
    key = ("relay_x_total", "", ("0",))
    other = ("relay_y_total", "", ("0",))
    assert offsets.adjust("shard-0", 100, {key: 5.0, other: 2.0}) == {key: 5.0, other: 2.0}
    assert offsets.adjust("shard-0", 100, {key: 9.0, other: 2.0}) == {key: 9.0, other: 2.0}
    # New pid: values restart from zero, even ones larger than before.
    assert offsets.adjust("shard-0", 101, {key: 12.0}) == {key: 21.0, other: 2.0}
    assert offsets.adjust("shard-0", 101, {key: 13.0, other: 1.0}) == {key: 22.0, other: 3.0}
    # No pid (the proxy): a decrease is the only sign of a restart.
    assert offsets.adjust("proxy", None, {key: 50.0}) == {key: 50.0}
    assert offsets.adjust("proxy", None, {key: 3.0}) == {key: 53.0}
    # No answer: the last known value, not zero.
    assert offsets.adjust("proxy", None, {}) == {key: 53.0}


def _write(path: str, doc: dict) -> None:
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(doc))


def _hist(count: int, total: float) -> dict:
    bounds = [0.001, 0.01, 0.1]
    return {"bounds": bounds, "cumulative": [0, count, count, count], "sum": total, "count": count}


def _collect(collector: NodeCollector) -> Scrape:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    return Scrape(generate_latest(registry).decode())


def test_collector_reads_status_files(tmp_path: Any) -> None:
    run_dir = str(tmp_path)
    children = {
        name: {"pid": pid, "alive": True, "uptime_s": 1.0, "restarts": 0}
        for name, pid in (("shard-0", 10), ("shard-1", 11), ("ingress", 12), ("proxy", 13))
    }
    _write(os.path.join(run_dir, "supervisor.json"), {"shards": 2, "started_at": 1.0, "children": children})
    for k, pid in ((0, 10), (1, 11)):
        _write(os.path.join(run_dir, f"status-shard-{k}.json"), {
            "pid": pid, "rooms": 1 + k, "clients": 3, "visible": 2, "stealth": 1,
            "messages_in": {"rpc": 4, "hello": 2, "client_pose": 9}, "drops": {"bad_payload": k},
            "unicast_out_by_type": {"3": 12, "6": 5}, "broadcast_out_by_type": {"12": 7},
            "nv_sync_latency": _hist(2 + k, 0.01), "tokens": 100.0, "ctrl_queue_depth": 0,
        })
    _write(os.path.join(run_dir, "status-ingress.json"), {
        "pid": 12, "counts": {"received_control": 8, "unicast_sent": 20}, "drops": {"frame_count": 1},
        "control_latency": _hist(6, 0.02), "retry_queued_bytes": 4096,
        "inflight": {"control": [3, 0], "transform": [0, 128]},
        "inflight_bytes": {"control": [300, 0], "transform": [0, 9000]},
    })
    _write(os.path.join(run_dir, "status-rest.json"), {"pid": 14, "rest": {"requests": 3}})
    collector = NodeCollector(run_dir, proxy_timeout_ms=50)
    try:
        page = _collect(collector)
        assert page.total("relay_messages_sent_total", type="rpc", lane="control") == 24
        assert page.total("relay_messages_sent_total", type="device_id_mapping") == 10
        assert page.total("relay_messages_sent_total", type="room_pose", lane="transform") == 14
        assert page.total("relay_messages_received_total", type="client_hello", lane="control") == 4
        assert page.total("relay_messages_received_total", type="client_pose", lane="transform") == 18
        assert page.total("relay_rooms", shard="1") == 2
        assert page.total("relay_clients", visibility="stealth") == 2
        # Summed over shards, one series, consistent buckets.
        assert page.total("relay_nv_sync_latency_seconds_count") == 5
        assert page.total("relay_nv_sync_latency_seconds_bucket", le="0.01") == 5
        assert page.total("relay_control_latency_seconds_count") == 6
        assert page.total("relay_drops_total", child="ingress", reason="frame_count") == 1
        assert page.total("relay_unicast_retry_queued_bytes") == 4096
        assert page.total("relay_ingress_inflight_messages", lane="transform", shard="1") == 128
        assert page.total("relay_ingress_inflight_bytes", lane="control", shard="0") == 300
        assert page.total("relay_drops_total", child="shard-1", reason="bad_payload") == 1
        assert page.total("relay_child_events_total", child="rest", group="rest", event="requests") == 3
        # No proxy listening: reported down, no made-up counters, and fast.
        assert page.total("relay_proxy_statistics_up") == 0
        assert not page.has("relay_proxy_frames_total")

        # shard-0 restarts (new pid, counters from zero): node totals keep growing.
        _write(os.path.join(run_dir, "status-shard-0.json"), {
            "pid": 20, "messages_in": {"rpc": 1}, "unicast_out_by_type": {"3": 3},
            "nv_sync_latency": _hist(1, 0.001),
        })
        page = _collect(collector)
        assert page.total("relay_messages_sent_total", type="rpc") == 12 + 12 + 3
        assert page.total("relay_messages_received_total", type="rpc") == 4 + 4 + 1
        assert page.total("relay_messages_received_total", type="client_pose", shard="0") == 9
        assert page.total("relay_nv_sync_latency_seconds_count") == 2 + 3 + 1
        assert page.total("relay_drops_total", child="shard-1", reason="bad_payload") == 1
    finally:
        collector.close()


def test_bounds_events_and_evicted_rooms_are_exported_and_survive_a_restart(tmp_path: Any) -> None:
    run_dir = str(tmp_path)
    children = {"shard-0": {"pid": 10, "alive": True, "uptime_s": 1.0, "restarts": 0}}
    _write(os.path.join(run_dir, "supervisor.json"), {"shards": 1, "started_at": 1.0, "children": children})
    _write(os.path.join(run_dir, "status-shard-0.json"), {
        "pid": 10, "rooms": 2, "evicted_rooms": 40,
        "bounds": {"rooms_evicted_idle": 30, "rooms_evicted_at_cap": 12, "rooms_reloaded": 2},
        "room_counters": {"queued_devices_refused": 1, "queued_devices_expired": 4},
        "drops": {"room_full": 3, "control_rate_limited": 5, "device_takeover_refused": 1},
    })
    collector = NodeCollector(run_dir, proxy_timeout_ms=50)
    try:
        page = _collect(collector)
        assert page.total("relay_evicted_rooms", shard="0") == 40
        assert page.total("relay_bounds_events_total", shard="0", event="rooms_evicted_idle") == 30
        assert page.total("relay_bounds_events_total", event="rooms_evicted_at_cap") == 12
        assert page.total("relay_bounds_events_total", event="rooms_reloaded") == 2
        assert page.total("relay_room_events_total", event="queued_devices_expired") == 4
        assert page.total("relay_drops_total", child="shard-0", reason="control_rate_limited") == 5
        # A restarted shard counts from zero: the node's counter keeps growing.
        _write(os.path.join(run_dir, "status-shard-0.json"), {
            "pid": 20, "evicted_rooms": 0, "bounds": {"rooms_evicted_idle": 1},
        })
        page = _collect(collector)
        assert page.total("relay_bounds_events_total", event="rooms_evicted_idle") == 31
        assert page.total("relay_evicted_rooms", shard="0") == 0
    finally:
        collector.close()
