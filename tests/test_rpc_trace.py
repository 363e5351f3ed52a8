"""Per-RPC trace (relay/rpc_trace.py) and the hop split that joins it with
the load generator's (bench/rpc_trace.py)."""

from __future__ import annotations

import glob
import os
import time
import zlib

from bench import rpc_trace
from relay.protocol import encode
from relay.protocol.messages import Rpc
from relay.rpc_trace import ENV, FIELDS, RpcTrace, read
from tests.support import RawClient, RelayNode, wait_for


def test_hops_add_up_to_the_latency_and_overlaps_count_from_the_previous_end() -> None:
    # sent 0; ingress polled from 1 ms, woke at 3, read at 4, last copy out at 6;
    # the receiver had been polling since 5 (before the copy left), woke at 9, read at 10
    ms = 1_000_000
    assert rpc_trace.hops(0, 1 * ms, 3 * ms, 4 * ms, 6 * ms, 5 * ms, 9 * ms, 10 * ms) == (
        1000, 2000, 1000, 2000, 0, 3000, 1000)
    # read in the same turn after the poll returned: the wait inside the turn starts at the send
    got = rpc_trace.hops(2 * ms, 0, 1 * ms, 3 * ms, 4 * ms, 8 * ms, 9 * ms, 9 * ms)
    assert got == (0, 0, 1000, 1000, 4000, 1000, 0) and sum(got) == 7000


def test_a_full_trace_counts_what_it_cannot_keep(tmp_path) -> None:
    trace = RpcTrace(str(tmp_path / "t.trace"), limit=2)
    for i in range(3):
        trace.record(i, 1, 2, 3, 4)
    trace.write()
    assert trace.dropped == 1
    assert read(str(tmp_path / "t.trace")) == [(0, 1, 2, 3, 4), (1, 1, 2, 3, 4)]


def test_a_node_traces_the_rpcs_its_ingress_fans_out_and_the_join_splits_them(tmp_path) -> None:
    with RelayNode(shards=1, store="", env={ENV: str(tmp_path)}) as node:
        a = RawClient(node, "trace", "trace-a", subscribe=False)
        b = RawClient(node, "trace", "trace-b", subscribe=False)
        try:
            no_a = a.join()
            b.join()

            def fast() -> int:
                return (node.child_status("ingress") or {}).get("rpc_fanout", {}).get("fast", 0)

            # Tables reach the ingress a moment after the joins: send until one RPC took the fast path.
            sent: dict[int, int] = {}  # crc32 -> monotonic ns when sent
            i = 0
            while fast() < 3 and i < 200:
                payload = encode(Rpc(no_a, "trace-a", (), f"f{i}", "[]"))
                sent[zlib.crc32(payload)] = time.monotonic_ns()
                a.send_control_raw([a.room_bytes, payload])
                i += 1
                time.sleep(0.02)
            wait_for(lambda: fast() >= 3, 5, what="RPCs fanned out by the ingress")
        finally:
            a.close()
            b.close()
    # Written when the ingress stops: one record per RPC it fanned out, its
    # crc32 that of the payload as the client sent it, the marks in order.
    files = glob.glob(os.path.join(str(tmp_path), "ingress-*.trace"))
    assert len(files) == 1
    records = read(files[0])
    assert len(records) >= 3 and all(len(r) == FIELDS for r in records)
    for crc, polled, woke, read_ns, done in records:
        assert crc in sent
        assert polled <= woke <= read_ns <= done
        assert sent[crc] <= read_ns
    # A receiver's trace for the traced RPCs joins to hops that sum to each latency.
    lg = RpcTrace(str(tmp_path / "loadgen-x-0-1.trace"))
    for crc, _, _, _, done in records:
        lg.record(crc, sent[crc], done, done + 1000, done + 2000)
    lg.write()
    joined, missing = rpc_trace.join(str(tmp_path))
    assert missing == 0 and len(joined) == len(records)
    for total, hops, _ in joined:
        assert total - len(hops) <= sum(hops) <= total  # each hop rounded down to µs
    assert "receipts joined" in rpc_trace.report(str(tmp_path))
