"""CLI: ``python -m bench.loadgen --control-port 5555 --rooms 2 --clients-per-room 10``.

Prints the merged summary as JSON (CDF arrays omitted unless --full).
"""

from __future__ import annotations

import argparse
import sys

import orjson

from . import LoadConfig, run, wait_ready


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--control-port", type=int, default=5555)
    ap.add_argument("--transform-port", type=int, default=None, help="default: control + 2")
    ap.add_argument("--pub-port", type=int, default=None, help="default: control + 1")
    ap.add_argument("--rooms", type=int, default=1)
    ap.add_argument("--clients-per-room", type=int, default=10)
    ap.add_argument("--pose-hz", type=float, default=10.0)
    ap.add_argument("--broadcast-hz", type=float, default=10.0)
    ap.add_argument("--rpc-hz", type=float, default=5.0, help="probe RPCs per room per second")
    ap.add_argument("--nv-hz", type=float, default=2.0, help="probe NV writes per room per second")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--grace", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sub-mode", choices=("client", "room"), default="client")
    ap.add_argument("--full", action="store_true", help="include CDF arrays")
    a = ap.parse_args(argv)
    cfg = LoadConfig(
        host=a.host,
        control_port=a.control_port,
        transform_port=a.transform_port or a.control_port + 2,
        pub_port=a.pub_port or a.control_port + 1,
        rooms=a.rooms,
        clients_per_room=a.clients_per_room,
        pose_hz=a.pose_hz,
        broadcast_hz=a.broadcast_hz,
        rpc_hz=a.rpc_hz,
        nv_hz=a.nv_hz,
        warmup=a.warmup,
        duration=a.duration,
        grace=a.grace,
        workers=a.workers,
        sub_mode=a.sub_mode,
    )
    if not wait_ready(cfg.host, cfg.control_port, timeout=10.0):
        print("server not ready (no DEVICE_ID_MAPPING for a hello)", file=sys.stderr)
        return 2
    summary = run(cfg, log=lambda m: print(m, file=sys.stderr))
    if not a.full:
        for key in ("rpc", "nv", "freshness"):
            summary[key].pop("cdf", None)
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
