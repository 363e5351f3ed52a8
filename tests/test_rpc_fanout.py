"""Room RPCs fanned out by the ingress from its shard's route table (issue: control latency).

Pure decisions (supervisor/rpc_fanout.py), the shard's side (tables, DONE,
RPCs it is told of), and a real node whose clients cannot tell the paths apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from relay.config import RelayConfig
from relay.frames import (
    DELIVERED_LANE,
    HEADER,
    ROUTES_LANE,
    BatchBuilder,
    BatchError,
    decode_routes,
    encode_routes,
    node_tag,
    parse_done,
    routes_shard,
)
from relay.protocol import decode, encode
from relay.protocol.messages import (
    ClientHello,
    ClientVarClear,
    ClientVarSet,
    GlobalVarSet,
    Lane,
    Rpc,
)
from shard_worker.room import RoomSettings
from shard_worker.shard import ShardState
from supervisor.rpc_fanout import RpcFanout
from tests.support import RawClient, RelayNode, wait_for

TAG = node_tag(1)
A, B, C = TAG + b"\0\0a", TAG + b"\0\0b", TAG + b"\0\0c"


def rpc(device: str, targets: tuple[int, ...] = (), sender: int = 0, name: str = "f") -> bytes:
    return encode(Rpc(sender, device, targets, name, '["x"]'))


def fanout_with_room() -> RpcFanout:
    fanout = RpcFanout(TAG, shards=2)
    fanout.set_table(0, b"r", encode_routes([(1, b"dev-a", A), (2, b"dev-b", B), (3, "dév-c".encode(), C)]))
    return fanout


# ------------------------------------------------------------------ pure


def test_route_tables_round_trip_and_refuse_truncation() -> None:
    entries = [(1, b"dev-a", A), (65535, "dév".encode(), B)]
    table = encode_routes(entries)
    assert decode_routes(table) == entries
    assert decode_routes(b"") == []
    for cut in range(1, len(table)):
        if cut == len(encode_routes(entries[:1])):
            continue  # a whole first entry is a valid table
        with pytest.raises(BatchError):
            decode_routes(table[:cut])


def test_an_rpc_leaves_as_the_shard_would_have_re_encoded_it() -> None:
    fanout = fanout_with_room()
    out, recipients = fanout.plan(A, b"r", rpc("dev-a", sender=99), shard=0)
    # senderClientNo resolved, every other byte as sent; every member, sender included.
    assert out == rpc("dev-a", sender=1)
    assert decode(out) == Rpc(1, "dev-a", (), "f", '["x"]')
    assert sorted(recipients) == [b"\0\0a", b"\0\0b", b"\0\0c"]
    assert fanout.counts["fast"] == 1 and fanout.counts["fast_recipients"] == 3


def test_listed_targets_collapse_and_unknown_numbers_are_ignored() -> None:
    fanout = fanout_with_room()
    _, recipients = fanout.plan(C, b"r", rpc("dév-c", targets=(2, 9, 2, 1)), shard=0)
    assert recipients == (b"\0\0b", b"\0\0a")
    _, nobody = fanout.plan(C, b"r", rpc("dév-c", targets=(9,)), shard=0)
    assert nobody == ()


def test_what_the_shard_must_see_first_goes_through_it() -> None:
    fanout = fanout_with_room()
    assert fanout.plan(A, b"other", rpc("dev-a"), shard=0) is None  # no table
    assert fanout.plan(A, b"r", rpc("dev-a"), shard=1) is None  # the room moved to another shard
    assert fanout.plan(B, b"r", rpc("dev-a"), shard=0) is None  # another connection: the shard rebinds it
    assert fanout.plan(A, b"r", rpc("dev-new"), shard=0) is None  # a new member: the shard numbers it
    assert fanout.plan(A, b"r", encode(GlobalVarSet(0, "dev-a", "k", "v")), shard=0) is None
    assert fanout.plan(A, b"r", rpc("dev-a")[:-3], shard=0) is None  # malformed: the shard drops and counts it
    assert fanout.plan(A, b"r", encode(Rpc(0, "", (), "f", "[]")), shard=0) is None  # empty deviceId
    assert fanout.counts["fast"] == 0


def test_an_rpc_behind_an_unhandled_message_of_its_room_waits_for_the_shards_done() -> None:
    fanout = fanout_with_room()
    fanout.pushed(b"r", 0, 41)  # e.g. a hello, the room's 41st control message to shard 0
    assert fanout.plan(A, b"r", rpc("dev-a"), shard=0) is None
    fanout.handled(0, 40)
    assert fanout.plan(A, b"r", rpc("dev-a"), shard=0) is None
    fanout.handled(1, 41)  # another shard's DONE says nothing of this room
    assert fanout.plan(A, b"r", rpc("dev-a"), shard=0) is None
    assert fanout.counts["slow_pending"] == 3
    fanout.handled(0, 41)
    assert fanout.plan(A, b"r", rpc("dev-a"), shard=0) is not None
    assert not fanout.last_push  # handled rooms are forgotten


def test_a_members_variable_writes_do_not_hold_its_rooms_rpcs_back() -> None:
    fanout = fanout_with_room()
    write = encode(GlobalVarSet(0, "dev-a", "k", "v"))
    assert not fanout.blocks(A, b"r", write)
    assert not fanout.blocks(B, b"r", encode(ClientVarSet(0, "dev-b", 1, "k", "v")))
    assert fanout.blocks(B, b"r", write)  # dev-a's write from another connection rebinds it
    assert fanout.blocks(A, b"r", encode(GlobalVarSet(0, "dev-new", "k", "v")))  # a new member
    assert fanout.blocks(A, b"other", write)  # no table
    assert fanout.blocks(A, b"r", encode(ClientHello(8, 0, "dev-a")))
    assert fanout.blocks(A, b"r", encode(ClientVarClear(0, "dev-a")))
    assert fanout.blocks(A, b"r", b"")


def test_tables_die_with_their_shard_and_bad_tables_are_dropped() -> None:
    fanout = fanout_with_room()
    fanout.set_table(1, b"s", encode_routes([(1, b"dev-x", A)]))
    fanout.reset_shard(0, pushed=7)  # shard 0 restarted
    assert set(fanout.rooms) == {b"s"} and fanout.done[0] == 7
    fanout.set_table(1, b"s", encode_routes([(1, b"dev-x", node_tag(2) + b"x")]))  # another node's client
    assert fanout.rooms == {} and fanout.counts["tables_bad"] == 1
    fanout.set_table(1, b"s", encode_routes([(1, b"dev-x", A)]))
    fanout.set_table(1, b"s", b"")  # the shard gave the room up
    assert fanout.rooms == {}


def test_a_new_slot_layout_voids_the_tables_of_replaced_and_removed_slots() -> None:
    fanout = RpcFanout(TAG, shards=3)
    for shard, room in enumerate((b"r0", b"r1", b"r2")):
        fanout.set_table(shard, room, encode_routes([(1, b"d", A)]))
    fanout.pushed(b"r2", 2, 5)
    fanout.relayout([10, 11, 12], [10, 21], pushed=[3, 4])  # slot 1 replaced, slot 2 gone
    assert set(fanout.rooms) == {b"r0"}
    assert fanout.done == [0, 4]
    fanout.prune()
    assert fanout.last_push == {}
    fanout.relayout([10, 21], [10, 21, 30], pushed=[3, 4, 0])
    assert fanout.done == [0, 4, 0]
    # A room whose last message went to a slot that is gone since.
    fanout.set_table(0, b"r0", encode_routes([(1, b"d", A)]))
    fanout.pushed(b"r0", 2, 9)
    fanout.relayout([10, 21, 30], [10], pushed=[3])
    assert fanout.plan(A, b"r0", rpc("d"), shard=0) is not None


# --------------------------------------------------------------- shard


def state() -> ShardState:
    return ShardState(RoomSettings(), store=None, now=0.0)


def test_the_shard_marks_a_rooms_table_on_each_change_of_its_control_members() -> None:
    s = state()
    s.handle(Lane.CONTROL, A, b"r", encode(ClientHello(8, 0, "dev-a")), 1.0)
    assert s.routes_dirty == {"r"}
    assert decode_routes(s.rpc_routes("r", TAG, 10)) == [(1, b"dev-a", A)]
    s.routes_dirty.clear()
    s.handle(Lane.CONTROL, A, b"r", encode(GlobalVarSet(0, "dev-a", "k", "v")), 1.1)
    assert s.routes_dirty == set()  # same member, same connection
    s.handle(Lane.CONTROL, B, b"r", rpc("dev-a"), 1.2)  # the device's new connection
    assert s.routes_dirty == {"r"}
    assert decode_routes(s.rpc_routes("r", TAG, 10)) == [(1, b"dev-a", B)]
    assert s.rpc_routes("r", TAG, 0) == b""  # over the size bound: the shard keeps the room's RPCs
    assert s.rpc_routes("r", node_tag(2), 10) == b""  # a member on another node
    s.routes_dirty.clear()
    s.admin({"op": "evict", "room": "r", "device": "dev-a"}, 1.3)
    assert s.routes_dirty == {"r"} and s.rpc_routes("r", TAG, 10) == b""


def test_an_rpc_the_ingress_delivered_only_registers_its_sender() -> None:
    s = state()
    s.handle(Lane.CONTROL, A, b"r", encode(ClientHello(8, 0, "dev-a")), 1.0)
    s.handle(Lane.CONTROL, B, b"r", encode(ClientHello(8, 0, "dev-b")), 1.0)
    member = s.rooms["r"].members["dev-a"]
    assert s.handle(DELIVERED_LANE, A, b"r", rpc("dev-a"), 5.0) == []
    assert member.last_update == 5.0
    assert s.messages_in["rpc"] == 1 and s.rpcs_delivered_by_ingress == 1
    # Anything but an RPC on that lane is a bug somewhere: dropped and counted.
    assert s.handle(DELIVERED_LANE, A, b"r", encode(ClientHello(8, 0, "dev-a")), 5.1) == []
    assert s.drops.counts["wrong_lane"] == 1


@pytest.fixture
def shard(tmp_path) -> Iterator[tuple[Any, zmq.Socket, zmq.Socket, zmq.Socket]]:
    """A real in-memory ShardWorker, the PULL end of its egress and PUSHes into both inboxes."""
    from shard_worker.worker import ShardWorker

    config = RelayConfig(shards=1, data_dir="", run_dir=str(tmp_path))
    worker = ShardWorker(config, 0, str(tmp_path))
    ctx = zmq.Context.instance()
    egress = ctx.socket(zmq.PULL)
    egress.bind(worker.endpoints.egress)
    worker._open_sockets()
    inboxes = []
    for lane in (Lane.CONTROL, Lane.TRANSFORM):
        push = ctx.socket(zmq.PUSH)
        push.connect(worker.endpoints.shard_inbox(0, lane))
        inboxes.append(push)
    try:
        yield worker, egress, *inboxes
    finally:
        worker._close_sockets()
        for sock in (egress, *inboxes):
            sock.close(linger=0)


def drain(worker: Any, egress: zmq.Socket, until: Any, turns: int = 200) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    for _ in range(turns):
        worker._turn()
        while egress.poll(0):
            out.append(egress.recv_multipart())
        if until(out):
            break
    return out


def test_the_shard_sends_a_new_members_table_then_done_after_everything_it_caused(shard) -> None:
    worker, egress, control, transform = shard
    tag = worker.tag
    batch = BatchBuilder(Lane.CONTROL)
    batch.add(0, tag + b"\0\0a", b"r", encode(ClientHello(8, 0, "dev-a")))
    control.send(batch.take(0x55, 1, 0))
    out = drain(worker, egress, lambda out: any(len(m) == 1 and parse_done(m[0]) for m in out))
    kinds = []
    for m in out:
        if len(m) == 4:
            kinds.append("routes" if HEADER.unpack(m[0])[0] == ROUTES_LANE else "unicast")
        elif parse_done(m[0]):
            kinds.append("done")
    # The hello's own answers, the table naming the new member, and DONE last.
    assert kinds[-1] == "done" and "routes" in kinds and kinds.index("unicast") < kinds.index("done")
    table = next(m for m in out if len(m) == 4 and HEADER.unpack(m[0])[0] == ROUTES_LANE)
    assert table[1] == b"r" and routes_shard(table[3]) == 0
    assert decode_routes(table[2]) == [(1, b"dev-a", tag + b"\0\0a")]
    # The batch's running total (1 before it, plus its one message).
    assert [parse_done(m[0]) for m in out if len(m) == 1 and parse_done(m[0])] == [(0, 0x55, 2)]
    # An RPC the ingress delivered arrives with the poses: registration only, nothing sent.
    delivered = BatchBuilder(DELIVERED_LANE)
    delivered.add(0, tag + b"\0\0a", b"r", rpc("dev-a"))
    transform.send(delivered.take(0x55, 1, 0))
    wait_for(lambda: (worker._turn(), worker.state.rpcs_delivered_by_ingress)[1] == 1, 5,
             what="delivered RPC handled")
    assert not [m for m in drain(worker, egress, lambda out: False, turns=5) if len(m) == 4]


def test_with_the_fast_path_off_no_table_is_published(tmp_path) -> None:
    from shard_worker.worker import ShardWorker

    for config in (RelayConfig(shards=1, data_dir="", run_dir=str(tmp_path), rpc_fast_path=False),
                   RelayConfig(shards=1, data_dir="", run_dir=str(tmp_path), max_control_rate_per_client=5.0)):
        worker = ShardWorker(config, 0, str(tmp_path))
        worker.state.handle(Lane.CONTROL, worker.tag + b"a", b"r", encode(ClientHello(8, 0, "dev-a")), 1.0)
        worker._publish_routes()
        assert not worker.state.routes_dirty and len(worker.control) == 0


# ------------------------------------------------------------ real node


def rpcs_seen(client: RawClient, count: int) -> list[Rpc]:
    got = []
    while len(got) < count:
        msg = client.recv_control_until(lambda m: isinstance(m, Rpc), 3)
        assert msg is not None, f"only {len(got)} of {count} RPCs arrived"
        got.append(msg)
    return got


def test_a_node_fans_room_rpcs_out_at_the_ingress_and_a_new_connection_still_gets_its_echo() -> None:
    with RelayNode(shards=2, store="") as node:
        a = RawClient(node, "fan", "fan-a", subscribe=False)
        b = RawClient(node, "fan", "fan-b", subscribe=False)
        a2 = None
        try:
            no_a, no_b = a.join(), b.join()
            for i in range(30):
                a.send_control(Rpc(999, "fan-a", (), f"f{i}", "[]"))
            for client in (a, b):  # the sender's echo included, in order, number resolved
                got = rpcs_seen(client, 30)
                assert [m.function_name for m in got] == [f"f{i}" for i in range(30)]
                assert {m.sender_client_no for m in got} == {no_a}
            b.send_control(Rpc(0, "fan-b", (no_b,), "only-me", "[]"))
            assert rpcs_seen(b, 1)[0].function_name == "only-me"

            def fanout() -> dict:
                return (node.child_status("ingress") or {}).get("rpc_fanout", {})

            wait_for(lambda: fanout().get("fast", 0) >= 25, 5, what="RPCs fanned out by the ingress")
            # The same device on a new connection, no hello: the table still
            # names the old one, so this RPC goes through the shard, which
            # rebinds the device; the echo reaches the new connection.
            a2 = RawClient(node, "fan", "fan-a", subscribe=False)
            a2.send_control(Rpc(0, "fan-a", (), "from-a2", "[]"))
            assert rpcs_seen(a2, 1)[0].function_name == "from-a2"
            assert rpcs_seen(b, 1)[0].sender_client_no == no_a
            wait_for(lambda: fanout().get("slow_sender", 0) >= 1, 5, what="the new connection's RPC sent to the shard")
            # The shards heard of every RPC the ingress delivered (senders stay registered).
            wait_for(lambda: sum((node.child_status(f"shard-{i}") or {}).get("rpcs_delivered_by_ingress", 0)
                                 for i in range(2)) >= 25,
                     5, what="delivered RPCs reported to the shard")
        finally:
            for client in (a, b, a2):
                if client is not None:
                    client.close()
