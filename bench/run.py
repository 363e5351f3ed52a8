"""Side-by-side benchmark: relay (1 and 2 shards) vs reference vs bare forwarder.

``python -m bench.run`` (``make bench``) runs every scenario against every
server in one go (about 18 min on a 2-core machine) and writes
``bench/results/<date>.md`` + ``.json`` + PNG plots; ``--quick`` is a ~1-2 min
smoke version written to ``<date>-quick.*``. Every number comes from the load
generator (``bench/loadgen``) and from psutil readings of the server's process
tree during the measurement window.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import relay_diagnostics, report, thread_usage
from bench.loadgen import LoadConfig
from bench.loadgen import run as run_load
from bench.servers import ServerKind, ServerProcess

SERVERS = [
    ServerKind("relay-1", "relay", 1),
    ServerKind("relay-2", "relay", 2),
    ServerKind("reference", "reference"),
    ServerKind("bare", "bare"),
]

SLO_RPC_P99_MS = 50.0
SLO_DELIVERY = 0.95
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Scenario:
    key: str
    title: str
    rooms: int
    clients_per_room: int
    pose_hz: float = 10.0
    rpc_hz: float = 1.0  # per room
    nv_hz: float = 0.5  # per room
    relay_extra: list[str] = field(default_factory=list)
    # Every server in its own session: with kernel autogroup, the server's
    # processes share one group's CPU against the load generator's group
    # (the noisy-neighbour condition; bench/servers.py).
    isolated: bool = False

    @property
    def total(self) -> int:
        return self.rooms * self.clients_per_room


@dataclass
class Plan:
    name: str
    warmup: float
    duration: float
    grace: float
    scenarios: list[Scenario]
    ramp_rooms: int
    ramp_levels: list[int]  # clients per room
    ramp_rpc_hz: float
    ramp_nv_hz: float
    budget_s: float  # stop the ramp before exceeding this wall time
    overload_budget: int
    # Scenarios measured again after the first pass, in interleaved rounds
    # (every server once per round), so that their relay-to-bound ratios come
    # with the spread of repeated runs: the same load measured minutes apart
    # moves a server's CPU by ±10 % on this kind of machine, and a single pair
    # of points cannot tell that from a real difference.
    repeat_keys: tuple[str, ...] = ()
    repeat_rounds: int = 1  # rounds in all, the first pass included


def full_plan() -> Plan:
    budget = 4_000_000
    return Plan(
        name="full",
        warmup=2.0,
        duration=8.0,
        grace=1.0,
        scenarios=[
            Scenario("small", "small: 1 room x 20", 1, 20, rpc_hz=10.0, nv_hz=4.0),
            Scenario("many", "many rooms: 20 x 20", 20, 20, rpc_hz=1.0, nv_hz=0.5),
            Scenario("big", "one big room: 1 x 150", 1, 150, rpc_hz=5.0, nv_hz=2.0),
            # Control fan-out as heavy as transform fan-out: per room two probes
            # each send an RPC every 200 ms and an NV write every 500 ms.
            Scenario("heavy", "heavy fan-out: 20 x 30", 20, 30, rpc_hz=10.0, nv_hz=4.0),
            Scenario("heavy-nn", "heavy fan-out, noisy neighbour: 20 x 30", 20, 30, rpc_hz=10.0,
                     nv_hz=4.0, isolated=True),
            # Control latency while transforms arrive at 6x the broadcast
            # rate (coalesced latest-only), relay on its default budget.
            Scenario("overload", "overload: 1 x 250 at 60 Hz", 1, 250, pose_hz=60.0, rpc_hz=10.0, nv_hz=4.0),
            # The same load with the relay's budget set low: shaping visible.
            Scenario(
                "shaped",
                f"shaped: 1 x 250 at 60 Hz (relay budget {budget // 1_000_000} MB/s/shard)",
                1,
                250,
                pose_hz=60.0,
                rpc_hz=10.0,
                nv_hz=4.0,
                relay_extra=["--transform-budget-bytes-per-sec", str(budget)],
            ),
            Scenario("overload-nn", "overload, noisy neighbour: 1 x 250 at 60 Hz", 1, 250, pose_hz=60.0,
                     rpc_hz=10.0, nv_hz=4.0, isolated=True),
        ],
        ramp_rooms=20,
        ramp_levels=[5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        ramp_rpc_hz=1.0,
        ramp_nv_hz=0.5,
        # The heavy rounds take about 1.5 min of it; the rest goes to the ramp.
        budget_s=16.5 * 60,
        overload_budget=budget,
        repeat_keys=("heavy",),
        # Single rounds swing ±20 % around their median (BENCHMARKS.md, sixth pass).
        repeat_rounds=5,
    )


def quick_plan() -> Plan:
    budget = 2_000_000
    return Plan(
        name="quick",
        warmup=1.0,
        duration=2.0,
        grace=0.3,
        scenarios=[
            Scenario("small", "small: 1 room x 10", 1, 10, rpc_hz=10.0, nv_hz=4.0),
            Scenario(
                "overload",
                f"overload: 1 x 100 at 60 Hz (relay budget {budget // 1_000_000} MB/s/shard)",
                1,
                100,
                pose_hz=60.0,
                rpc_hz=10.0,
                nv_hz=4.0,
                relay_extra=["--transform-budget-bytes-per-sec", str(budget)],
            ),
        ],
        ramp_rooms=5,
        ramp_levels=[4, 10],
        ramp_rpc_hz=2.0,
        ramp_nv_hz=1.0,
        budget_s=150.0,
        overload_budget=budget,
    )


def slo(summary: dict[str, Any]) -> tuple[bool, str]:
    """SLO: RPC p99 < 50 ms (lost RPCs count as late) and >= 95 % room poses delivered."""
    rpc = summary["rpc"]
    ratio = summary["room_pose"]["ratio"] or 0.0
    if not rpc["expected"]:
        return False, "no RPC measured"
    p99 = rpc["p99_incl_loss"]
    if p99 is None:
        return False, f"RPC loss {rpc['loss_pct']:.1f} %"
    if p99 >= SLO_RPC_P99_MS:
        return False, f"RPC p99 {p99:.1f} ms"
    if ratio < SLO_DELIVERY:
        return False, f"room poses {100 * ratio:.1f} %"
    return True, "ok"


def level_fits(elapsed: float, per_point: float, servers: int, budget: float) -> bool:
    """True if every server still ramping can run the next level within the budget.

    A level is started for all of them or for none: a server cut off halfway
    through a level would report a lower maximum than one that ran it,
    for a reason that is only its place in the order.
    """
    return elapsed + per_point * servers <= budget


def scheduling_note(isolate_sessions: bool) -> str:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as fh:
            autogroup = fh.read().strip() == "1"
    except OSError:
        autogroup = False
    where = (
        "each server in its own session (setsid)"
        if isolate_sessions
        else "servers in the harness's session, own process group"
    )
    return f"{where}; kernel autogroup {'on' if autogroup else 'off'}"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Runner:
    def __init__(self, plan: Plan, servers: list[ServerKind], isolate_sessions: bool = False) -> None:
        self.plan = plan
        self.servers = servers
        self.isolate_sessions = isolate_sessions
        self.unavailable: dict[str, str] = {}
        self.points: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def point(self, server: ServerKind, sc: Scenario, phase: str) -> dict[str, Any]:
        plan = self.plan
        rec: dict[str, Any] = {
            "phase": phase,
            "scenario": sc.key,
            "title": sc.title,
            "server": server.name,
            "total_clients": sc.total,
        }
        if server.kind in self.unavailable:
            rec["error"] = self.unavailable[server.kind]
            return rec
        sp = ServerProcess(
            server,
            extra=sc.relay_extra if server.kind == "relay" else [],
            isolate_session=self.isolate_sessions or sc.isolated,
        )
        t_point = time.monotonic()
        try:
            sp.start()
            if not sp.wait_ready(30.0):
                tail = sp.log_tail()
                if sp.exited():
                    # e.g. "relayctl start" not built yet: skip that server from now on
                    self.unavailable[server.kind] = f"{server.name} exited before ready: {tail[-300:]}"
                rec["error"] = f"not ready: {tail[-300:]}"
                _log(f"{server.name} {sc.key}: NOT READY\n{tail}")
                return rec
            cfg = LoadConfig(
                control_port=sp.ports.control,
                transform_port=sp.ports.transform,
                pub_port=sp.ports.pub,
                rooms=sc.rooms,
                clients_per_room=sc.clients_per_room,
                pose_hz=sc.pose_hz,
                rpc_hz=sc.rpc_hz,
                nv_hz=sc.nv_hz,
                warmup=plan.warmup,
                duration=plan.duration,
                grace=plan.grace,
                workers=1 if sc.total <= 400 else 2,
                room_prefix=f"{sc.key}-r",
            )
            summary = run_load(cfg, on_phase=sp.on_phase)
            msgs = summary["messages_window"]
            cpu = sp.cpu_window_s
            summary["server"] = {
                "cpu_window_s": cpu,
                "cpu_util_window": cpu / plan.duration if cpu is not None else None,
                "cpu_ms_per_1k_msgs": (1e6 * cpu / msgs) if cpu is not None and msgs else None,
                "peak_rss_mb": sp.peak_rss / 2**20,
                "exited_during_run": sp.exited(),
                "threads": sp.threads,
            }
            busy = sp.machine_busy_s
            lg_cpu = summary["loadgen"]["cpu_window_s"]
            summary["machine"] = {
                "busy_cores": busy / plan.duration if busy is not None else None,
                # everything else on the machine: this runner, other users' jobs
                "other_cores": (busy - (cpu or 0.0) - lg_cpu) / plan.duration
                if busy is not None
                else None,
            }
            ok, why = slo(summary)
            # Wall time of the measured window's start: lines the point up
            # with other clocks (bench/stall_probe.py, hop maxima).
            rec.update(summary=summary, slo_ok=ok, slo_reason=why, window_start=sp.window_start_wall)
            _log(f"{server.name:9s} {sc.key:10s} {report.one_line(summary)} SLO {why}")
            _log(f"{'':9s} {'':10s} {thread_usage.summary_line(sp.threads)}")
            _log(f"{'':9s} {'':10s} load generator {thread_usage.summary_line(summary['loadgen']['threads'])}")
            if server.kind == "relay":
                rec["relay_diagnostics"] = relay_diagnostics.collect(sp.tmp / "run", sp.window_start_wall)
                _log(f"{'':9s} {'':10s} {relay_diagnostics.hop_line(rec['relay_diagnostics'])}")
        except Exception as exc:  # keep going: one broken point must not lose the run
            rec["error"] = f"{type(exc).__name__}: {exc}"
            _log(f"{server.name} {sc.key}: ERROR {rec['error']}\n{sp.log_tail()}")
        finally:
            sp.stop()
            rec["wall_s"] = time.monotonic() - t_point
        return rec

    def run(self) -> dict[str, Any]:
        plan = self.plan
        for sc in plan.scenarios:
            for server in self.servers:
                rec = self.point(server, sc, "scenario")
                rec["round"] = 1
                self.points.append(rec)
        repeated = [sc for sc in plan.scenarios if sc.key in plan.repeat_keys]
        for round_no in range(2, plan.repeat_rounds + 1):
            for sc in repeated:
                # The repeats serve the relay-to-bound ratios; the reference
                # keeps its single point.
                for server in [s for s in self.servers if s.kind != "reference"]:
                    rec = self.point(server, sc, "repeat")
                    rec["round"] = round_no
                    self.points.append(rec)
        # ramp, level-major so that all servers see similar machine conditions
        ramping = list(self.servers)
        ramp: dict[str, dict[str, Any]] = {
            s.name: {"max_clients_at_slo": 0, "broke": False, "stopped": None} for s in self.servers
        }
        walls = [p["wall_s"] for p in self.points if "summary" in p] or [15.0]
        per_point = max(walls)
        for level in plan.ramp_levels:
            sc = Scenario(
                f"ramp{level}",
                f"ramp: {plan.ramp_rooms} x {level}",
                plan.ramp_rooms,
                level,
                rpc_hz=plan.ramp_rpc_hz,
                nv_hz=plan.ramp_nv_hz,
            )
            if not level_fits(time.monotonic() - self.t0, per_point, len(ramping), plan.budget_s):
                for s in ramping:
                    ramp[s.name]["stopped"] = "time budget"
                break
            for server in list(ramping):
                rec = self.point(server, sc, "ramp")
                rec["level"] = level
                self.points.append(rec)
                if "wall_s" in rec and "summary" in rec:
                    per_point = max(per_point * 0.8, rec["wall_s"])
                if rec.get("slo_ok"):
                    ramp[server.name]["max_clients_at_slo"] = sc.total
                else:
                    ramp[server.name]["broke"] = True
                    ramp[server.name]["stopped"] = rec.get("slo_reason") or rec.get("error")
                    ramping.remove(server)
            if not ramping:
                break
        for s in ramping:
            ramp[s.name]["stopped"] = ramp[s.name]["stopped"] or "highest level passed"
        return {
            "plan": plan.name,
            "plan_detail": {
                "warmup_s": plan.warmup,
                "duration_s": plan.duration,
                "grace_s": plan.grace,
                "ramp_rooms": plan.ramp_rooms,
                "ramp_levels": plan.ramp_levels,
                "overload_budget": plan.overload_budget,
            },
            "slo": {"rpc_p99_ms": SLO_RPC_P99_MS, "delivery": SLO_DELIVERY},
            "scheduling": scheduling_note(self.isolate_sessions),
            "isolate_sessions": self.isolate_sessions,
            "servers": [s.name for s in self.servers],
            "unavailable": self.unavailable,
            "points": self.points,
            "ramp": ramp,
            "wall_s": time.monotonic() - self.t0,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="~1-2 minute smoke version")
    ap.add_argument(
        "--servers",
        default=",".join(s.name for s in SERVERS),
        help="comma-separated subset of: " + ", ".join(s.name for s in SERVERS),
    )
    ap.add_argument("--scenarios", default="", help="comma-separated scenario keys to run (default: all; 'none' for the ramp only)")
    ap.add_argument("--no-ramp", action="store_true", help="scenarios only, no ramp")
    ap.add_argument("--ramp-levels", default="", help="comma-separated clients per room (default: the plan's)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument(
        "--isolate-sessions",
        action="store_true",
        help="start every server in its own session: with kernel autogroup on, it then "
        "gets one group's share of the CPU against the load generator's (see bench/servers.py)",
    )
    a = ap.parse_args(argv)
    wanted = [n.strip() for n in a.servers.split(",") if n.strip()]
    servers = [s for s in SERVERS if s.name in wanted]
    if not servers:
        ap.error("no known server selected")
    plan = quick_plan() if a.quick else full_plan()
    partial = bool(a.scenarios) or a.no_ramp
    if a.scenarios:
        keys = {k.strip() for k in a.scenarios.split(",") if k.strip()}
        plan.scenarios = [sc for sc in plan.scenarios if sc.key in keys]
        if not plan.scenarios and keys != {"none"}:
            ap.error("no known scenario selected")
    if a.no_ramp:
        plan.ramp_levels = []
    elif a.ramp_levels:
        plan.ramp_levels = [int(x) for x in a.ramp_levels.split(",") if x.strip()]
        partial = True
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    _log(f"plan {plan.name}: servers {', '.join(s.name for s in servers)}")
    result = Runner(plan, servers, isolate_sessions=a.isolate_sessions).run()
    result["started"] = started
    result["machine"] = report.machine_info()
    suffix = ("-quick" if a.quick else "") + ("-isolated" if a.isolate_sessions else "") + ("-partial" if partial else "")
    paths = report.write(result, a.out_dir, suffix=suffix)
    if not suffix and a.out_dir.resolve() == RESULTS and report.update_benchmarks_md(
        result, paths["md"]
    ):
        paths["benchmarks_md"] = report.REPO / "BENCHMARKS.md"
    print()
    print(paths["table"])
    print()
    for line in paths["headline"]:
        print(line)
    print()
    for key in ("md", "json", "png_cdf", "png_delivery", "png_p99", "benchmarks_md"):
        if key in paths:
            print(f"wrote {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
