"""`relayctl`: start, stop and inspect a relay node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson

from relay.config import MAX_SHARDS, ConfigError, RelayConfig
from relay.endpoints import NodeEndpoints
from relay.logs import setup_logging
from relay.status import read_status, write_status
from supervisor.cli_args import add_config_arguments, config_from_args
from supervisor.pidfile import check_relay_process, pointer_path, process_start_ticks, read_pidfile

log = logging.getLogger("relay.cli")


def _version() -> str:
    try:
        return version("netsync-relay")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayctl", description="NetSync Relay node control")
    parser.add_argument("-V", "--version", action="version", version=f"netsync-relay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run a node in the foreground")
    add_config_arguments(start)
    for name, help_text in (("status", "show the running node"), ("stop", "stop the running node")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--run-dir", dest="run_dir", default=None, help="run dir of the node")
        cmd.add_argument(
            "--control-port", dest="control_port", type=int, default=None,
            help="find the node by its control port (default: RELAY_CONTROL_PORT or 5555)",
        )
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            cmd.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for exit")
    scale = sub.add_parser("scale", help="change the running node's shard count (rooms move, clients stay)")
    scale.add_argument("shards", type=int, metavar="N", help=f"new shard count (1..{MAX_SHARDS})")
    reload = sub.add_parser("reload", help="re-read the configuration and replace the shards one at a time")
    for cmd in (scale, reload):
        cmd.add_argument("--run-dir", dest="run_dir", default=None, help="run dir of the node")
        cmd.add_argument(
            "--control-port", dest="control_port", type=int, default=None,
            help="find the node by its control port (default: RELAY_CONTROL_PORT or 5555)",
        )
        cmd.add_argument("--wait", action="store_true", help="wait until the node has finished")
        cmd.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits at most")
    keygen = sub.add_parser("keygen", help="write a new cluster key pair file (CURVE)")
    keygen.add_argument("file", help="where to write it (mode 0600); give every node a copy")
    return parser


def cmd_keygen(args: argparse.Namespace) -> int:
    from relay.cluster.link_security import generate_key_file

    if os.path.exists(args.file):
        print(f"relayctl: {args.file} exists; not overwriting a cluster key", file=sys.stderr)
        return 1
    keys = generate_key_file(args.file)
    print(f"wrote {args.file} (public key {keys.public.decode()})")
    return 0


def find_run_dir(args: argparse.Namespace) -> str | None:
    if args.run_dir:
        return args.run_dir
    port = args.control_port or int(os.environ.get("RELAY_CONTROL_PORT", "5555"))
    # Only the per-user pointer (supervisor/pidfile.py), never one in /tmp.
    path = pointer_path(port)
    pointer = read_status(path) if path else None
    run_dir = pointer.get("run_dir") if pointer else None
    return run_dir if isinstance(run_dir, str) else None


def collect_status(run_dir: str) -> dict[str, Any] | None:
    endpoints = NodeEndpoints(run_dir)
    state = read_status(endpoints.supervisor_file)
    if state is None:
        return None
    pid, why_not = check_relay_process(run_dir)
    state["running"] = why_not is None and pid is not None and not _exited(pid)
    for name, child in state.get("children", {}).items():
        child["status"] = read_status(endpoints.status_file(name)) or {}
    return state


def _fmt_uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers; widths from the data."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


def _n(key: str) -> Any:
    return lambda st, child: st.get(key, 0) or 0


# (heading, value from the shard's status file and its supervisor entry, total is a maximum)
_SHARD_COLUMNS: list[tuple[str, Any, bool]] = [
    ("ROOMS", _n("rooms"), False),
    ("CLIENTS", _n("clients"), False),
    ("DEVICES", _n("devices"), False),
    ("VISIBLE", _n("visible"), False),
    ("STEALTH", _n("stealth"), False),
    ("CTRL Q", _n("ctrl_queue_depth"), False),
    ("CTRL HW", _n("ctrl_queue_high_water"), True),
    ("HELD", _n("held_messages"), False),
    ("PENDING TX", _n("pending_broadcasts"), False),
    ("HANDED OVER", _n("rooms_handed_over"), False),
    ("DROPS", lambda st, child: sum((st.get("drops") or {}).values()), False),
    ("RESTARTS", lambda st, child: child.get("restarts", 0) or 0, False),
]


def format_status_table(state: dict[str, Any]) -> str:
    """Human view of collect_status(): children, then shards, then the ingress."""
    lines = [
        f"supervisor pid {state['supervisor_pid']} ({'running' if state['running'] else 'NOT running'}), "
        f"{state.get('shards', '?')} shards, run dir {state['run_dir']}",
        "ports: " + "  ".join(f"{k}={v}" for k, v in state.get("ports", {}).items() if v),
    ]
    cluster = state.get("cluster") or {}
    if cluster:
        nodes = ", ".join(f"{n['node_id']}({n['shards']})" for n in cluster.get("nodes") or ())
        lines.append(
            f"node {cluster.get('node_id')}: {cluster.get('store')} store"
            + (f", DEGRADED: {cluster.get('detail')}" if cluster.get("store_degraded") else "")
            + f"; view generation {cluster.get('generation')}: {nodes}"
        )
    lines.append("")
    children = state.get("children", {})
    rows = []
    for name, child in children.items():
        last_exit = child.get("last_exit")
        rows.append([
            name,
            child.get("pid") or "-",
            "up" if child.get("alive") else "DOWN",
            _fmt_uptime(child.get("uptime_s") or 0) if child.get("alive") else "-",
            child.get("restarts", 0),
            "-" if last_exit is None else last_exit,
        ])
    lines += _table(["CHILD", "PID", "STATE", "UPTIME", "RESTARTS", "LAST EXIT"], rows)

    shard_rows = []
    totals = [0] * len(_SHARD_COLUMNS)
    for name, child in children.items():
        if not name.startswith("shard-"):
            continue
        st = child.get("status") or {}
        if not st:
            shard_rows.append([name.removeprefix("shard-")] + ["?"] * (len(_SHARD_COLUMNS) - 1)
                              + [child.get("restarts", 0)])
            continue
        values = [value(st, child) for _, value, _ in _SHARD_COLUMNS]
        shard_rows.append([name.removeprefix("shard-"), *values])
        # High water: the worst shard matters, a sum of maxima means nothing.
        totals = [max(t, v) if worst else t + v
                  for t, v, (_, _, worst) in zip(totals, values, _SHARD_COLUMNS, strict=True)]
    if shard_rows:
        lines.append("")
        lines += _table(["SHARD", *(heading for heading, _, _ in _SHARD_COLUMNS)],
                        [*shard_rows, ["total", *totals]])
    retiring = state.get("retiring") or {}
    if retiring:
        lines.append("retiring: " + ", ".join(
            f"{name} (pid {c.get('pid')}, {c.get('retiring_for_s', 0):.0f}s)" for name, c in retiring.items()
        ))
    op = state.get("operation") or {}
    if op:
        what = op.get("kind", "?") + (f" to {op['target']} shards" if op.get("target") else "")
        lines.append(f"last operation: {what}: {op.get('state')}"
                     + (f" ({op.get('detail')})" if op.get("detail") else ""))
    ingress = (children.get("ingress") or {}).get("status") or {}
    links = ingress.get("links") or {}
    if links:
        forwarded_in = sum(
            ((children.get(n) or {}).get("status") or {}).get("forwarded_in", 0)
            for n in children if n.startswith("shard-")
        )
        lines += [
            "",
            f"node links: forwarded out {links.get('forwarded_messages', 0)} messages "
            f"({links.get('remote_links', 0)} remote shard lanes), forwarded in to this node's shards "
            f"{forwarded_in}, unicasts from other nodes' shards {ingress.get('counts', {}).get('remote_unicasts', 0)}, "
            f"links refused {links.get('links_refused', 0)}",
        ]
    if ingress:
        counts = ingress.get("counts") or {}
        lines += [
            "",
            f"ingress: received control {counts.get('received_control', 0)}, "
            f"transform {counts.get('received_transform', 0)}; unicast sent {counts.get('unicast_sent', 0)}; "
            f"retry queue {ingress.get('retry_queued', 0)} ({ingress.get('retry_recipients', 0)} recipients); "
            f"drops {sum((ingress.get('drops') or {}).values())}",
        ]
    return "\n".join(lines)


def print_status_table(state: dict[str, Any]) -> None:
    print(format_status_table(state))


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args)
    state = collect_status(run_dir) if run_dir else None
    if state is None:
        print("no running relay found (give --run-dir or --control-port)", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_status_table(state)
    return 0 if state["running"] else 1


def _exited(pid: int) -> bool:
    """True once ``pid`` has exited, including as a zombie nobody reaped yet.

    `relayctl stop` is not the node's parent, so it cannot reap it; a parent
    that is slow to wait() (a test harness, some init systems) would otherwise
    make a clean exit look like a hang.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2 :][:1] == b"Z"
    except (OSError, ValueError):
        return False


