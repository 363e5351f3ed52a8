"""Protocol-true load generator for NetSync protocol v8 servers.

Many simulated clients per process, one ``zmq.Poller`` per process, no thread
per client, pre-encoded payloads. See ``BENCHMARKS.md`` for what is measured.

Public API::

    summary = run(LoadConfig(control_port=..., transform_port=..., pub_port=...))
    wait_ready("127.0.0.1", control_port, timeout=10.0)
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import zmq

from . import wire
from .config import LoadConfig
from .stats import merge, percentile

__all__ = ["LoadConfig", "run", "wait_ready", "percentile"]


def wait_ready(host: str, control_port: int, timeout: float = 15.0, room: bytes = b"bench-ready") -> bool:
    """True once a hello on the control port gets a DEVICE_ID_MAPPING back."""
    device = b"bench-ready-" + str(time.monotonic_ns()).encode()
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{host}:{control_port}")
        try:
            sock.send_multipart([room, wire.encode_hello(device)])
            until = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < until:
                if sock.poll(max(1, int((until - time.monotonic()) * 1000))):
                    frames = sock.recv_multipart()
                    if wire.find_client_no(frames[-1], device) is not None:
                        return True
        finally:
            sock.close(0)
    return False


def _split(n: int, parts: int) -> list[range]:
    return [range(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def run(
    cfg: LoadConfig,
    on_phase: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one load-generator pass and return the merged summary.

    ``on_phase`` is called with "window_start" and "window_end" from this
    (parent) process at the window edges, e.g. to sample server CPU.
    """
    ctx = mp.get_context("spawn")
    workers = max(1, min(cfg.workers, cfg.total_clients))
    procs = []
    conns = []
    for i, gids in enumerate(_split(cfg.total_clients, workers)):
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=_entry, args=(cfg.to_dict(), i, list(gids), child), daemon=True
        )
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    try:
        ready = [_expect(c, "ready", cfg.join_timeout + 30) for c in conns]
        joined = sum(r["joined"] for r in ready)
        if log:
            log(f"loadgen: {joined}/{cfg.total_clients} clients joined")
        ws = time.monotonic() + cfg.warmup
        we = ws + cfg.duration
        end = we + cfg.grace
        for c in conns:
            c.send(("go", ws, we, end))
        _sleep_until(ws)
        if on_phase:
            on_phase("window_start")
        _sleep_until(we)
        if on_phase:
            on_phase("window_end")
        results = [_expect(c, "result", cfg.grace + 60) for c in conns]
    finally:
        for c in conns:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    return merge(cfg, results, cfg.duration)


def _entry(cfg_dict: dict[str, Any], index: int, gids: list[int], conn: Any) -> None:
    from .worker import worker_main

    worker_main(cfg_dict, index, gids, conn)


def _sleep_until(t: float) -> None:
    while True:
        d = t - time.monotonic()
        if d <= 0:
            return
        time.sleep(min(d, 0.05))


def _expect(conn: Any, what: str, timeout: float) -> dict[str, Any]:
    if not conn.poll(timeout):
        raise TimeoutError(f"load generator worker did not report {what!r} within {timeout:.0f} s")
    msg = conn.recv()
    if msg[0] == "error":
        raise RuntimeError("load generator worker failed:\n" + msg[1])
    if msg[0] != what:
        raise RuntimeError(f"expected {what!r} from worker, got {msg[0]!r}")
    return msg[1]
