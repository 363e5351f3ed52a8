"""bench/stall_probe.py: late wake-ups are recorded, and two probes' gaps are matched in time."""

from __future__ import annotations

import time

from bench.stall_probe import SLEEP, overlapping, probe


def test_the_probe_wakes_often_and_records_only_late_wake_ups() -> None:
    out = probe(0.2, threshold_ms=10.0)
    assert out["wakeups"] >= 0.2 / (SLEEP * 10)  # even a loaded machine wakes it a few dozen times
    assert all(ms > 10.0 for _, ms in out["gaps"])
    assert 0.15 <= out["seconds"] <= 1.0


def test_a_stop_request_ends_the_probe_early() -> None:
    started = time.monotonic()
    out = probe(30.0, stop=lambda: time.monotonic() - started > 0.05)
    assert time.monotonic() - started < 5.0 and out["seconds"] < 5.0


def test_gaps_overlap_when_their_intervals_meet() -> None:
    # [wall at wake-up, ms late]: a gap covers (wall - ms/1000, wall).
    servers = [[100.0, 50.0], [200.0, 20.0], [300.0, 30.0]]
    own = [[100.03, 40.0], [250.0, 20.0], [299.99, 15.0]]
    assert overlapping(servers, own) == [(100.0, 50.0, 40.0), (300.0, 30.0, 15.0)]
    assert overlapping(servers, []) == []