def cmd_stop(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args)
    if run_dir is None or read_pidfile(run_dir) is None:
        print("no running relay found (give --run-dir or --control-port)", file=sys.stderr)
        return 1
    pid, why_not = check_relay_process(run_dir)
    if why_not is not None:
        if pid is not None and process_start_ticks(pid) is None:
            print(f"relay (pid {pid}) is not running")
            return 0
        # Never signal a process we cannot prove is the node we started.
        print(f"refusing to stop: {why_not} (pid file in {run_dir})", file=sys.stderr)
        return 1
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"relay (pid {pid}) is not running")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            print(f"relay (pid {pid}) stopped")
            return 0
        time.sleep(0.05)
    print(f"relay (pid {pid}) still running after {args.timeout}s", file=sys.stderr)
    return 1


def _running_node(args: argparse.Namespace) -> tuple[str, int] | None:
    """(run dir, supervisor pid) of the node to signal, after the checks `stop` makes."""
    run_dir = find_run_dir(args)
    if run_dir is None or read_pidfile(run_dir) is None:
        print("no running relay found (give --run-dir or --control-port)", file=sys.stderr)
        return None
    pid, why_not = check_relay_process(run_dir)
    if why_not is not None or pid is None:
        # Never signal a process we cannot prove is the node we started.
        print(f"refusing to signal: {why_not} (pid file in {run_dir})", file=sys.stderr)
        return None
    return run_dir, pid


