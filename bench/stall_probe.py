"""Stalls of the machine itself, as a process that does nothing else sees them.

A process that sleeps 2 ms at a time and does no work should wake 2 ms
later. When it wakes 50 or 100 ms later, neither its code nor a server's can
be the reason: its scheduling group waited for the CPU (the kernel's
autogroup puts each session in its own), or the whole virtual machine was
not running. Two probes tell those apart: one in the session of the
servers under test, one in a session of its own. A gap both probes saw at
the same moment is the machine's; one only the servers' session saw is CPU
contention in that session.

    python -m bench.stall_probe --seconds 120 --out gaps.json [--new-session]

writes ``{"started": wall, "seconds": s, "wakeups": n, "gaps": [[wall at
wake-up, gap in ms], ...]}`` for every wake-up more than ``--threshold-ms``
late (default 10). ``overlapping`` matches two probes' gaps in time.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["overlapping", "probe"]

SLEEP = 0.002


def probe(seconds: float, threshold_ms: float = 10.0, stop: Any = None) -> dict[str, Any]:
    """Sleep ``SLEEP`` at a time for ``seconds`` (or until ``stop()``); record late wake-ups."""
    started = time.time()
    gaps: list[list[float]] = []
    wakeups = 0
    end = time.monotonic() + seconds
    last = time.monotonic()
    while last < end and not (stop is not None and stop()):
        time.sleep(SLEEP)
        now = time.monotonic()
        wakeups += 1
        late_ms = (now - last - SLEEP) * 1000
        if late_ms > threshold_ms:
            gaps.append([round(time.time(), 4), round(late_ms, 2)])
        last = now
    return {"started": started, "seconds": round(time.monotonic() - end + seconds, 3), "wakeups": wakeups,
            "gaps": gaps}


def overlapping(a: list[list[float]], b: list[list[float]], slack_s: float = 0.005) -> list[tuple[float, float, float]]:
    """Gaps of ``a`` that overlap in time a gap of ``b``: (wall, ms in a, ms in b)."""
    out = []
    for end_a, ms_a in a:
        start_a = end_a - ms_a / 1000
        for end_b, ms_b in b:
            start_b = end_b - ms_b / 1000
            if start_a <= end_b + slack_s and start_b <= end_a + slack_s:
                out.append((end_a, ms_a, ms_b))
                break
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threshold-ms", type=float, default=10.0)
    p.add_argument("--new-session", action="store_true", help="run in a session (scheduling group) of its own")
    a = p.parse_args(argv)
    if a.new_session:
        os.setsid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    result = probe(a.seconds, a.threshold_ms, stop=lambda: bool(stopping))
    a.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
