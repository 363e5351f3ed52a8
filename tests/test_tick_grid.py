"""The broadcast tick grid (relay/tick_grid.py): pure arithmetic on the wall clock."""

from __future__ import annotations

import pytest

from relay.tick_grid import MAX_POSE_WAIT, seconds_to_read, seconds_to_tick


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (1000.000, 0.100),  # on a grid point: the next one
        (1000.030, 0.070),
        (1000.099, 0.001 + 0.100),  # a timer a hair early: not a second tick at once
        (1000.1005, 0.0995),  # a little late: the next grid point, not a skip
        (1000.170, 0.030),  # 70 ms late: still the next grid point
    ],
)
def test_ticks_land_on_multiples_of_the_interval(wall: float, expected: float) -> None:
    assert seconds_to_tick(wall, 0.1) == pytest.approx(expected, abs=1e-6)


def test_two_processes_with_any_phase_agree_on_the_grid() -> None:
    """Wherever each one starts, both tick at the same wall times."""
    interval = 1 / 30
    for start in (5.0, 5.013, 5.0271):
        tick = start + seconds_to_tick(start, interval)
        assert (tick / interval) == pytest.approx(round(tick / interval), abs=1e-6)


def test_reads_come_lead_before_each_tick_and_once_per_tick() -> None:
    interval, lead = 0.1, 0.005
    wall = 1000.020
    read = wall + seconds_to_read(wall, interval, lead)
    assert read == pytest.approx(1000.095)
    # Right after that read, the next one is a whole interval later.
    assert seconds_to_read(read + 0.0001, interval, lead) == pytest.approx(interval - 0.0001, abs=1e-6)
    # Past the read but before the tick: the next period's read.
    assert seconds_to_read(1000.097, interval, lead) == pytest.approx(0.098, abs=1e-6)


def test_at_a_slow_tick_poses_are_still_read_every_max_pose_wait() -> None:
    """At 0.5 Hz a tick's poses would fill the in-flight bound: reads keep coming."""
    interval, lead = 2.0, 0.005
    assert seconds_to_read(1000.0, interval, lead) == pytest.approx(MAX_POSE_WAIT)
    # ... and the read before the tick is still lead before it.
    assert seconds_to_read(1001.92, interval, lead) == pytest.approx(0.075)
