"""Per-room hand-over pause while a node changes its shard layout.

``python -m bench.handover [RUNS]`` (``make bench-handover``). Each run starts
``relayctl start --shards 2`` on one store (SQLite, then Valkey), with 24
rooms, each with a sender and a receiver (raw protocol clients). Every sender
sends a room RPC every 20 ms carrying its send time; the receiver's latency
for each RPC is what a client of that room sees. With the stream running
the node is scaled 2 -> 4, 4 -> 2, and given a SIGHUP rolling restart (every
room moves once per replaced worker).

Per operation and per room that moved, the *pause* is the room's worst RPC
latency from the operation's start until one second after it finished,
minus its median latency before. The baseline, measured in the same run, is
the same figure over a window of the same length with no operation (the
stream's own jitter). Reported: p50 / p99 / max of both over (room,
operation) pairs, per run and the spread over runs, lost RPCs (must be 0),
and the shards' own hand-over wait histogram (messages held for a lease).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import orjson
import zmq

from relay.hashing import shard_for_room
from relay.protocol import decode
from relay.protocol.messages import Rpc
from tests.support import RELAYCTL, REPO, RawClient, RelayNode, free_port_block
from tests.valkey_server import ValkeyServer

ROOMS = 24
INTERVAL = 0.02
SETTLE = 1.0


@dataclass
class Stream:
    """Senders and receivers of every room, driven from one thread."""

    node: RelayNode
    rooms: list[str]
    senders: list[RawClient] = field(default_factory=list)
    receivers: list[RawClient] = field(default_factory=list)
    # room index -> [(send time, latency)]
    samples: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    sent: int = 0
    received: int = 0

    def open(self) -> None:
        for i, room in enumerate(self.rooms):
            sender = RawClient(self.node, room, f"hs-{i}", subscribe=False)
            receiver = RawClient(self.node, room, f"hr-{i}", subscribe=False)
            sender.join()
            receiver.join()
            self.senders.append(sender)
            self.receivers.append(receiver)
            self.samples[i] = []
        self.poller = zmq.Poller()
        for sock in (*[r.control for r in self.receivers], *[s.control for s in self.senders]):
            self.poller.register(sock, zmq.POLLIN)
        self._room_of = {r.control: i for i, r in enumerate(self.receivers)}
        self._next_hello = 0.0

    def run_for(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        next_send = time.perf_counter()
        while time.perf_counter() < end:
            now = time.perf_counter()
            if now >= self._next_hello:
                # Members that send nothing else time out (BEHAVIOR §2): stay in.
                self._next_hello = now + 1.0
                for client in (*self.senders, *self.receivers):
                    client.hello()
            if now >= next_send:
                for i, sender in enumerate(self.senders):
                    sender.send_control(Rpc(0, sender.device_id, (), "p", f"[{i},{time.perf_counter()!r}]"))
                    self.sent += 1
                next_send += INTERVAL
            for sock, _ in self.poller.poll(max(0, int((next_send - time.perf_counter()) * 1000))):
                while sock.poll(0):
                    _room, payload = sock.recv_multipart()
                    index = self._room_of.get(sock)
                    if index is None:
                        continue  # a sender's own copy
                    msg = decode(payload)
                    if isinstance(msg, Rpc):
                        i, sent_at = orjson.loads(msg.arguments_json)
                        self.samples[i].append((sent_at, time.perf_counter() - sent_at))
                        self.received += 1

    def close(self) -> None:
        for client in (*self.senders, *self.receivers):
            client.close()


def _pause(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    before = [lat for t, lat in samples if start - 2.0 <= t < start]
    during = [lat for t, lat in samples if start <= t <= end]
    if not before or not during:
        return None
    return max(during) - statistics.median(before)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def one_run(store: str) -> dict:
    node = RelayNode(shards=2, store=store)
    if node.store:
        node.cluster_port = free_port_block(2 + 3 * 4, node.host)
    rooms = [f"handover-{i}" for i in range(ROOMS)]
    pauses: list[float] = []
    baseline: list[float] = []
    with node:
        stream = Stream(node, rooms)
        stream.open()
        try:
            stream.run_for(3.0)
            operations = [("scale", 2, 4), ("scale", 4, 2), ("reload", 2, 2)]
            for kind, old, new in operations:
                # Baseline: a quiet window as long as the operation will take, same rooms.
                quiet_start = time.perf_counter()
                if kind == "scale":
                    subprocess.run(RELAYCTL + ["scale", str(new), "--run-dir", node.run_dir], cwd=REPO,
                                   check=True, capture_output=True, timeout=30)
                else:
                    os.kill(node.proc.pid, signal.SIGHUP)
                op_start = quiet_start
                deadline = time.perf_counter() + 60
                stream.run_for(0.3)
                while not node.layout_settled(new) and time.perf_counter() < deadline:
                    stream.run_for(0.1)
                op_end = time.perf_counter() + SETTLE
                stream.run_for(SETTLE + 0.5)
                moved = [i for i, r in enumerate(rooms)
                         if kind == "reload" or shard_for_room(r.encode(), old) != shard_for_room(r.encode(), new)]
                quiet_from = time.perf_counter()
                stream.run_for(op_end - op_start + 2.0)
                for i in moved:
                    p = _pause(stream.samples[i], op_start, op_end)
                    if p is not None:
                        pauses.append(p)
                    b = _pause(stream.samples[i], quiet_from + 2.0, quiet_from + 2.0 + (op_end - op_start))
                    if b is not None:
                        baseline.append(b)
            stream.run_for(1.0)
        finally:
            stream.close()
        held = [node.child_status(f"shard-{k}") or {} for k in range(2)]
    lost = stream.sent - stream.received
    return {
        "pause": (_pct(pauses, 0.5), _pct(pauses, 0.99), max(pauses) * 1000 if pauses else float("nan")),
        "baseline": (_pct(baseline, 0.5), _pct(baseline, 0.99), max(baseline) * 1000 if baseline else float("nan")),
        "pairs": len(pauses),
        "lost": lost,
        "held": [h.get("handover_wait") for h in held],
    }


def main(runs: int = 3) -> None:
    server = ValkeyServer().start()
    results: dict[str, list[dict]] = {"sqlite": [], "valkey": []}
    try:
        for run in range(runs):
            for kind in ("sqlite", "valkey"):
                store = server.fresh_db_url() if kind == "valkey" else ""
                result = one_run(store)
                results[kind].append(result)
                p, b = result["pause"], result["baseline"]
                print(f"run {run + 1} {kind:6s}: pause p50 {p[0]:6.1f} p99 {p[1]:6.1f} max {p[2]:6.1f} ms"
                      f" | baseline p50 {b[0]:5.1f} p99 {b[1]:5.1f} max {b[2]:5.1f} ms"
                      f" | {result['pairs']} room moves, lost {result['lost']}", flush=True)
    finally:
        server.close()
    print()
    print("| store | pause p50 ms | pause p99 ms | baseline p99 ms | p99 / baseline p99 | lost |")
    print("|---|---|---|---|---|---|")
    for kind, rows in results.items():
        p50 = [r["pause"][0] for r in rows]
        p99 = [r["pause"][1] for r in rows]
        b99 = [r["baseline"][1] for r in rows]
        ratio = statistics.median(p99) / statistics.median(b99) if statistics.median(b99) > 0 else float("nan")
        print(f"| {kind} | {statistics.median(p50):.1f} ({min(p50):.1f}-{max(p50):.1f})"
              f" | {statistics.median(p99):.1f} ({min(p99):.1f}-{max(p99):.1f})"
              f" | {statistics.median(b99):.1f} ({min(b99):.1f}-{max(b99):.1f}) | {ratio:.1f}"
              f" | {sum(r['lost'] for r in rows)} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
