"""relay.logs.RateLimitedLog: one line per reason per interval, counts kept."""

from __future__ import annotations

import logging

import pytest

from relay.logs import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.limited"]


def test_one_line_per_reason_per_interval_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), 5.0, clock=clock)
    with caplog.at_level(logging.INFO):
        for n in range(1000):
            limited.warning("refused", "write %d refused", n)
            limited.warning("other", "other %d", n)
        assert records(caplog) == ["write 0 refused", "other 0"]
        clock.now += 5.0
        limited.warning("refused", "write %d refused", 1000)
    lines = records(caplog)
    assert len(lines) == 3
    assert lines[2].startswith("write 1000 refused (+999 more 'refused' suppressed")
    assert "1001 in total" in lines[2]
    assert limited.counts == {"refused": 1001, "other": 1000}


def test_flush_reports_a_flood_that_stopped(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), 5.0, clock=clock)
    with caplog.at_level(logging.INFO):
        for _ in range(2000):
            limited.drop("bad_frame", "junk")
        assert limited.flush() == 0  # interval not over yet
        clock.now += 5.0
        assert limited.flush() == 1
        assert limited.flush() == 0  # reported once
    lines = records(caplog)
    assert len(lines) == 2
    assert lines[1] == "bad_frame: 1999 more suppressed in the last 5s (2000 in total)"
    assert caplog.records[-1].levelno == logging.WARNING


def test_first_traceback_is_kept_later_ones_are_summarised(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), 1.0, clock=clock)
    with caplog.at_level(logging.INFO):
        for n in range(3):
            try:
                raise KeyError(f"k{n}")
            except KeyError:
                limited.exception("handler_error", "handler failed")
            clock.now += 1.0
    ours = [r for r in caplog.records if r.name == "test.limited"]
    assert len(ours) == 3
    assert ours[0].exc_info is not None and ours[0].exc_info[0] is KeyError
    assert not ours[1].exc_info and "KeyError: 'k1'" in ours[1].getMessage()
    assert limited.counts["handler_error"] == 3


def test_reasons_are_bounded(clock: Clock) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), 5.0, max_reasons=3, clock=clock)
    for n in range(10):
        limited.warning(f"r{n}", "x")
    assert set(limited.counts) == {"r0", "r1", "r2", "other"}
    assert limited.counts["other"] == 7


def test_drop_counts_messages_not_calls(clock: Clock) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), 5.0, clock=clock)
    limited.drop("shard_queue_full", "batch refused", 128)
    limited.drop("shard_queue_full", "batch refused", 128)
    assert limited.counts == {"shard_queue_full": 256}
