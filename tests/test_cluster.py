"""Three nodes behind a real HAProxy, sharing a real valkey-server: one relay.

Nodes listen on 127.0.0.2, .3 and .4 (all of 127.0.0.0/8 is loopback on
Linux); HAProxy balances each client port on its own on 127.0.0.1. Peers are
the reference Python client and the in-repo raw client.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
import zmq

from relay.cluster.view import ClusterView, NodeInfo
from relay.protocol.messages import ClientHello, DeviceIdMapping, Rpc
from tests.haproxy_lb import Balancer, haproxy_binary
from tests.support import RawClient, RelayNode, reference_clients, send_pose, wait_for
from tests.valkey_server import ValkeyServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def view_nodes(node: RelayNode) -> list[str]:
    cluster = (node.supervisor_state() or {}).get("cluster") or {}
    return sorted(n["node_id"] for n in cluster.get("nodes") or ())


class Cluster:
    def __init__(self, count: int = 3, *, rotate: bool = False, shards: int = 1) -> None:
        haproxy_binary()  # skip (or fail in CI) before starting anything
        self.valkey = ValkeyServer().start()
        self.nodes = [
            RelayNode(shards=shards, store=self.valkey.url, node_id=f"n{i + 1}", host=HOSTS[i])
            for i in range(count)
        ]
        self.lb: Balancer | None = None
        self.rotate = rotate

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
            self.wait_view(self.nodes)
            self.lb = Balancer(self.nodes, rotate=self.rotate).start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_view(self, nodes: list[RelayNode], timeout: float = 15) -> None:
        ids = sorted(n.node_id for n in nodes)
        wait_for(lambda: all(view_nodes(n) == ids for n in nodes), timeout, interval=0.1, what=f"view {ids}")
        time.sleep(0.3)  # children read view.json every 0.1 s

    def view(self, nodes: list[RelayNode] | None = None) -> ClusterView:
        return ClusterView(0, tuple(NodeInfo(n.node_id, n.shards) for n in (nodes or self.nodes)))

    def stop(self) -> None:
        if self.lb is not None:
            self.lb.stop()
        for node in self.nodes:
            node.stop()
        self.valkey.close()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(rotate=True).start()
    yield c
    c.stop()


def rest_global(lb: Balancer, room: str, name: str) -> str | None:
    try:
        reply = httpx.get(f"http://127.0.0.1:{lb.rest_port}/v1/rooms/{room}/global-variables/{name}", timeout=5)
    except httpx.HTTPError:
        return None
    return reply.json().get("value") if reply.status_code == 200 else None


# ------------------------------------------------------------ one relay


def test_a_client_whose_three_connections_land_on_three_nodes_works(cluster: Cluster) -> None:
    """A balancer that pins control -> n1, transform -> n2, SUB -> n3."""
    lb = Balancer(cluster.nodes, pinned=True).start()
    before = [(n.child_status("ingress") or {}).get("counts", {}) for n in cluster.nodes]
    a = RawClient(lb, "three-way", "tw-a")
    b = RawClient(lb, "three-way", "tw-b", subscribe=False)
    try:
        assert a.join() == 1
        assert b.join() == 2
        from tests.test_presence import head_pose, latest_room_pose

        for seq in range(5):
            a.send_transform(head_pose("tw-a", 7, seq))
            time.sleep(0.1)
        pose = latest_room_pose(a, timeout=5, want=1)
        assert pose is not None and [e.client_no for e in pose.clients] == [1]
        b.send_control(Rpc(0, "tw-b", (), "hello-a", "[]"))
        rpc = a.recv_control_until(lambda m: isinstance(m, Rpc), 3)
        assert rpc is not None and rpc.sender_client_no == 2
    finally:
        a.close()
        b.close()
        lb.stop()
    time.sleep(1.1)  # status files are written every second
    after = [(n.child_status("ingress") or {}).get("counts", {}) for n in cluster.nodes]
    grew = [{k: after[i].get(k, 0) - before[i].get(k, 0) for k in ("received_control", "received_transform")}
            for i in range(3)]
    assert grew[0]["received_control"] > 0 and grew[0]["received_transform"] == 0, grew
    assert grew[1]["received_transform"] > 0 and grew[1]["received_control"] == 0, grew


def test_rpc_nv_ownership_and_poses_between_clients_on_different_nodes(cluster: Cluster) -> None:
    with reference_clients(cluster.lb, ["cross-1"] * 3 + ["cross-2"] * 3) as clients:
        wait_for(lambda: all(c.client_no for c in clients), 15, what="client numbers")
        room1 = clients[:3]
        got: list[list] = [[] for _ in room1]
        for i, c in enumerate(room1):
            c.on_rpc_received.add_listener(lambda no, fn, args, i=i: got[i].append(fn))
        # Per-client order across the hop: 20 RPCs in a burst arrive in order everywhere.
        order = [f"wave-{n}" for n in range(20)]
        for name in order:
            assert room1[0].rpc(name, ["1"])
        wait_for(lambda: all(len(g) >= len(order) for g in got), 10, what="RPCs to all three, sender included")
        assert all(g == order for g in got), got
        room1[1].set_global_variable("scene", "forest")
        wait_for(lambda: all(c.get_global_variable("scene") == "forest" for c in room1), 10, what="NV")
        room1[2].set_client_variable(room1[0].client_no, "hp", "90")
        wait_for(lambda: all(c.get_client_variable(room1[0].client_no, "hp") == "90" for c in room1), 10,
                 what="client variable")

        def everyone_posed() -> bool:
            for c in clients:
                send_pose(c, float(c.client_no))
            snaps = [c.get_room_transform_data() for c in clients]
            return all(s is not None and len(s.clients) == 3 for s in snaps)

        wait_for(everyone_posed, 15, interval=0.2, what="room poses of all three in both rooms")
        assert cluster.lb and rest_global(cluster.lb, "cross-1", "scene") == "forest"


def test_ownership_across_nodes(cluster: Cluster) -> None:
    from relay.protocol.messages import OwnershipChanged, OwnershipRequest

    owner = RawClient(cluster.lb, "own-room", "own-a", subscribe=False)
    other = RawClient(cluster.lb, "own-room", "own-b", subscribe=False)
    try:
        a_no, b_no = owner.join(), other.join()
        owner.send_control(OwnershipRequest(8, "own-a", 2, 77))
        for c in (owner, other):
            assert c.recv_control_until(lambda m: isinstance(m, OwnershipChanged), 3) == OwnershipChanged(77, a_no, 0)
        other.send_control(OwnershipRequest(8, "own-b", 2, 77))  # take-over
        for c in (owner, other):
            assert c.recv_control_until(lambda m: isinstance(m, OwnershipChanged), 3) == OwnershipChanged(77, b_no, a_no)
    finally:
        owner.close()
        other.close()


def test_a_stranger_without_the_cluster_key_is_refused(cluster: Cluster) -> None:
    """Node links admit members only: a forged batch never reaches a shard."""
    from relay.frames import BatchBuilder, node_tag
    from relay.protocol import encode

    target = cluster.nodes[0]
    inlet = f"tcp://{target.host}:{target.cluster_port + 2}"  # shard 0, control inlet
    from relay.cluster.link_security import load_cluster_keys
    from tests.support import cluster_key_file

    # The strongest stranger: knows the cluster's public key (it is public),
    # has a key pair of its own, lacks the cluster's secret key.
    cluster_public = load_cluster_keys(cluster_key_file()).public
    public, secret = zmq.curve_keypair()
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.CURVE_SERVERKEY, cluster_public)
    push.setsockopt(zmq.CURVE_PUBLICKEY, public)
    push.setsockopt(zmq.CURVE_SECRETKEY, secret)
    push.connect(inlet)
    batch = BatchBuilder(0, 1)
    batch.add(0, node_tag(1) + b"forged", b"forged-room", encode(ClientHello(8, 0, "intruder")))
    try:
        push.send(batch.take(), zmq.NOBLOCK)
    except zmq.Again:
        pass
    time.sleep(1.5)
    push.close()
    reply = httpx.get(f"http://127.0.0.1:{cluster.lb.rest_port}/v1/rooms/forged-room", timeout=5)
    assert reply.status_code in (404, 401, 403)  # never created
    # The stranger presented a key pair that is not the cluster's.
    assert wait_for(lambda: ((target.child_status("shard-0") or {}).get("links") or {}).get("links_refused", 0) > 0
                    or "refused a node link" in target.log_text(), 5, what="refusal counted")


def test_a_node_with_the_wrong_cluster_key_is_refused(cluster: Cluster, tmp_path) -> None:
    """A fourth node sharing the store but not the key cannot speak to the others."""
    from relay.cluster.link_security import generate_key_file

    wrong = str(tmp_path / "wrong.key")
    generate_key_file(wrong)
    intruder = RelayNode(shards=1, store=cluster.valkey.url, node_id="intruder", host="127.0.0.5",
                         extra_args=["--cluster-key-file", wrong])
    try:
        intruder.start()
        # Its links to n1 (egress, inlets, bridge) are refused by n1's handlers.
        wait_for(lambda: "refused a node link" in cluster.nodes[0].log_text(), 15, what="n1 refuses the intruder")
    finally:
        intruder.stop()
    cluster.wait_view(cluster.nodes)


# ------------------------------------------------------- membership changes


def _drive(clients: list, writers: dict, rounds: int, counter: list) -> None:
    """Every client sends a pose and a control message (as live clients do:
    after its control connection moved to another node, a client is
    addressable again from its next control message, BEHAVIOR §3); each
    room's writer bumps "tick"."""
    for n in range(rounds):
        for c in clients:
            send_pose(c, 1.0)
            if n % 3 == 0 and c.client_no:
                c.set_client_variable(c.client_no, "alive", str(counter[0]))
        for w in writers.values():
            counter[0] += 1
            w.set_global_variable("tick", str(counter[0]))
        time.sleep(0.1)


