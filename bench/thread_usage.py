"""CPU and wake-ups of every thread of a server's process tree over a window.

A relayed control message crosses processes (ingress -> shard -> ingress)
where the bare forwarder handles it in one; each crossing wakes a ZeroMQ I/O
thread on both sides and the receiving process's main thread. On a small VM
a wake-up costs more than the Python that runs after it, so the benchmark
reports, per thread, the CPU it used and how often it was switched in
(voluntary + involuntary context switches per second, from
``/proc/<pid>/task/<tid>/status``): what each hop costs, side by side with
the bare forwarder's two threads. It also reports how long each thread sat
runnable waiting for a CPU (``/proc/<pid>/task/<tid>/schedstat``): a
message handed to a thread that is waiting for a CPU waits with it, so this
is where a pipeline of threads loses time on a busy machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ThreadSample", "diff", "process_names", "sample", "summary_line", "totals"]

_SWITCHES = re.compile(rb"ctxt_switches:\s+(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc stat times are in clock ticks

# (pid, tid) -> (thread name, CPU seconds, context switches, runnable-wait ns, time slices)
ThreadSample = dict[tuple[int, int], tuple[str, float, int, int, int]]


def _read_thread(pid: int, tid: int) -> tuple[str, float, int, int, int] | None:
    base = Path(f"/proc/{pid}/task/{tid}")
    try:
        comm = (base / "comm").read_text().strip()
        stat = (base / "stat").read_bytes()
        status = (base / "status").read_bytes()
        schedstat = (base / "schedstat").read_bytes().split()
    except OSError:
        return None
    # Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
    fields = stat[stat.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    switches = sum(int(n) for n in _SWITCHES.findall(status))
    # schedstat: time on a CPU, time runnable but waiting for one, time slices (all ns)
    waited, slices = (int(schedstat[1]), int(schedstat[2])) if len(schedstat) >= 3 else (0, 0)
    return comm, cpu, switches, waited, slices


def sample(pids: Iterable[int]) -> ThreadSample:
    """Every thread of ``pids`` now."""
    out: ThreadSample = {}
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name.isdigit()]
        except (OSError, ValueError):
            continue
        for tid in tids:
            got = _read_thread(pid, tid)
            if got is not None:
                out[(pid, tid)] = got
    return out


def process_names(root_pid: int, run_dir: Path | None) -> dict[int, str]:
    """pid -> role: a relay's children by their supervisor name, the root as "supervisor"."""
    names = {root_pid: "supervisor" if run_dir is not None else "server"}
    if run_dir is None:
        return names
    try:
        state = orjson.loads((run_dir / "supervisor.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return names
    for group in ("children", "starting", "retiring"):
        for name, child in (state.get(group) or {}).items():
            if isinstance(child, dict) and isinstance(child.get("pid"), int):
                names[child["pid"]] = name
    return names


def _thread_label(comm: str) -> str:
    if comm.startswith("ZMQbg/IO/"):
        return "zmq-io-" + comm.removeprefix("ZMQbg/IO/")
    if comm.startswith("ZMQbg/"):
        return "zmq-" + comm.removeprefix("ZMQbg/").lower()
    if comm.startswith("python") or comm.startswith("relayctl"):
        return "main"
    return comm


def diff(start: ThreadSample, end: ThreadSample, seconds: float, names: dict[int, str]) -> list[dict[str, Any]]:
    """Per thread alive at both ends: CPU % of one core, wake-ups per second,
    and time spent runnable waiting for a CPU (ms per second, µs per time
    slice), busiest first."""
    rows = []
    for key, (comm, cpu, switches, waited, slices) in end.items():
        before = start.get(key)
        if before is None or seconds <= 0:
            continue
        pid = key[0]
        waited_ns = waited - before[3]
        rows.append({
            "process": names.get(pid, str(pid)),
            "thread": _thread_label(comm),
            "cpu_pct": round((cpu - before[1]) / seconds * 100, 1),
            "wakeups_per_s": round((switches - before[2]) / seconds),
            "runq_ms_per_s": round(waited_ns / 1e6 / seconds, 1),
            "runq_us_per_slice": round(waited_ns / 1e3 / max(1, slices - before[4])),
        })
    rows.sort(key=lambda r: (-r["cpu_pct"], r["process"], r["thread"]))
    return rows


def totals(rows: list[dict[str, Any]]) -> tuple[float, int]:
    """(CPU % of a core, wake-ups per second) of all the rows together."""
    return sum(r["cpu_pct"] for r in rows), sum(r["wakeups_per_s"] for r in rows)


def summary_line(rows: list[dict[str, Any]], min_pct: float = 0.5) -> str:
    """One line: the threads above ``min_pct`` with CPU and wake-ups, then the totals."""
    shown = [f"{r['process']}/{r['thread']} {r['cpu_pct']:.1f}% {r['wakeups_per_s']}/s"
             f" wait {r.get('runq_us_per_slice', 0)}µs"
             for r in rows if r["cpu_pct"] >= min_pct]
    total_cpu, total_wake = totals(rows)
    return (f"threads (CPU % of a core, wake-ups/s, runnable wait per slice): {'; '.join(shown)};"
            f" total {total_cpu:.1f}% {total_wake}/s")
