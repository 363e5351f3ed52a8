"""Presence and poses end to end: `relayctl start --shards 2` with real peers.

Peers are the reference Python client (an unmodified NetSync client) and the
in-repo RawClient. Everything runs on 127.0.0.1 in real processes.
"""

from __future__ import annotations

import time

import pytest
import zmq

from relay.hashing import shard_for_room
from relay.protocol import encode
from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    ClientHello,
    ClientPose,
    DeviceIdMapping,
    GlobalVarSync,
    PlacedRotation,
    PoseBody,
    RoomPose,
)
from tests.support import (
    RawClient,
    RelayNode,
    reference_clients,
    send_pose,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def head_pose(device_id: str, x: int, seq: int = 0, stealth: bool = False) -> ClientPose:
    flags = 0x01 if stealth else FLAG_HEAD_VALID
    head = None if stealth else PlacedRotation(x, 150, 0, 0xE0080200)
    return ClientPose(8, device_id, PoseBody(seq, flags, 0x1F, head=head))


def latest_room_pose(client: RawClient, timeout: float = 2.0, want: int | None = None) -> RoomPose | None:
    """Newest room pose on the client's exact topic (optionally with `want` entries)."""
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        got = client.recv_pub(max(0.0, deadline - time.monotonic()))
        if got is None:
            break
        topic, msg = got
        if topic == client.room_bytes and isinstance(msg, RoomPose):
            found = msg
            if want is None or len(msg.clients) == want:
                return msg
    return found


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def node(request: pytest.FixtureRequest):
    """One node per store for the whole module: SQLite, then the shared Valkey."""
    store = request.getfixturevalue("valkey").fresh_db_url() if request.param == "redis" else ""
    with RelayNode(shards=2, store=store) as relay_node:
        yield relay_node


def test_reference_clients_join_and_see_each_other(node: RelayNode) -> None:
    with reference_clients(node, ["ref-room", "ref-room"]) as (a, b):
        def both_posed() -> bool:
            send_pose(a, 1.0)
            send_pose(b, 2.0)
            snap = a.get_room_transform_data()
            return snap is not None and len(snap.clients) == 2

        wait_for(both_posed, 10, interval=0.1, what="both clients in the room pose")
        assert a.client_no is not None and b.client_no is not None
        assert a.client_no != b.client_no
        assert a.is_ready and b.is_ready
        snap = b.get_room_transform_data()
        assert snap.clients[a.client_no].head.pos_x == pytest.approx(1.0)
        assert snap.clients[b.client_no].head.pos_x == pytest.approx(2.0)
        # Mapping broadcasts are throttled (mapping_throttle_interval), so the
        # room pose may reach b before the mapping that names a does.
        wait_for(
            lambda: b.get_device_id_from_client_no(a.client_no) == a.device_id,
            5,
            interval=0.05,
            what="b learns a's device id from a DEVICE_ID_MAPPING",
        )


def test_rooms_never_mix_bodies_even_with_equal_client_numbers(node: RelayNode) -> None:
    # Two rooms on the same shard and one on the other: each has a client no. 1.
    by_shard: dict[int, list[str]] = {0: [], 1: []}
    for room in (f"iso-{i}" for i in range(40)):
        by_shard[shard_for_room(room.encode(), 2)].append(room)
    chosen = by_shard[0][:2] + by_shard[1][:2]
    assert {shard_for_room(r.encode(), 2) for r in chosen} == {0, 1}
    clients = [RawClient(node, room, f"dev-{room}") for room in chosen]
    try:
        for c in clients:
            assert c.join() == 1
        for i, c in enumerate(clients):
            c.send_transform(head_pose(c.device_id, 1000 + i))
        time.sleep(0.3)
        for i, c in enumerate(clients):
            c.send_transform(head_pose(c.device_id, 1000 + i, seq=1))
            pose = latest_room_pose(c, want=1)
            assert pose is not None and pose.room_id == c.room
            assert [e.client_no for e in pose.clients] == [1]
            assert pose.clients[0].body.head.x == 1000 + i, "a body from another room leaked in"
    finally:
        for c in clients:
            c.close()


def test_forty_rooms_over_both_shards_work_concurrently(node: RelayNode) -> None:
    rooms = [f"many-{i}" for i in range(40)]
    assert {shard_for_room(r.encode(), 2) for r in rooms} == {0, 1}
    pairs = [(RawClient(node, r, f"{r}-a"), RawClient(node, r, f"{r}-b", subscribe=False)) for r in rooms]
    try:
        for a, b in pairs:
            a.hello()
            b.hello()
        for a, _b in pairs:
            assert a.recv_control_until(lambda m: isinstance(m, DeviceIdMapping), 5)
        for seq in range(3):
            for i, (a, b) in enumerate(pairs):
                a.send_transform(head_pose(a.device_id, i, seq))
                b.send_transform(head_pose(b.device_id, 10_000 + i, seq))
            time.sleep(0.15)
        for i, (a, _b) in enumerate(pairs):
            pose = latest_room_pose(a, timeout=3, want=2)
            assert pose is not None and len(pose.clients) == 2, a.room
            assert sorted(e.body.head.x for e in pose.clients) == [i, 10_000 + i]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_stealth_client_sees_others_but_is_never_seen(node: RelayNode) -> None:
    with reference_clients(node, ["stealth-room", "stealth-room"]) as (visible, hidden):
        wait_for(lambda: hidden.client_no is not None, 5, what="hidden number")
        assert hidden.send_stealth_handshake()

        def hidden_sees_visible() -> bool:
            send_pose(visible, 3.0)
            snap = hidden.get_room_transform_data()
            return snap is not None and visible.client_no in snap.clients

        wait_for(hidden_sees_visible, 10, interval=0.1, what="stealth client sees the visible one")
        wait_for(lambda: visible.is_client_stealth_mode(hidden.client_no), 5, what="stealth flag in mapping")
        for _ in range(10):
            send_pose(visible, 3.0)
            snap = visible.get_room_transform_data()
            assert snap is not None and hidden.client_no not in snap.clients
            time.sleep(0.1)


def test_silent_client_times_out_and_gets_its_number_back(tmp_path) -> None:
    config = write_config(tmp_path, client_timeout=1.0, cleanup_interval=0.2)
    with RelayNode(shards=2, extra_args=["--config", config]) as small:
        watcher = RawClient(small, "timeout-room", "watcher")
        quiet = RawClient(small, "timeout-room", "quiet", subscribe=False)
        try:
            watcher.join()
            first_no = quiet.join()
            quiet.send_transform(head_pose("quiet", 5))
            assert latest_room_pose(watcher, want=1) is not None

            def quiet_gone() -> bool:
                watcher.hello()  # keep the watcher alive
                pose = latest_room_pose(watcher, timeout=0.3)
                return pose is not None and all(e.client_no != first_no for e in pose.clients)

            started = time.monotonic()
            wait_for(quiet_gone, 6, interval=0.05, what="silent client removed")
            assert time.monotonic() - started >= 0.5
            mapping = watcher.recv_control_until(
                lambda m: isinstance(m, DeviceIdMapping) and all(e.device_id != "quiet" for e in m.mappings), 3
            )
            assert mapping is not None, "mapping without the removed member never came"
            newcomer = RawClient(small, "timeout-room", "newcomer", subscribe=False)
            try:
                assert newcomer.join() == first_no + 1
            finally:
                newcomer.close()
            assert quiet.join() == first_no, "a returning device must get its old number"
        finally:
            watcher.close()
            quiet.close()


def test_late_joiner_gets_state_and_reconnect_keeps_number(node: RelayNode) -> None:
    a = RawClient(node, "rejoin-room", "rejoin-a", subscribe=False)
    try:
        no = a.join()
        a.close()
        again = RawClient(node, "rejoin-room", "rejoin-a", subscribe=False)
        try:
            assert again.join() == no
        finally:
            again.close()
    finally:
        a.close()


def test_malformed_frames_are_dropped_and_counted(node: RelayNode) -> None:
    ctx = zmq.Context.instance()
    bad_control = ctx.socket(zmq.DEALER)
    bad_transform = ctx.socket(zmq.DEALER)
    for sock, port in ((bad_control, node.control_port), (bad_transform, node.transform_port)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(node.endpoint(port))
    good = RawClient(node, "after-garbage", "good-one")
    try:
        before_ingress = (node.child_status("ingress") or {}).get("drops", {})
        hello = encode(head_pose("x", 1))
        bad_control.send_multipart([b"only-one-frame"])
        bad_transform.send_multipart([b"r", hello, b"extra", b"frames"])
        bad_control.send_multipart([b"\xff\xfe", b"\x13\x08\x00\x01a"])
        bad_control.send_multipart([b"r" * 300, b"\x13\x08\x00\x01a"])
        bad_control.send_multipart([b"garbage-room", b"\x99garbage"])
        bad_control.send_multipart([b"garbage-room", hello])  # pose on the control lane
        bad_transform.send_multipart([b"garbage-room", encode(GlobalVarSync(()))])  # server type
        bad_transform.send_multipart([b"garbage-room", hello[:7]])  # truncated
        assert good.join() == 1
        good.send_transform(head_pose("good-one", 7))
        pose = latest_room_pose(good, want=1)
        assert pose is not None and pose.clients[0].body.head.x == 7

        def counters_moved() -> bool:
            ingress = (node.child_status("ingress") or {}).get("drops", {})
            shard_drops: dict[str, int] = {}
            for k in range(2):
                for reason, n in ((node.child_status(f"shard-{k}") or {}).get("drops", {})).items():
                    shard_drops[reason] = shard_drops.get(reason, 0) + n
            return (
                ingress.get("frame_count", 0) >= before_ingress.get("frame_count", 0) + 2
                and ingress.get("room_too_long", 0) >= before_ingress.get("room_too_long", 0) + 1
                and shard_drops.get("bad_utf8", 0) >= 1
                and shard_drops.get("wrong_lane", 0) >= 2
                and shard_drops.get("unknown_type", 0) >= 1
                and shard_drops.get("truncated", 0) >= 1
            )

        wait_for(counters_moved, 5, interval=0.2, what="drop counters")
        assert node.proc.poll() is None
    finally:
        bad_control.close()
        bad_transform.close()
        good.close()


def test_join_storm_of_300_clients_all_numbered(node: RelayNode) -> None:
    clients = [RawClient(node, f"storm-{i % 10}", f"storm-dev-{i}", subscribe=False) for i in range(300)]
    try:
        time.sleep(0.5)  # let all connections finish their handshake
        for c in clients:
            c.hello()
        deadline = time.monotonic() + 10
        pending = set(range(300))
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                c = clients[i]
                while c.control.poll(0):
                    msg = c.recv_control(0)
                    if isinstance(msg, DeviceIdMapping) and any(e.device_id == c.device_id for e in msg.mappings):
                        pending.discard(i)
                        break
            time.sleep(0.01)
        assert not pending, f"{len(pending)} clients never saw themselves in a mapping"
        # Each room numbered its 30 devices 1..30 without gaps or duplicates.
        for room in sorted({c.room for c in clients}):
            observer = RawClient(node, room, f"observer-{room}", subscribe=False)
            try:
                observer.hello()
                mapping = observer.recv_control_until(lambda m: isinstance(m, DeviceIdMapping), 3)
            finally:
                observer.close()
            assert mapping is not None
            storm_numbers = sorted(e.client_no for e in mapping.mappings if e.device_id.startswith("storm-dev-"))
            assert storm_numbers == list(range(1, 31)), room
    finally:
        for c in clients:
            c.close()


def test_a_peer_chosen_routing_id_too_long_to_tag_is_dropped_not_fatal(node: RelayNode) -> None:
    """ZeroMQ lets a peer pick its routing id (up to 255 bytes); the ingress
    prefixes its node tag, so ids over 253 bytes are refused and counted."""
    import zmq

    def ingress_restarts() -> int:
        return (node.supervisor_state() or {})["children"]["ingress"]["restarts"]

    restarts = ingress_restarts()
    ctx = zmq.Context.instance()
    odd = ctx.socket(zmq.DEALER)
    odd.setsockopt(zmq.LINGER, 0)
    odd.setsockopt(zmq.ROUTING_ID, b"x" * 254)
    odd.connect(node.endpoint(node.control_port))
    try:
        odd.send_multipart([b"long-id-room", encode(ClientHello(8, 0, "long-id"))])
        assert not odd.poll(1000), "a hello from an untaggable routing id was answered"
    finally:
        odd.close()
    normal = RawClient(node, "long-id-room", "normal-id", subscribe=False)
    try:
        assert normal.join() == 1  # the room never saw the odd peer
    finally:
        normal.close()
    time.sleep(1.2)  # the supervisor's state file is rewritten every 0.5 s
    assert ingress_restarts() == restarts, "the ingress died on the long routing id"
