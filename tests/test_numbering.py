"""Client numbering of one room (shard_worker/numbering.py): BEHAVIOR §2 in isolation."""

from __future__ import annotations

import logging

import pytest

from shard_worker.numbering import MAX_CLIENT_NO, ClientNumbering

ROOM = "room"


def numbering() -> tuple[ClientNumbering, list[tuple]]:
    changes: list[tuple] = []
    return ClientNumbering(ROOM, changes), changes


def test_first_sight_takes_the_next_number_from_1_in_arrival_order() -> None:
    n, changes = numbering()
    assert [n.assign(d, 0.0) for d in ("B", "A", "C")] == [1, 2, 3]
    assert n.numbers == {1: "B", 2: "A", 3: "C"}
    assert changes == [
        ("device", ROOM, "B", 1, 2),
        ("device", ROOM, "A", 2, 3),
        ("device", ROOM, "C", 3, 4),
    ]


def test_a_known_device_keeps_its_number_and_refreshes_its_last_seen() -> None:
    n, changes = numbering()
    n.assign("A", 0.0)
    n.assign("B", 1.0)
    assert n.assign("A", 7.0) == 1
    assert n.devices["A"].last_seen == 7.0
    assert len(changes) == 2  # nothing new to journal
    n.touch("B", 9.0)
    assert n.devices["B"].last_seen == 9.0


def test_lookups_both_ways() -> None:
    n, _ = numbering()
    n.assign("A", 0.0)
    assert n.number_of("A") == 1 and n.number_of("Z") is None
    assert n.device_of(1) == "A" and n.device_of(0) is None and n.device_of(2) is None


def test_expired_lists_only_unseen_non_members_strictly_past_the_expiry() -> None:
    n, _ = numbering()
    n.assign("old", 0.0)
    n.assign("member", 0.0)
    n.assign("edge", 5.0)
    n.assign("fresh", 9.0)
    # now - last_seen must exceed the expiry: "edge" is exactly at it.
    assert n.expired(15.0, 10.0, members={"member"}) == ["old"]


def test_expire_frees_the_number_journals_it_and_returns_it() -> None:
    n, changes = numbering()
    n.assign("A", 0.0)
    n.assign("B", 0.0)
    assert n.expire("A") == 1
    assert "A" not in n.devices and 1 not in n.numbers
    assert changes[-1] == ("device_expire", ROOM, "A")


def test_numbers_are_not_reused_while_the_counter_lasts() -> None:
    n, _ = numbering()
    n.assign("A", 0.0)
    n.assign("B", 0.0)
    n.expire("A")
    assert n.assign("C", 1.0) == 3  # not A's freed 1
    assert n.assign("A", 1.0) == 4  # an expired device is new again


def test_after_65535_a_new_device_takes_the_lowest_free_number_and_goes_last() -> None:
    n, changes = numbering()
    for d in ("A", "B", "C"):
        n.assign(d, 0.0)
    n.next_client_no = MAX_CLIENT_NO + 1  # as if 65 535 were given out
    n.expire("C")
    n.expire("A")
    assert n.assign("D", 1.0) == 1
    assert n.assign("E", 1.0) == 3
    assert changes[-1] == ("device", ROOM, "E", 3, MAX_CLIENT_NO + 1)
    # Assignment order: B (original), then the reused numbers in reuse order.
    order = n.assignment_order()
    assert sorted(order, key=order.__getitem__) == [2, 1, 3]


def test_no_free_number_means_none_and_nothing_recorded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shard_worker.numbering as numbering_module
    from relay.logs import RateLimitedLog

    # A fresh rate limiter: an earlier test may have used this reason's line.
    monkeypatch.setattr(numbering_module, "limited_log", RateLimitedLog(logging.getLogger("shard_worker.room")))
    n, changes = numbering()
    n.numbers = {no: f"d{no}" for no in range(1, MAX_CLIENT_NO + 1)}
    n.next_client_no = MAX_CLIENT_NO + 1
    with caplog.at_level(logging.ERROR, logger="shard_worker.room"):
        assert n.assign("Z", 0.0) is None
    assert "Z" not in n.devices and changes == []
    assert any("no client number left" in r.getMessage() for r in caplog.records)


def test_restore_keeps_order_and_never_moves_the_counter_back() -> None:
    n, changes = numbering()
    n.restore({"B": 2, "A": 1}, next_client_no=5, now=50.0)
    assert list(n.numbers.items()) == [(2, "B"), (1, "A")]
    assert n.devices["A"].last_seen == 50.0  # the expiry clock restarts
    assert n.next_client_no == 5
    assert n.assign("C", 50.0) == 5
    assert changes == [("device", ROOM, "C", 5, 6)]  # a reload itself journals nothing
    n.restore({}, next_client_no=2, now=60.0)
    assert n.next_client_no == 6


def test_after_65535_real_assignments_expired_numbers_are_reused_in_assignment_order() -> None:
    """BEHAVIOR §2 "reuse": exhaustion recycles, first in assignment order (W13)."""
    n, changes = numbering()
    for i in range(MAX_CLIENT_NO):
        assert n.assign(f"d{i + 1}", 0.0) == i + 1
    assert n.next_client_no == MAX_CLIENT_NO + 1
    # d40 and d9 expired while the counter lasted; d9 was given first.
    n.expire("d40")
    n.expire("d9")
    assert n.assign("x", 1.0) == 9
    assert n.assign("full", 1.0) == 40
    assert n.assign("none", 1.0) is None  # nothing else is free: cannot join
    n.expire("x")
    assert n.assign("y", 2.0) == 9
    # "full" (given 40) was assigned before y (given 9 again): once both
    # expire, 40 is the first in assignment order although 9 is lower ...
    n.expire("y")
    n.expire("full")
    n.expire("d3")  # ... and d3's number, given by the counter, comes before both.
    assert [n.assign(d, 3.0) for d in ("p", "q", "r", "s")] == [3, 40, 9, None]
    assert changes[-1] == ("device", ROOM, "r", 9, MAX_CLIENT_NO + 1)


def test_reuse_after_a_reload_takes_numbers_freed_before_it_first() -> None:
    n, _ = numbering()
    devices = {f"d{no}": no for no in range(1, MAX_CLIENT_NO + 1) if no not in (5, 7)}
    n.restore(devices, next_client_no=MAX_CLIENT_NO + 1, now=0.0)
    n.expire("d2")
    assert [n.assign(d, 1.0) for d in ("a", "b", "c", "d")] == [5, 7, 2, None]
