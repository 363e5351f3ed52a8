"""Markdown table, headline ratios, machine info and plots for bench/run.py."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

import orjson
import psutil
import zmq

from bench import thread_usage

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers
def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def one_line(s: dict[str, Any]) -> str:
    """Short progress line for a summary."""
    rp, rpc, nv = s["room_pose"], s["rpc"], s["nv"]
    return (
        f"clients {s['joined']}/{s['clients']} poses {_pct(rp['ratio'])} "
        f"RPC p50/p99 {_f(rpc['p50'])}/{_f(rpc['p99'])} ms loss {_f(rpc['loss_pct'], '{:.2f}')} % "
        f"NV p99 {_f(nv['p99'])} ms loadgen CPU {_pct(s['loadgen']['cpu_util_window'])}"
    )


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def _git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    def _ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    dirty = bool(_git("status", "--porcelain"))
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "reference": _ver("styly-netsync-server"),
        "relay": _ver("netsync-relay"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "none") + (" + local changes" if dirty else ""),
    }


# -------------------------------------------------------------------- table
_COLS = [
    "scenario",
    "server",
    "clients (joined)",
    "room poses delivered",
    "complete",
    "fresh p50 / p99 ms",
    "RPC p50 / p99 / max ms",
    "RPC loss",
    "NV p50 / p99 ms",
    "NV loss",
    "server CPU s",
    "CPU ms / 1k msgs",
    "peak RSS MB",
    "loadgen CPU",
    "other CPU",
    "poses sent (HWM-dropped / late)",
]


def _row(p: dict[str, Any]) -> list[str]:
    label = p["title"] if p["phase"] == "scenario" else f"ramp {p['total_clients']}"
    if "summary" not in p:
        return [label, p["server"], str(p["total_clients"]), f"not measured: {p.get('error', '?')[:60]}"] + [
            ""
        ] * (len(_COLS) - 4)
    s = p["summary"]
    rp, fr, rpc, nv, sv, lg = s["room_pose"], s["freshness"], s["rpc"], s["nv"], s["server"], s["loadgen"]
    return [
        label,
        p["server"],
        f"{s['clients']} ({s['joined']})",
        _pct(rp["ratio"]),
        _pct(rp["completeness"]),
        f"{_f(fr['p50'])} / {_f(fr['p99'])}",
        f"{_f(rpc['p50'])} / {_f(rpc['p99'])} / {_f(rpc['max'])}",
        _f(rpc["loss_pct"], "{:.2f} %"),
        f"{_f(nv['p50'])} / {_f(nv['p99'])}",
        _f(nv["loss_pct"], "{:.2f} %"),
        _f(sv["cpu_window_s"], "{:.2f}"),
        _f(sv["cpu_ms_per_1k_msgs"], "{:.1f}"),
        _f(sv["peak_rss_mb"], "{:.0f}"),
        _pct(lg["cpu_util_window"]),
        _other(s.get("machine", {}).get("other_cores")),
        _poses(s),
    ]


def _other(v: float | None) -> str:
    # difference of two independent readings (machine-wide minus process
    # trees): small negative values are reading jitter, shown as 0
    return "–" if v is None else _pct(max(0.0, v))


def _poses(s: dict[str, Any]) -> str:
    po = s["poses"]
    exp = po["expected_window"] or 1.0
    return (
        f"{_pct(po['send_ratio'])} ({100 * po['dropped_hwm_window'] / exp:.1f} / "
        f"{100 * po['skipped_late_window'] / exp:.1f} %)"
    )


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def scenario_table(result: dict[str, Any]) -> str:
    rows = [_row(p) for p in result["points"] if p["phase"] == "scenario"]
    return _md_table(_COLS, rows)


def ramp_table(result: dict[str, Any]) -> str:
    servers = result["servers"]
    levels = sorted({p["total_clients"] for p in result["points"] if p["phase"] == "ramp"})
    by = {(p["server"], p["total_clients"]): p for p in result["points"] if p["phase"] == "ramp"}
    rows = []
    for total in levels:
        row = [str(total)]
        for name in servers:
            p = by.get((name, total))
            if p is None:
                row.append("")
            elif "summary" not in p:
                row.append("not measured")
            else:
                s = p["summary"]
                mark = "pass" if p.get("slo_ok") else "FAIL"
                row.append(
                    f"{_pct(s['room_pose']['ratio'])}, p99 {_f(s['rpc']['p99'])} ms, "
                    f"lg {_pct(s['loadgen']['cpu_util_window'])} — {mark}"
                )
        rows.append(row)
    table = _md_table(["total clients"] + servers, rows)
    summary = ["", "| server | max clients at SLO | stopped because |", "|---|---|---|"]
    for name in servers:
        r = result["ramp"][name]
        summary.append(f"| {name} | {_max_label(r)} | {r['stopped'] or ''} |")
    return table + "\n" + "\n".join(summary)


def _max_label(r: dict[str, Any]) -> str:
    n = r["max_clients_at_slo"]
    return f"{n}" if r["broke"] else f"≥ {n}"


NOISY_OTHER_CORES = 0.5


def noise_note(result: dict[str, Any]) -> list[str]:
    """A warning line (plus blank) when other processes used the machine during windows."""
    measured = [p for p in result["points"] if "summary" in p]
    noisy = [
        p
        for p in measured
        if (p["summary"].get("machine", {}).get("other_cores") or 0.0) > NOISY_OTHER_CORES
    ]
    if not noisy:
        return []
    return [
        f"**Noisy run:** in {len(noisy)} of {len(measured)} points, processes other than the "
        f"server and the load generator used more than {NOISY_OTHER_CORES:g} cores during the "
        "window (column \"other CPU\"); compare those rows with care.",
        "",
    ]


# ---------------------------------------------------------------- headline
def headline(result: dict[str, Any]) -> list[str]:
    ramp = result["ramp"]
    lines = []
    relays = [s for s in result["servers"] if s.startswith("relay")]

    def ratio(a: str, b: str) -> str:
        ra, rb = ramp.get(a), ramp.get(b)
        if not ra or not rb or not rb["max_clients_at_slo"] or not ra["max_clients_at_slo"]:
            return "n/a"
        txt = f"{ra['max_clients_at_slo'] / rb['max_clients_at_slo']:.2f}"
        if not ra["broke"] or not rb["broke"]:
            txt += " (a side never broke the SLO: bound, not exact)"
        return txt

    caps = ", ".join(f"{s} {_max_label(ramp[s])}" for s in result["servers"])
    lines.append(f"Max clients at SLO (ramp): {caps}")
    for r in relays:
        lines.append(f"{r}/reference max clients at SLO: {ratio(r, 'reference')}")
        lines.append(f"{r}/bare bound max clients at SLO: {ratio(r, 'bare')}")
    over = {p["server"]: p for p in result["points"] if p["scenario"] == "overload" and "summary" in p}

    def p99(name: str, kind: str) -> float | None:
        p = over.get(name)
        return None if p is None else p["summary"][kind]["p99"]

    for kind, label in (("rpc", "RPC"), ("nv", "NV")):
        for r in relays:
            mine = p99(r, kind)
            for other in ("bare", "reference"):
                theirs = p99(other, kind)
                if mine is None or theirs is None:
                    lines.append(f"overload {label} p99 {r} vs {other}: n/a")
                    continue
                loss = over[other]["summary"][kind]["loss_pct"] or 0.0
                extra = f" ({other} lost {loss:.1f} % of {label} updates)" if loss > 0.5 else ""
                lines.append(
                    f"overload {label} p99 {r} vs {other}: {mine:.1f} ms vs {theirs:.1f} ms "
                    f"(x{mine / theirs:.2f}){extra}"
                )
    lines += fanout_lines(result)
    return lines


def fanout_lines(result: dict[str, Any]) -> list[str]:
    """Heavy control fan-out and the noisy-neighbour points against the bare forwarder
    (issue "Control latency under heavy fan-out": RPC p99 <= 1.5x, CPU per message
    <= 1.3x, noisy-neighbour overload RPC p99 <= 2x); a scenario measured in
    several rounds adds the median and range of its per-round ratios."""
    lines = []
    for key in ("heavy", "heavy-nn", "overload-nn"):
        points = {p["server"]: p["summary"] for p in result["points"]
                  if p["scenario"] == key and p["phase"] == "scenario" and "summary" in p}
        bare = points.get("bare")
        for name, s in points.items():
            if not name.startswith("relay"):
                continue
            rpc, cpu = s["rpc"], s["server"]["cpu_ms_per_1k_msgs"]
            text = (f"{key} {name}: RPC p50/p99/max {_f(rpc['p50'])}/{_f(rpc['p99'])}/{_f(rpc['max'])} ms, "
                    f"CPU {_f(cpu)} ms per 1k msgs")
            if bare is not None and bare["rpc"]["p99"] and rpc["p99"] is not None:
                text += f"; vs bare RPC p99 x{rpc['p99'] / bare['rpc']['p99']:.2f}"
                bare_cpu = bare["server"]["cpu_ms_per_1k_msgs"]
                if cpu and bare_cpu:
                    text += f", CPU per message x{cpu / bare_cpu:.2f}"
            lines.append(text)
        ratios = round_ratios(result, key)
        for name, by_metric in ratios.items():
            rounds = len(by_metric["rpc_p99"])
            if rounds < 2:
                continue
            parts = [f"{label} median x{median(v):.2f} (x{min(v):.2f}–{max(v):.2f})"
                     for label, v in (("RPC p99", by_metric["rpc_p99"]), ("CPU per message", by_metric["cpu"]))
                     if v]
            lines.append(f"{key} {name} vs bare over {rounds} interleaved rounds: " + ", ".join(parts))
    return lines


def _rounds(result: dict[str, Any], key: str) -> dict[int, dict[str, dict[str, Any]]]:
    """round -> server -> summary, for one scenario's measured points."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for p in result["points"]:
        if p["scenario"] == key and p["phase"] in ("scenario", "repeat") and "summary" in p:
            out.setdefault(p.get("round", 1), {})[p["server"]] = p["summary"]
    return out


