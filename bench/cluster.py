"""The cost of the cross-node hop: `python -m bench.cluster [RUNS]` (also `make bench-cluster`).

The same load (6 rooms x 10 clients at 10 Hz poses, 5 RPC/s and 2 NV
writes/s per room, protocol-true load generator) against three set-ups on
this machine, all on the shared store (a real valkey-server) so only the
topology differs:

* ``1 node``: clients connect straight to one node (1 shard);
* ``1 node + LB``: the same node behind HAProxy (the balancer's own hop);
* ``1 node x3 + LB``: one node with 3 shards behind HAProxy: as many shards
  (and room owners) as the cluster below, without any node link, so the
  difference to the next line is the node links alone;
* ``3 nodes + LB``: three nodes on 127.0.0.2-.4 behind HAProxy, each port
  balanced on its own, so most messages cross a node link (forwarded to the
  room's owner, unicasts back to the client's node, broadcasts through the
  owner's cluster PUB to every proxy that has subscribers).

Runs are interleaved (1, LB, 3, 1, LB, 3, ...) so a drift of the machine
hits each set-up alike; the report gives the median and the range over runs
of RPC and NV p50/p99 and of server CPU (every relay process and HAProxy)
per 1 000 relayed messages. On 2 cores the three nodes share the CPU the
single node had to itself: this measures per-message overhead, not
throughput scaling.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import psutil

from bench.loadgen import LoadConfig
from bench.loadgen import run as run_load
from tests.haproxy_lb import Balancer
from tests.support import RelayNode
from tests.valkey_server import ValkeyServer

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
RESULTS = Path(__file__).resolve().parent / "results"
IDLE_WINDOW = 5.0


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


SETUPS = ("1 node", "1 node + LB", "1 node x3 + LB", "3 nodes + LB")


def _measure(setup: str, valkey: ValkeyServer, duration: float) -> dict:
    count = 3 if setup == "3 nodes + LB" else 1
    shards = 3 if setup == "1 node x3 + LB" else 1
    nodes = [
        RelayNode(shards=shards, store=valkey.fresh_db_url(), node_id=f"b{i + 1}",
                  host=HOSTS[i] if count > 1 else "127.0.0.1")
        for i in range(count)
    ]
    if count > 1:
        url = nodes[0].store
        for n in nodes:
            n.store = url
    lb = None
    try:
        for n in nodes:
            n.start()
        if count > 1:
            ids = [n.node_id for n in nodes]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                views = [sorted(x["node_id"] for x in ((n.supervisor_state() or {}).get("cluster") or {}).get("nodes", []))
                         for n in nodes]
                if all(v == ids for v in views):
                    break
                time.sleep(0.1)
            time.sleep(0.5)
        target = nodes[0]
        if setup != "1 node":
            lb = Balancer(nodes, balance="roundrobin").start()
            target = lb
        pids = [n.proc.pid for n in nodes] + ([lb.proc.pid] if lb else [])
        # What the set-up burns with no clients (timers, heartbeats, status
        # files, membership refresh: three nodes pay it three times), so the
        # per-message figure can also be given above idle.
        idle_start = _cpu(pids)
        time.sleep(IDLE_WINDOW)
        idle_rate = (_cpu(pids) - idle_start) / IDLE_WINDOW
        cfg = LoadConfig(
            control_port=target.control_port, transform_port=target.transform_port, pub_port=target.pub_port,
            rooms=6, clients_per_room=10, pose_hz=10, rpc_hz=5, nv_hz=2,
            warmup=2.0, duration=duration, grace=1.0, room_prefix="cl-r",
        )
        marks: dict[str, float] = {}
        summary = run_load(cfg, on_phase=lambda phase: marks.__setitem__(phase, _cpu(pids)))
        cpu = marks.get("window_end", 0.0) - marks.get("window_start", 0.0)
        forwarded = 0
        for n in nodes:
            links = (n.child_status("ingress") or {}).get("links") or {}
            forwarded += links.get("forwarded_messages", 0)
        msgs = summary["messages_window"]
        return {
            "setup": setup,
            "rpc_p50": summary["rpc"].get("p50"), "rpc_p99": summary["rpc"].get("p99"),
            "rpc_loss_pct": summary["rpc"].get("loss_pct"),
            "nv_p50": summary["nv"].get("p50"), "nv_p99": summary["nv"].get("p99"),
            "room_pose_ratio": summary["room_pose"].get("ratio"),
            "cpu_ms_per_1k": 1e6 * cpu / msgs if msgs else None,
            "cpu_above_idle_ms_per_1k": 1e6 * (cpu - idle_rate * duration) / msgs if msgs else None,
            "idle_cores": idle_rate,
            "forwarded_messages": forwarded,
            "messages_window": msgs,
        }
    finally:
        if lb is not None:
            lb.stop()
        for n in nodes:
            n.stop()


def main(runs: int = 3, duration: float = 10.0) -> list[dict]:
    valkey = ValkeyServer().start()
    rows: list[dict] = []
    try:
        for run in range(runs):
            for setup in SETUPS:
                row = _measure(setup, valkey, duration)
                row["run"] = run + 1
                rows.append(row)
                print(f"run {run + 1} {setup:15s} RPC p50 {row['rpc_p50']:.2f} p99 {row['rpc_p99']:.2f} ms "
                      f"(loss {row['rpc_loss_pct']:.2f} %)  NV p50 {row['nv_p50']:.2f} p99 {row['nv_p99']:.2f} ms  "
                      f"poses {row['room_pose_ratio']:.3f}  CPU {row['cpu_ms_per_1k']:.1f} ms/1k msgs "
                      f"({row['cpu_above_idle_ms_per_1k']:.1f} above idle; idle {row['idle_cores']:.3f} cores)  "
                      f"forwarded {row['forwarded_messages']}", flush=True)
    finally:
        valkey.close()
    lines = ["| set-up | RPC p50 ms | RPC p99 ms | NV p50 ms | NV p99 ms | server CPU ms / 1k msgs "
             "| above idle | idle cores | room poses |",
             "|---|---|---|---|---|---|---|---|---|"]
    med: dict[str, dict[str, float]] = {}
    for setup in SETUPS:
        sel = [r for r in rows if r["setup"] == setup]

        def cell(key: str, fmt: str = "{:.2f}", sel: list = sel, setup: str = setup) -> str:
            vals = [r[key] for r in sel if r[key] is not None]
            m = statistics.median(vals)
            med.setdefault(setup, {})[key] = m
            return f"{fmt.format(m)} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"

        lines.append(f"| {setup} | {cell('rpc_p50')} | {cell('rpc_p99')} | {cell('nv_p50')} | {cell('nv_p99')} | "
                     f"{cell('cpu_ms_per_1k', '{:.1f}')} | {cell('cpu_above_idle_ms_per_1k', '{:.1f}')} | "
                     f"{cell('idle_cores', '{:.3f}')} | {cell('room_pose_ratio', '{:.3f}')} |")
    one, lb, wide, three = med["1 node"], med["1 node + LB"], med["1 node x3 + LB"], med["3 nodes + LB"]
    lines += [
        "",
        f"Node links alone (3 nodes + LB vs 1 node x3 + LB): RPC p50 {three['rpc_p50'] - wide['rpc_p50']:+.2f} ms, "
        f"NV p50 {three['nv_p50'] - wide['nv_p50']:+.2f} ms, CPU per message "
        f"x{three['cpu_above_idle_ms_per_1k'] / wide['cpu_above_idle_ms_per_1k']:.2f} above idle.",
        f"Cross-node hop (3 nodes + LB vs 1 node + LB): RPC p50 {three['rpc_p50'] - lb['rpc_p50']:+.2f} ms, "
        f"NV p50 {three['nv_p50'] - lb['nv_p50']:+.2f} ms, CPU per message x{three['cpu_ms_per_1k'] / lb['cpu_ms_per_1k']:.2f} "
        f"(above idle x{three['cpu_above_idle_ms_per_1k'] / lb['cpu_above_idle_ms_per_1k']:.2f}).",
        f"Balancer hop (1 node + LB vs 1 node): RPC p50 {lb['rpc_p50'] - one['rpc_p50']:+.2f} ms, "
        f"CPU per message x{lb['cpu_ms_per_1k'] / one['cpu_ms_per_1k']:.2f}.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{time.strftime('%Y-%m-%d')}-cluster.md").write_text(
        f"# Cluster benchmark ({runs} interleaved runs, {duration:.0f} s windows; median (range))\n\n{text}\n"
    )
    return rows


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
