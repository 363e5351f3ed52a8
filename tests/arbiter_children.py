"""Child targets for arbiter tests: plain functions that spawn can import.

Heartbeats use time.monotonic(), as the real children do (the supervisor
compares them with its own monotonic clock).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from relay.fatal import record_fatal


def _beat_until_term(heartbeat: Any, lifetime: float | None = None) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end = None if lifetime is None else time.monotonic() + lifetime
    while not stop and (end is None or time.monotonic() < end):
        heartbeat.value = time.monotonic()
        time.sleep(0.05)


def steady(heartbeat: Any = None) -> None:
    """Ready at once, beats until SIGTERM, exits 0."""
    _beat_until_term(heartbeat)


def raise_at_start(message: str, heartbeat: Any = None) -> None:
    """Never ready: an uncaught exception (the supervisor's wrapper records it)."""
    raise RuntimeError(message)


def die_after_ready(lifetime: float, heartbeat: Any = None) -> None:
    """Ready, then exits with code 3 after ``lifetime`` seconds, every time."""
    _beat_until_term(heartbeat, lifetime)
    sys.exit(3)


def hang_after_ready(heartbeat: Any = None) -> None:
    """Ready once, then silent forever (the supervisor must kill it)."""
    heartbeat.value = time.monotonic()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


def ready_then_broken(counter_dir: str, run_dir: str, name: str, reason: str, heartbeat: Any = None) -> None:
    """First start: ready, exits 3 shortly after. Every later start: records
    ``reason`` and exits 1 before being ready (a data file gone bad)."""
    starts = len(os.listdir(counter_dir))
    with open(os.path.join(counter_dir, f"start-{os.getpid()}"), "w"):
        pass
    if starts == 0:
        _beat_until_term(heartbeat, 0.3)
        sys.exit(3)
    record_fatal(run_dir, name, reason)
    sys.exit(1)