def round_ratios(result: dict[str, Any], key: str) -> dict[str, dict[str, list[float]]]:
    """Per relay, its RPC p99 and CPU per message over the bare forwarder's of the
    same round (points measured back to back share the machine's state)."""
    out: dict[str, dict[str, list[float]]] = {}
    for _round, servers in sorted(_rounds(result, key).items()):
        bare = servers.get("bare")
        if bare is None:
            continue
        for name, s in servers.items():
            if not name.startswith("relay"):
                continue
            ratios = out.setdefault(name, {"rpc_p99": [], "cpu": []})
            if s["rpc"]["p99"] is not None and bare["rpc"]["p99"]:
                ratios["rpc_p99"].append(s["rpc"]["p99"] / bare["rpc"]["p99"])
            cpu, bare_cpu = s["server"]["cpu_ms_per_1k_msgs"], bare["server"]["cpu_ms_per_1k_msgs"]
            if cpu and bare_cpu:
                ratios["cpu"].append(cpu / bare_cpu)
    return out


def rounds_table(result: dict[str, Any]) -> list[str]:
    """Every round of the repeated scenarios, with the ratios to the bare forwarder of that round."""
    keys = list(dict.fromkeys(p["scenario"] for p in result["points"] if p["phase"] == "repeat"))
    rows = []
    for key in keys:
        for round_no, servers in sorted(_rounds(result, key).items()):
            bare = servers.get("bare")
            for name, s in servers.items():
                cpu = s["server"]["cpu_ms_per_1k_msgs"]
                rpc_ratio = cpu_ratio = "–"
                if bare is not None and name != "bare":
                    if s["rpc"]["p99"] is not None and bare["rpc"]["p99"]:
                        rpc_ratio = f"x{s['rpc']['p99'] / bare['rpc']['p99']:.2f}"
                    if cpu and bare["server"]["cpu_ms_per_1k_msgs"]:
                        cpu_ratio = f"x{cpu / bare['server']['cpu_ms_per_1k_msgs']:.2f}"
                rows.append([key, str(round_no), name, f"{_f(s['rpc']['p50'])} / {_f(s['rpc']['p99'])} / "
                             f"{_f(s['rpc']['max'])}", _f(cpu), rpc_ratio, cpu_ratio])
    if not rows:
        return []
    return ["## Repeated rounds", "",
            "The scenarios below ran again after the first pass, every server once per round, back to back; "
            "each ratio compares a relay with the bare forwarder of the same round.", "",
            _md_table(["scenario", "round", "server", "RPC p50 / p99 / max ms", "CPU ms / 1k msgs",
                       "RPC p99 vs bare", "CPU per message vs bare"], rows), ""]


