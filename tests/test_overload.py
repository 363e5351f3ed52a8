"""Control first under transform overload, with real processes (issue: shaping).

One room is flooded with poses from hundreds of devices at 60 Hz while the
shard's transform budget is set low. Probe members send RPCs and NV sets:
every one must be delivered, in order, while room poses are visibly shaped.
Latency figures for this scenario are measured by `make bench` ("overload"
in BENCHMARKS.md), not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from relay.protocol.messages import GlobalVarSet, GlobalVarSync, RoomPose, Rpc
from tests.support import REPO, RawClient, RelayNode, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FLOOD_DEVICES = 300
FLOOD_HZ = 60
FLOOD_SECONDS = 8.0
BUDGET = 200_000  # bytes/s: a 300-member room pose costs far more than that


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_control_delivered_while_poses_are_shaped() -> None:
    args = ["--transform-budget-bytes-per-sec", str(BUDGET)]
    with RelayNode(shards=2, extra_args=args) as node:
        room = "overload-room"
        sender = RawClient(node, room, "probe-sender", subscribe=False)
        receiver = RawClient(node, room, "probe-receiver")
        flood = None
        try:
            sender.join()
            receiver.join()
            flood = subprocess.Popen(
                [sys.executable, "-m", "tests.tools.pose_flood", "127.0.0.1", str(node.transform_port),
                 room, str(FLOOD_DEVICES), str(FLOOD_HZ), str(FLOOD_SECONDS)],
                cwd=REPO, stdout=subprocess.PIPE, text=True,
            )
            time.sleep(1.5)  # let the flood reach steady state
            shard = next(k for k in range(2) if (node.child_status(f"shard-{k}") or {}).get("clients", 0) > 100)
            replaced_before = node.child_status(f"shard-{shard}")["replaced_frames"]
            rpc_latencies: list[float] = []
            nv_latencies: list[float] = []
            room_poses = 0
            window_start = time.monotonic()
            for n in range(60):
                kind = "rpc" if n % 2 == 0 else "nv"
                started = time.monotonic()
                if kind == "rpc":
                    sender.send_control(Rpc(0, "probe-sender", (), "probe", f'["{n}"]'))
                else:
                    sender.send_control(GlobalVarSet(0, "probe-sender", "probe", str(n)))
                deadline = started + 2.0
                got = None
                while time.monotonic() < deadline and got is None:
                    if receiver.sub.poll(0):
                        topic, _ = receiver.sub.recv_multipart()
                        room_poses += topic == receiver.room_bytes
                    msg = receiver.recv_control(0.002)
                    if kind == "rpc" and isinstance(msg, Rpc) and msg.arguments_json == f'["{n}"]':
                        got = time.monotonic()
                    if kind == "nv" and isinstance(msg, GlobalVarSync) and msg.variables[0].value == str(n):
                        got = time.monotonic()
                assert got is not None, f"{kind} #{n} lost under overload"
                (rpc_latencies if kind == "rpc" else nv_latencies).append(got - started)
                time.sleep(0.05)
            window = time.monotonic() - window_start
            print(
                f"overload: rpc p50 {percentile(rpc_latencies, 0.5) * 1000:.1f} ms "
                f"p99 {percentile(rpc_latencies, 0.99) * 1000:.1f} ms; nv p50 "
                f"{percentile(nv_latencies, 0.5) * 1000:.1f} ms p99 {percentile(nv_latencies, 0.99) * 1000:.1f} ms; "
                f"room poses {room_poses / window:.2f}/s"
            )
            status = node.child_status(f"shard-{shard}")
            assert status["replaced_frames"] > replaced_before, "no frame was coalesced: not overloaded?"
            # Shaped: far below the nominal 10 Hz, yet never starved.
            assert room_poses / window < 5.0
            assert room_poses >= 1
            assert status["pending_broadcasts"] <= 2  # latest-only: one slot per topic
        finally:
            if flood is not None:
                flood.wait(timeout=30)
            sender.close()
            receiver.close()


def test_oversized_room_pose_still_goes_out() -> None:
    """A single room pose costing more than the bucket's capacity is delivered (not W9)."""
    with RelayNode(shards=1, extra_args=["--transform-budget-bytes-per-sec", "1000"]) as node:
        watcher = RawClient(node, "big-room", "big-watcher")
        try:
            watcher.join()
            flood = subprocess.run(
                [sys.executable, "-m", "tests.tools.pose_flood", "127.0.0.1", str(node.transform_port),
                 "big-room", "60", "5", "1.5"],
                cwd=REPO, capture_output=True, text=True, timeout=30,
            )
            assert flood.returncode == 0

            def big_pose() -> bool:
                got = watcher.recv_pub(0.5)
                return got is not None and isinstance(got[1], RoomPose) and len(got[1].clients) == 60

            wait_for(big_pose, 10, what="a room pose larger than the bucket")
        finally:
            watcher.close()