def _ticking_rooms(clients: list, rooms: list[str], per_room: int) -> tuple[dict, dict, list]:
    """Per room: its first client writes "tick", its second records every value it
    is sent (what was acknowledged to a client). Drives until every room synced."""
    writers = {r: clients[i * per_room] for i, r in enumerate(rooms)}
    seen: dict[str, list[int]] = {r: [] for r in rooms}
    for i, r in enumerate(rooms):
        clients[i * per_room + 1].on_global_variable_changed.add_listener(
            lambda name, old, new, *rest, r=r: name == "tick" and seen[r].append(int(new)))
    counter = [0]
    _drive(clients, writers, 10, counter)
    wait_for(lambda: all(seen[r] for r in rooms), 10, what="every room synced")
    return writers, seen, counter


def _room_served(lb: Balancer, room: str, device: str) -> bool:
    probe = RawClient(lb, room, device, subscribe=False)
    try:
        probe.send_control(ClientHello(8, 0, device))
        return probe.recv_control_until(lambda m: isinstance(m, DeviceIdMapping), 0.5) is not None
    finally:
        probe.close()


def test_kill9_of_a_node_under_load_loses_nothing_acknowledged() -> None:
    """30 clients in 6 rooms; kill -9 of a whole node; every room is served again."""
    c = Cluster().start()
    try:
        rooms = [f"load-{i}" for i in range(6)]
        with reference_clients(c.lb, [r for r in rooms for _ in range(5)]) as clients:
            wait_for(lambda: all(x.client_no for x in clients), 20, what="30 client numbers")
            numbers = {x.device_id: x.client_no for x in clients}
            writers, seen, counter = _ticking_rooms(clients, rooms, 5)
            victim = c.nodes[2]
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            acknowledged = {r: max(seen[r]) for r in rooms}
            pending = set(rooms)
            windows = {}
            while pending and time.monotonic() - killed < 30:
                for r in list(pending):
                    if _room_served(c.lb, r, f"probe-{r}"):
                        windows[r] = time.monotonic() - killed
                        pending.discard(r)
                _drive(clients, writers, 1, counter)
            assert not pending, f"rooms never served again: {pending}"
            print("unavailability after kill -9 (s):", {r: round(w, 2) for r, w in windows.items()})
            assert max(windows.values()) < 20
            for r in rooms:
                value = wait_for(lambda r=r: rest_global(c.lb, r, "tick"), 10, what=f"REST {r}")
                assert int(value) >= acknowledged[r], (r, value, acknowledged[r])
            # Everyone's number is kept; clients that were on the dead node are back.
            _drive(clients, writers, 10, counter)
            for x in clients:
                assert x.client_no == numbers[x.device_id]
            wait_for(lambda: all(max(seen[r]) > max(acknowledged.values()) for r in rooms), 15,
                     what="syncs flow again in every room")
    finally:
        c.stop()


