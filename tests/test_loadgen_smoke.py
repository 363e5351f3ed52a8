"""Smoke test of the benchmark tooling: real server subprocesses on loopback,
the load generator for ~3 s with a few clients, and clean-up of every process.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import psutil
import pytest

from bench import rpc_trace
from bench.loadgen import LoadConfig, run
from bench.servers import BIN, ServerKind, ServerProcess
from relay.rpc_trace import ENV

pytestmark = pytest.mark.integration

def _load(sp: ServerProcess) -> dict:
    cfg = LoadConfig(
        control_port=sp.ports.control,
        transform_port=sp.ports.transform,
        pub_port=sp.ports.pub,
        rooms=2,
        clients_per_room=3,
        rpc_hz=5.0,
        nv_hz=2.0,
        warmup=1.0,
        duration=3.0,
        grace=0.5,
        workers=1,
        join_timeout=10.0,
    )
    return run(cfg, on_phase=sp.on_phase)


def _check(summary: dict) -> None:
    assert summary["joined"] == 6, summary
    rp = summary["room_pose"]
    assert rp["received"] > 0, rp
    assert rp["completeness"] is not None and rp["completeness"] > 0.5, rp
    rpc = summary["rpc"]
    assert rpc["sent"] > 0, rpc
    assert rpc["n"] > 0 and rpc["p50"] is not None and rpc["p50"] >= 0.0, rpc
    assert summary["nv"]["n"] > 0, summary["nv"]
    assert summary["freshness"]["n"] > 0
    assert summary["loadgen"]["cpu_window_s"] > 0.0
    # The load generator's own threads over the window (bench/thread_usage.py).
    threads = {(t["process"], t["thread"]) for t in summary["loadgen"]["threads"]}
    assert ("loadgen-0", "main") in threads, threads


def _assert_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 5.0
    alive: list[int] = []
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"left running: {alive}"
    assert not multiprocessing.active_children()


def _tree_pids(sp: ServerProcess) -> set[int]:
    return {p.pid for p in sp._procs()}


@pytest.mark.timeout(60)
def test_loadgen_against_bare_forwarder() -> None:
    sp = ServerProcess(ServerKind("bare", "bare"))
    pids: set[int] = set()
    try:
        sp.start()
        assert sp.wait_ready(15.0), sp.log_tail()
        pids = _tree_pids(sp)
        summary = _load(sp)
        assert sp.cpu_window_s is not None and sp.cpu_window_s > 0.0
    finally:
        sp.stop()
    _check(summary)
    # the forwarder has no flush window: NV writes arrive as raw sets, none lost
    assert summary["rpc"]["loss_pct"] == 0.0
    _assert_gone(pids)


@pytest.mark.timeout(60)
def test_loadgen_against_relay(tmp_path, monkeypatch) -> None:
    # With the RPC trace on, the relay's ingress and the load generator both
    # record each fanned-out RPC; joined, every receipt splits into hops.
    monkeypatch.setenv(ENV, str(tmp_path))
    if not (BIN / "relayctl").exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("relayctl is not installed: make test installs the package")
        pytest.skip("relayctl is not installed in this environment (make test installs it)")
    sp = ServerProcess(ServerKind("relay-1", "relay", 1))
    pids: set[int] = set()
    try:
        sp.start()
        ready = sp.wait_ready(20.0)
        # A relay that exits at start (an import error included) is a failure.
        assert ready, sp.log_tail(40)
        pids = _tree_pids(sp)
        summary = _load(sp)
    finally:
        sp.stop()
    _check(summary)
    _assert_gone(pids)
    joined, missing = rpc_trace.join(str(tmp_path))
    assert len(joined) >= summary["rpc"]["n"] // 2, (len(joined), missing, summary["rpc"])
    assert all(total - len(hops) <= sum(hops) <= total for total, hops, _ in joined)
