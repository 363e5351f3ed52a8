"""`relayctl`: start, stop and inspect a relay node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson

from relay.config import ConfigError, add_config_arguments, resolve_config
from relay.endpoints import NodeEndpoints
from relay.logs import setup_logging
from relay.status import read_status

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
    return parser


def find_run_dir(args: argparse.Namespace) -> str | None:
    from supervisor.arbiter import pointer_path

    if args.run_dir:
        return args.run_dir
    port = args.control_port or int(os.environ.get("RELAY_CONTROL_PORT", "5555"))
    pointer = read_status(pointer_path(port))
    return pointer.get("run_dir") if pointer else None


def collect_status(run_dir: str) -> dict[str, Any] | None:
    endpoints = NodeEndpoints(run_dir)
    state = read_status(endpoints.supervisor_file)
    if state is None:
        return None
    try:
        os.kill(state["supervisor_pid"], 0)
        state["running"] = True
    except (ProcessLookupError, PermissionError, KeyError):
        state["running"] = False
    for name, child in state.get("children", {}).items():
        child["status"] = read_status(endpoints.status_file(name)) or {}
    return state


def print_status_table(state: dict[str, Any]) -> None:
    print(f"supervisor pid {state['supervisor_pid']}  running={state['running']}  run dir {state['run_dir']}")
    ports = state["ports"]
    print("ports: " + "  ".join(f"{k}={v}" for k, v in ports.items() if v))
    header = f"{'child':<10} {'pid':>8} {'uptime':>9} {'restarts':>8} {'rooms':>6} {'clients':>8} {'ctrl q':>7} {'ctrl hw':>8}"
    print(header)
    print("-" * len(header))
    for name, child in state["children"].items():
        st = child.get("status", {})
        pid = child["pid"] or "-"
        print(
            f"{name:<10} {pid!s:>8} {child['uptime_s']:>8.1f}s {child['restarts']:>8} "
            f"{st.get('rooms', ''):>6} {st.get('clients', ''):>8} "
            f"{st.get('ctrl_queue_depth', ''):>7} {st.get('ctrl_queue_high_water', ''):>8}"
        )


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


def cmd_stop(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args)
    state = read_status(NodeEndpoints(run_dir).supervisor_file) if run_dir else None
    if state is None:
        print("no running relay found (give --run-dir or --control-port)", file=sys.stderr)
        return 1
    pid = state["supervisor_pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"relay (pid {pid}) is not running")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"relay (pid {pid}) stopped")
            return 0
        time.sleep(0.05)
    print(f"relay (pid {pid}) still running after {args.timeout}s", file=sys.stderr)
    return 1


def cmd_start(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print("invalid configuration:\n" + str(exc), file=sys.stderr)
        return 2
    setup_logging("supervisor", config.log_level_console, config.log_json_console, config.log_dir)
    from supervisor.arbiter import main_start

    return main_start(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"start": cmd_start, "status": cmd_status, "stop": cmd_stop}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