def _wait_operation(run_dir: str, matches: Any, timeout: float) -> int:
    """Poll supervisor.json until the operation ``matches`` picks has finished or was refused."""
    path = NodeEndpoints(run_dir).supervisor_file
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_status(path) or {}
        refused = state.get("last_refused") or {}
        if refused and matches(refused, "at"):
            print(f"refused: {refused.get('reason')}", file=sys.stderr)
            return 1
        op = state.get("operation") or {}
        if op and matches(op, "started_at") and op.get("state") != "running":
            if op.get("state") == "done":
                print(f"done: {state.get('shards')} shards, incarnations {state.get('slots')}")
                return 0
            print(f"{op.get('kind')} failed: {op.get('detail')}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"not finished after {timeout}s (see the node's log)", file=sys.stderr)
    return 1


def cmd_scale(args: argparse.Namespace) -> int:
    if not 1 <= args.shards <= MAX_SHARDS:
        print(f"relayctl scale: N must be between 1 and {MAX_SHARDS}, got {args.shards}", file=sys.stderr)
        return 2
    node = _running_node(args)
    if node is None:
        return 1
    run_dir, pid = node
    from supervisor.arbiter import SCALE_REQUEST

    request_id = uuid.uuid4().hex
    # Atomic (temp file + rename): the supervisor never reads half a request.
    write_status(os.path.join(run_dir, SCALE_REQUEST), {"shards": args.shards, "id": request_id})
    os.kill(pid, signal.SIGUSR2)
    print(f"asked relay (pid {pid}) to scale to {args.shards} shards")
    if not args.wait:
        return 0
    return _wait_operation(run_dir, lambda entry, _: entry.get("id") == request_id, args.timeout)


def cmd_reload(args: argparse.Namespace) -> int:
    node = _running_node(args)
    if node is None:
        return 1
    run_dir, pid = node
    asked = time.time()
    os.kill(pid, signal.SIGHUP)
    print(f"asked relay (pid {pid}) to reload: re-read its configuration, replace its shards one at a time")
    if not args.wait:
        return 0
    return _wait_operation(
        run_dir,
        lambda entry, when: entry.get("kind") == "reload" and (entry.get(when) or 0) >= asked - 0.5,
        args.timeout,
    )


def cmd_start(args: argparse.Namespace) -> int:
    from supervisor.safety import secure_config

    def load_config() -> RelayConfig:
        """The node's configuration from its file, flags and environment (re-read on reload)."""
        return secure_config(config_from_args(args))

    try:
        config = load_config()
    except ConfigError as exc:
        print("invalid configuration:\n" + str(exc), file=sys.stderr)
        return 2
    setup_logging("supervisor", config.log_level_console, config.log_json_console, config.log_dir)
    for key in ("log_rotation", "log_retention"):
        if getattr(config, key):
            # Accepted for launch-script compatibility, but these are loguru
            # rule strings; the relay's files rotate by size (10 MB x 20).
            log.warning("%s=%r accepted but not interpreted: files rotate at 10 MB, 20 kept", key, getattr(config, key))
    from supervisor.arbiter import main_start

    return main_start(config, reload_config=load_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "start": cmd_start, "status": cmd_status, "stop": cmd_stop, "keygen": cmd_keygen,
        "scale": cmd_scale, "reload": cmd_reload,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