def thread_table(result: dict[str, Any], scenario: str = "heavy") -> list[str]:
    """CPU and wake-ups per thread of every server at one scenario (bench/thread_usage.py)."""
    rows = []
    for p in result["points"]:
        if p["scenario"] != scenario or p["phase"] != "scenario" or "summary" not in p:
            continue
        threads = p["summary"]["server"].get("threads") or []
        for t in threads:
            if t["cpu_pct"] >= 0.5:
                rows.append([p["server"], f"{t['process']}/{t['thread']}", _f(t["cpu_pct"]), str(t["wakeups_per_s"]),
                             str(t.get("runq_us_per_slice", "–"))])
        if threads:
            total_cpu, total_wake = thread_usage.totals(threads)
            rows.append([p["server"], "**total**", _f(total_cpu), str(total_wake), ""])
        for t in p["summary"]["loadgen"].get("threads") or []:
            if t["cpu_pct"] >= 0.5:
                rows.append([f"{p['server']} (load generator)", f"{t['process']}/{t['thread']}", _f(t["cpu_pct"]),
                             str(t["wakeups_per_s"]), str(t.get("runq_us_per_slice", "–"))])
    if not rows:
        return []
    return [f"## Where the CPU goes ({scenario} point)", "",
            "Per thread over the measured window: CPU (% of one core), wake-ups per second "
            "(context switches) and the mean time it sat runnable waiting for a CPU per time slice "
            "(schedstat); threads under 0.5 % left out. The load generator's threads follow each server's.", "",
            _md_table(["server", "process/thread", "CPU %", "wake-ups/s", "runnable wait µs/slice"], rows), ""]


