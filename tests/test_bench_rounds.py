"""make bench: repeated interleaved rounds and the ramp's time budget.

The harness's scheduling and its ratios are checked on recorded points (no
servers started): which points run in which order, how the per-round ratios
pair relay and bound, and that a ramp level is run by all servers or none.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.run import SERVERS, Plan, Runner, Scenario, level_fits


def _summary(p99: float, cpu: float) -> dict[str, Any]:
    return {
        "rpc": {"p50": 1.0, "p99": p99, "max": p99 * 2, "expected": 10, "p99_incl_loss": p99, "loss_pct": 0.0},
        "room_pose": {"ratio": 1.0},
        "server": {"cpu_ms_per_1k_msgs": cpu, "threads": [{"process": "p", "thread": "t", "cpu_pct": 5.0,
                                                            "wakeups_per_s": 10}]},
        "loadgen": {"threads": []},
    }


def _point(server: str, phase: str, round_no: int, p99: float, cpu: float, key: str = "heavy") -> dict[str, Any]:
    return {"phase": phase, "scenario": key, "title": key, "server": server, "total_clients": 600,
            "round": round_no, "summary": _summary(p99, cpu)}


def _result(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"points": points}


def test_ratios_pair_each_relay_with_the_bound_of_its_own_round() -> None:
    points = [
        _point("relay-2", "scenario", 1, 10.0, 13.0),
        _point("bare", "scenario", 1, 20.0, 10.0),
        _point("relay-2", "repeat", 2, 30.0, 26.0),
        _point("bare", "repeat", 2, 15.0, 20.0),
        _point("relay-2", "repeat", 3, 12.0, 11.0),
        _point("bare", "repeat", 3, 12.0, 10.0),
    ]
    ratios = report.round_ratios(_result(points), "heavy")
    # Round 2's relay is slow, but so is its bound: paired, the ratio is 1.3,
    # not 26 / 10 against round 1's bound.
    assert ratios["relay-2"]["cpu"] == pytest.approx([1.3, 1.3, 1.1])
    assert ratios["relay-2"]["rpc_p99"] == pytest.approx([0.5, 2.0, 1.0])
    lines = report.fanout_lines(_result(points))
    assert lines[0].startswith("heavy relay-2: RPC p50/p99/max 1.0/10.0/20.0 ms, CPU 13.0 ms per 1k msgs")
    assert "x0.50" in lines[0] and "x1.30" in lines[0]  # the first round alone
    assert lines[1] == ("heavy relay-2 vs bare over 3 interleaved rounds: RPC p99 median x1.00 (x0.50–2.00), "
                        "CPU per message median x1.30 (x1.10–1.30)")


def test_a_round_without_its_bound_is_left_out_of_the_ratios() -> None:
    points = [
        _point("relay-1", "scenario", 1, 10.0, 12.0),
        _point("bare", "scenario", 1, 10.0, 10.0),
        _point("relay-1", "repeat", 2, 10.0, 30.0),
        {**_point("bare", "repeat", 2, 10.0, 10.0), "summary": None},
    ]
    points[-1].pop("summary")  # the bound's point failed: nothing to pair with
    assert report.round_ratios(_result(points), "heavy")["relay-1"]["cpu"] == pytest.approx([1.2])
    assert len(report.fanout_lines(_result(points))) == 1  # one round: no median line


def test_rounds_table_lists_every_round_and_the_thread_table_only_the_first() -> None:
    points = [
        _point("relay-1", "scenario", 1, 10.0, 12.0),
        _point("bare", "scenario", 1, 10.0, 10.0),
        _point("relay-1", "repeat", 2, 8.0, 14.0),
        _point("bare", "repeat", 2, 16.0, 10.0),
    ]
    table = "\n".join(report.rounds_table(_result(points)))
    assert "| heavy | 2 | relay-1 | 1.0 / 8.0 / 16.0 | 14.0 | x0.50 | x1.40 |" in table
    assert "| heavy | 1 | bare | 1.0 / 10.0 / 20.0 | 10.0 | – | – |" in table
    threads = "\n".join(report.thread_table(_result(points)))
    assert threads.count("| relay-1 | p/t |") == 1 and threads.count("| bare | p/t |") == 1
    assert report.rounds_table(_result(points[:2])) == []  # nothing repeated: no section


def test_level_fits_only_when_every_ramping_server_can_run_it() -> None:
    assert level_fits(elapsed=100.0, per_point=20.0, servers=3, budget=160.0)
    assert not level_fits(elapsed=100.0, per_point=20.0, servers=3, budget=159.0)
    assert level_fits(elapsed=100.0, per_point=20.0, servers=1, budget=121.0)


class _Recorded(Runner):
    """Runs no server: each point takes ``wall`` seconds of a fake clock and passes the SLO."""

    def __init__(self, plan: Plan, wall: float) -> None:
        super().__init__(plan, SERVERS)
        self.clock = 0.0
        self.wall = wall
        self.t0 = 0.0
        self.order: list[tuple[str, str, str]] = []

    def point(self, server: Any, sc: Scenario, phase: str) -> dict[str, Any]:
        self.clock += self.wall
        self.order.append((phase, sc.key, server.name))
        return {"phase": phase, "scenario": sc.key, "server": server.name, "total_clients": sc.total,
                "summary": {}, "slo_ok": True, "wall_s": self.wall}


def test_runner_interleaves_rounds_without_the_reference_and_cuts_the_ramp_at_a_level(monkeypatch) -> None:
    plan = Plan(name="t", warmup=0.0, duration=1.0, grace=0.0,
                scenarios=[Scenario("small", "small", 1, 2), Scenario("heavy", "heavy", 2, 3)],
                ramp_rooms=2, ramp_levels=[1, 2, 3], ramp_rpc_hz=1.0, ramp_nv_hz=1.0,
                budget_s=14 * 10.0 + 4 * 10.0 + 30.0, overload_budget=0,
                repeat_keys=("heavy",), repeat_rounds=3)
    runner = _Recorded(plan, wall=10.0)
    monkeypatch.setattr("bench.run.time.monotonic", lambda: runner.clock)
    result = runner.run()
    repeats = [o for o in runner.order if o[0] == "repeat"]
    assert repeats == [("repeat", "heavy", s) for s in ("relay-1", "relay-2", "bare")] * 2
    assert [p["round"] for p in result["points"] if p["phase"] == "repeat"] == [2, 2, 2, 3, 3, 3]
    assert runner.order.index(repeats[0]) == 8  # after the first pass over both scenarios
    ramp = [o for o in runner.order if o[0] == "ramp"]
    # 8 + 6 points used 140 s; level 1 fits (40 s for four servers), then 30 s
    # are left: level 2 is run by no server rather than by the first three.
    assert ramp == [("ramp", "ramp1", s.name) for s in SERVERS]
    assert all(r["stopped"] == "time budget" and r["max_clients_at_slo"] == 2 for r in result["ramp"].values())