def test_graceful_stop_of_a_node_loses_nothing_and_nobody_rejoins_by_hand() -> None:
    c = Cluster().start()
    try:
        rooms = [f"calm-{i}" for i in range(4)]
        with reference_clients(c.lb, [r for r in rooms for _ in range(3)]) as clients:
            wait_for(lambda: all(x.client_no for x in clients), 20, what="numbers")
            numbers = {x.device_id: x.client_no for x in clients}
            writers, seen, counter = _ticking_rooms(clients, rooms, 3)
            acknowledged = {r: max(seen[r]) for r in rooms}
            leaving = c.nodes[1]
            assert leaving.stop() == 0
            c.wait_view([c.nodes[0], c.nodes[2]])
            started = counter[0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(max(seen[r]) > started for r in rooms):
                _drive(clients, writers, 1, counter)
            assert all(max(seen[r]) > started for r in rooms), "a room stopped syncing after the stop"
            for r in rooms:
                assert int(rest_global(c.lb, r, "tick") or 0) >= acknowledged[r]
            assert {x.device_id: x.client_no for x in clients} == numbers
    finally:
        c.stop()


def test_a_node_joining_later_takes_its_share_of_rooms() -> None:
    c = Cluster(count=3)
    late = c.nodes.pop()
    c.start()
    try:
        rooms = [f"grow-{i}" for i in range(12)]
        moved = [r for r in rooms if owner_name(r, c.view(c.nodes + [late])) == late.node_id]
        assert moved, "some rooms must belong to the joiner"
        with reference_clients(c.lb, [r for r in rooms for _ in range(2)]) as clients:
            wait_for(lambda: all(x.client_no for x in clients), 20, what="numbers")
            numbers = {x.device_id: x.client_no for x in clients}
            for i in range(len(rooms)):
                clients[2 * i].set_global_variable("color", f"c{i}")
            wait_for(lambda: all(clients[2 * i + 1].get_global_variable("color") == f"c{i}"
                                 for i in range(len(rooms))), 10, what="values synced")
            late.start()
            c.nodes.append(late)
            c.wait_view(c.nodes)
            counter = [0]
            writers = {r: clients[2 * i] for i, r in enumerate(rooms)}

            def joiner_serves_its_rooms() -> bool:
                _drive(clients, writers, 1, counter)
                st = late.child_status("shard-0") or {}
                return st.get("rooms", 0) >= len(moved)

            wait_for(joiner_serves_its_rooms, 20, interval=0.1, what="joiner loads its rooms")
            for i, r in enumerate(rooms):
                assert rest_global(c.lb, r, "color") == f"c{i}"
            assert {x.device_id: x.client_no for x in clients} == numbers
    finally:
        c.stop()
        late.stop()


def owner_name(room: str, view: ClusterView) -> str:
    from relay.cluster.placement import owner_of

    return owner_of(room.encode(), view)[0]


def test_relayctl_status_shows_the_cluster_and_forwarded_traffic(cluster: Cluster) -> None:
    import subprocess

    from tests.support import RELAYCTL, REPO

    a = RawClient(cluster.lb, "status-room", "st-a", subscribe=False)
    try:
        a.join()
        for _ in range(3):
            a.send_control(Rpc(0, "st-a", (), "x", "[]"))
    finally:
        a.close()
    time.sleep(1.2)  # status files are written every second
    outputs = [
        subprocess.run(RELAYCTL + ["status", "--run-dir", n.run_dir], cwd=REPO, capture_output=True, text=True,
                       timeout=20).stdout
        for n in cluster.nodes
    ]
    for node, out in zip(cluster.nodes, outputs, strict=True):
        assert f"node {node.node_id}: shared store" in out, out
        assert "n1(1), n2(1), n3(1)" in out, out
        assert "node links: forwarded out" in out, out
    forwarded = [int(out.split("node links: forwarded out ")[1].split()[0]) for out in outputs]
    assert sum(forwarded) > 0, outputs


def test_the_owner_fans_rpcs_out_only_while_every_member_is_its_own(cluster: Cluster) -> None:
    """The ingress of the room's owner delivers its RPCs itself while all the
    room's control connections are on that node; once a member joins through
    another node, the room's RPCs go through its shard again, to everyone."""
    room = next(f"fan-{i}" for i in range(100) if owner_name(f"fan-{i}", cluster.view()) == "n1")
    owner, other = cluster.nodes[0], cluster.nodes[1]

    def fast() -> int:
        return ((owner.child_status("ingress") or {}).get("rpc_fanout") or {}).get("fast", 0)

    a = RawClient(owner, room, "fo-a", subscribe=False)
    b = RawClient(owner, room, "fo-b", subscribe=False)
    c = RawClient(other, room, "fo-c", subscribe=False)
    try:
        a.join()
        b.join()
        before = fast()
        for i in range(10):
            a.send_control(Rpc(0, "fo-a", (), f"local-{i}", "[]"))
        for client in (a, b):
            got = [client.recv_control_until(lambda m: isinstance(m, Rpc), 5) for _ in range(10)]
            assert [m.function_name for m in got if m] == [f"local-{i}" for i in range(10)]
        wait_for(lambda: fast() >= before + 8, 5, what="RPCs fanned out by the owner's ingress")
        c.join()
        time.sleep(1.2)  # status files are written every second
        before = fast()
        for i in range(10):
            a.send_control(Rpc(0, "fo-a", (), f"mixed-{i}", "[]"))
        for client in (a, b, c):
            got = [client.recv_control_until(lambda m: isinstance(m, Rpc) and m.function_name.startswith("mixed"), 5)
                   for _ in range(10)]
            assert [m.function_name for m in got if m] == [f"mixed-{i}" for i in range(10)]
        time.sleep(1.2)
        assert fast() == before  # the shard delivered them, the remote member included
    finally:
        for client in (a, b, c):
            client.close()
