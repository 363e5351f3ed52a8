"""Per-hop breakdown of control latency and the slow-turn recorder (issue: control latency)."""

from __future__ import annotations

import gc
import time

from relay.frames import HEADER, stamp_sent, unicast_frames
from relay.histogram import HOPS, ControlHops
from relay.protocol.messages import Rpc
from relay.slow_turns import SlowTurns
from tests.support import RawClient, RelayNode, wait_for


def test_unicast_header_carries_every_hop_stamp() -> None:
    frames = unicast_frames(b"room", b"\x03payload", [b"id"], 10, 1, 15, 20, 30)
    frames[0] = stamp_sent(frames[0], 40)
    assert HEADER.unpack(frames[0]) == (0, 1, 10, 15, 20, 30, 40)
    assert frames[1:3] == [b"room", b"\x03payload"]


def test_hops_split_the_total_and_keep_the_maximum() -> None:
    hops = ControlHops()
    ms = 1_000_000
    hops.observe(0, 1 * ms, 3 * ms, 6 * ms, 10 * ms, 15 * ms, 21 * ms)
    hops.observe(0, 1 * ms, 2 * ms, 3 * ms, 4 * ms, 5 * ms, 6 * ms)
    out = hops.to_dict()
    assert list(out) == list(HOPS)
    assert [round(out[name]["max"] * 1000, 3) for name in HOPS] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert all(out[name]["count"] == 2 for name in HOPS)
    assert round(sum(out[name]["sum"] for name in HOPS) * 1000, 3) == 27.0


def test_slow_turns_keep_the_worst_with_their_phases_and_gc() -> None:
    turns = SlowTurns(threshold=0.005, keep=2)
    try:
        for pause in (0.0, 0.006, 0.02, 0.012):
            turns.begin()
            time.sleep(pause)
            turns.mark("journal")
            if pause == 0.02:
                gc.collect()
            turns.mark("send")
            turns.end(rooms=3, pause=pause)
        out = turns.to_dict()
        assert out["over_10ms"] >= 2
        # Only the two slowest are kept, slowest first; the quick turn is not even counted.
        assert [w["pause"] for w in out["worst"]] == [0.02, 0.012]
        worst = out["worst"][0]
        assert worst["phases"]["journal"] >= 19 and worst["rooms"] == 3
        assert worst["gc_ms"] > 0
    finally:
        turns.close()


def test_a_node_publishes_the_hop_breakdown_of_real_rpcs() -> None:
    # Through the shard: with the ingress's fan-out the RPCs would take no hop.
    with RelayNode(shards=1, store="", extra_args=["--no-rpc-fast-path"]) as node:
        a = RawClient(node, "hops", "hop-a", subscribe=False)
        b = RawClient(node, "hops", "hop-b", subscribe=False)
        try:
            a.join()
            b.join()
            for i in range(20):
                a.send_control(Rpc(0, "hop-a", (), f"f{i}", "[]"))
                assert b.recv_control_until(lambda m: isinstance(m, Rpc), 2) is not None

            def hops() -> dict:
                return (node.child_status("ingress") or {}).get("control_hops", {})

            wait_for(lambda: hops().get("router_send", {}).get("count", 0) >= 20, 5, what="hops published")
            out = hops()
            assert set(out) == set(HOPS)
            assert all(out[name]["count"] >= 20 and out[name]["max"] >= 0 for name in HOPS)
            assert "slow_turns" in (node.child_status("shard-0") or {})
        finally:
            a.close()
            b.close()


def test_identities_travel_packed_in_one_frame() -> None:
    from relay.frames import BatchError, pack_identities, unpack_identities

    ids = [b"\x00\x01abc", b"\x00\x01" + b"x" * 253, b"\x00\x02"]
    frames = unicast_frames(b"room", b"\x03p", ids, 1, 2, 3, 4, 5)
    assert len(frames) == 4 and unpack_identities(frames[3]) == ids
    assert unpack_identities(pack_identities([])) == []
    import pytest

    with pytest.raises(BatchError):
        unpack_identities(pack_identities(ids)[:-1])