# -------------------------------------------------------------------- plots
def _plots(result: dict[str, Any], stem: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    servers = result["servers"]
    scen = [p for p in result["points"] if p["phase"] == "scenario"]
    keys = list(dict.fromkeys(p["scenario"] for p in scen))
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for p in scen:
                if p["scenario"] != key or "summary" not in p:
                    continue
                cdf = p["summary"]["rpc"].get("cdf") or []
                if cdf:
                    ax.plot([max(v, 0.01) for v in cdf], [i / 100 for i in range(len(cdf))], label=p["server"])
            ax.set_xscale("log")
            ax.set_title(next(p["title"] for p in scen if p["scenario"] == key), fontsize=9)
            ax.set_xlabel("RPC send → receipt, ms (log)")
            ax.set_ylabel("fraction of deliveries")
            ax.axvline(50, color="grey", lw=0.6, ls="--")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        out["png_cdf"] = stem.with_name(stem.name + "-rpc-cdf.png")
        fig.savefig(out["png_cdf"], dpi=110)
        plt.close(fig)

    ramp = [p for p in result["points"] if p["phase"] == "ramp" and "summary" in p]
    for key, ylabel, getter, fname, slo_line, logy in (
        (
            "png_delivery",
            "room poses delivered / expected",
            lambda s: s["room_pose"]["ratio"],
            "-ramp-delivery.png",
            result["slo"]["delivery"],
            False,
        ),
        (
            "png_p99",
            "RPC p99, ms (log)",
            lambda s: s["rpc"]["p99"],
            "-ramp-control-p99.png",
            result["slo"]["rpc_p99_ms"],
            True,
        ),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in servers:
            pts = sorted((p["total_clients"], getter(p["summary"])) for p in ramp if p["server"] == name)
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        ax.axhline(slo_line, color="grey", lw=0.8, ls="--", label="SLO")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(f"total clients ({result['plan_detail']['ramp_rooms']} rooms, 10 Hz)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[key] = stem.with_name(stem.name + fname)
        fig.savefig(out[key], dpi=110)
        plt.close(fig)
    return out


# -------------------------------------------------------------------- write
def markdown(result: dict[str, Any], pngs: dict[str, Path]) -> str:
    m = result["machine"]
    d = result["plan_detail"]
    lines = [
        f"# NetSync relay benchmark — {result['started']}",
        "",
        f"`python -m bench.run{' --quick' if result['plan'] == 'quick' else ''}"
        f"{' --isolate-sessions' if result.get('isolate_sessions') else ''}` "
        f"({result['plan']} plan, {result['wall_s'] / 60:.1f} min). Each point: fresh server, "
        f"{d['warmup_s']:g} s warm-up, {d['duration_s']:g} s measured window, {d['grace_s']:g} s grace "
        "for late receipts. See BENCHMARKS.md for what each column means.",
        "",
        "## Machine",
        "",
        "| CPU | cores | RAM | kernel | Python | pyzmq / libzmq | reference | relay (commit) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {m['cpu_model']} | {m['cores']} | {m['ram_gb']} GB | {m['kernel']} | {m['python']} | "
        f"{m['pyzmq']} / {m['libzmq']} | styly-netsync-server {m['reference']} | "
        f"{m['relay']} ({m['commit']}) |",
        "",
        "Load generator, servers and this runner share the same cores; the load generator's own "
        "CPU is in the table (100 % = one core).",
        "",
        f"Scheduling: {result.get('scheduling', 'not recorded')}.",
        "",
        "## Headline",
        "",
        *[f"- {line}" for line in headline(result)],
        "",
        f"SLO: RPC p99 < {result['slo']['rpc_p99_ms']:g} ms (a lost RPC counts as late) and "
        f"≥ {100 * result['slo']['delivery']:g} % of expected room poses delivered.",
        "",
        "## Scenarios",
        "",
        *noise_note(result),
        scenario_table(result),
        "",
        f"## Ramp ({d['ramp_rooms']} rooms, 10 Hz poses, growing clients per room)",
        "",
        "Cell: room poses delivered, RPC p99, load-generator CPU — SLO verdict. "
        "A server leaves the ramp at its first failing level.",
        "",
        ramp_table(result),
        "",
        *rounds_table(result),
        *thread_table(result),
    ]
    if result["unavailable"]:
        lines += ["## Not measured", ""]
        lines += [f"- {k}: `{v[:300]}`" for k, v in result["unavailable"].items()]
        lines.append("")
    if pngs:
        lines += ["## Plots", ""]
        lines += [f"![{k}]({p.name})" for k, p in pngs.items()]
        lines.append("")
    return "\n".join(lines)


def write(result: dict[str, Any], out_dir: Path, suffix: str = "") -> dict[str, Any]:
    """Write ``<date><suffix>.md/.json/-*.png`` (suffix e.g. "-quick")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / (time.strftime("%Y-%m-%d") + suffix)
    pngs = _plots(result, stem)
    md = markdown(result, pngs)
    md_path = stem.with_suffix(".md")
    md_path.write_text(md)
    json_path = stem.with_suffix(".json")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return {
        "md": md_path,
        "json": json_path,
        "table": scenario_table(result) + "\n\n" + ramp_table(result),
        "headline": headline(result),
        **pngs,
    }


START = "<!-- latest-results:start -->"
END = "<!-- latest-results:end -->"


def update_benchmarks_md(result: dict[str, Any], md_path: Path, doc: Path | None = None) -> bool:
    """Replace the "Latest results" section of BENCHMARKS.md (full runs only)."""
    doc = doc or REPO / "BENCHMARKS.md"
    try:
        text = doc.read_text()
    except OSError:
        return False
    if START not in text or END not in text:
        return False
    m = result["machine"]
    rel = md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path
    body = "\n".join(
        [
            START,
            f"From `{rel}` ({result['started']}; {m['cpu_model']}, {m['cores']} cores, "
            f"Python {m['python']}, pyzmq {m['pyzmq']} / libzmq {m['libzmq']}, "
            f"relay {m['relay']} at {m['commit']}).",
            "",
            *[f"- {line}" for line in headline(result)],
            "",
            *noise_note(result),
            scenario_table(result),
            "",
            ramp_table(result),
            END,
        ]
    )
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + body + tail)
    return True

