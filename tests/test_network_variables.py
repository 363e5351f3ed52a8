"""Network variables of one room (shard_worker/network_variables.py): BEHAVIOR §10 in isolation.

Both scopes go through the same rules; each rule is checked for globals and
for client variables. Payloads are decoded with the real codec.
"""

from __future__ import annotations

import logging

import pytest

from relay.protocol import decode
from relay.protocol.messages import ClientVars, ClientVarSync, GlobalVarSync, VarEntry
from shard_worker.network_variables import NetworkVariables, NvLimitError, RestValidationError
from shard_worker.numbering import ClientNumbering
from shard_worker.room_settings import RoomCounters, RoomSettings

ROOM = "room"
ROCKET = "\U0001f680"  # 4 bytes in UTF-8


def make_nv(devices: tuple[str, ...] = ("A", "B"), **settings: object) -> NetworkVariables:
    """Variables of a room whose devices got numbers 1, 2, ... in order."""
    changes: list[tuple] = []
    numbering = ClientNumbering(ROOM, changes)
    for device_id in devices:
        numbering.assign(device_id, 0.0)
    changes.clear()
    return NetworkVariables(
        ROOM, RoomSettings(**settings), numbering, changes, RoomCounters(), 0.0  # type: ignore[arg-type]
    )


def decoded(payloads: list[bytes]) -> list[object]:
    return [decode(p) for p in payloads]


def values(nv: NetworkVariables) -> tuple[dict, dict]:
    return (
        {n: v.value for n, v in nv.globals.items()},
        {d: {n: v.value for n, v in vs.items()} for d, vs in nv.client_vars.items()},
    )


# ------------------------------------------------------------------ limits


def test_names_and_values_are_truncated_by_characters() -> None:
    nv = make_nv(max_var_name_length=3, max_var_value_length=2)
    nv.buffer_global("abcdef", "xyz", 1, 0.0)
    nv.buffer_client(2, ROCKET * 5, "xyz", 1, 0.0)
    nv.flush(0.0)
    assert values(nv) == ({"abc": "xy"}, {"B": {ROCKET * 3: "xy"}})


def test_empty_name_is_ignored_without_counting_a_refusal() -> None:
    nv = make_nv()
    assert not nv.buffer_global("", "v", 1, 0.0)
    assert not nv.buffer_client(1, "", "v", 1, 0.0)
    assert not nv.pending_globals and not nv.pending_client
    assert nv.counters.nv_writes_refused == 0


def test_names_over_255_utf8_bytes_are_refused_in_both_scopes() -> None:
    nv = make_nv()
    assert not nv.buffer_global(ROCKET * 64, "v", 1, 0.0)  # 64 characters, 256 bytes
    assert not nv.buffer_client(1, ROCKET * 64, "v", 1, 0.0)
    assert nv.buffer_global(ROCKET * 63, "v", 1, 0.0)  # 252 bytes fit
    assert nv.counters.nv_writes_refused == 2


def test_global_limit_counts_buffered_names_and_allows_updates() -> None:
    nv = make_nv(max_global_vars=2)
    assert nv.buffer_global("a", "1", 1, 0.0)
    nv.flush(0.0)
    assert nv.buffer_global("b", "1", 1, 0.0)  # buffered, not yet stored
    assert not nv.buffer_global("c", "1", 1, 0.0)
    assert nv.buffer_global("a", "2", 1, 0.0) and nv.buffer_global("b", "2", 1, 0.0)
    nv.flush(0.1)
    assert values(nv)[0] == {"a": "2", "b": "2"}
    assert nv.counters.nv_writes_refused == 1


def test_client_limit_is_per_target_device_and_counts_buffered_names() -> None:
    nv = make_nv(max_client_vars=2)
    assert nv.buffer_client(1, "a", "1", 2, 0.0)
    nv.flush(0.0)
    assert nv.buffer_client(1, "b", "1", 2, 0.0)
    assert not nv.buffer_client(1, "c", "1", 2, 0.0)
    assert nv.buffer_client(1, "a", "2", 2, 0.0)  # update of a stored name
    assert nv.buffer_client(1, "b", "2", 2, 0.0)  # update of a buffered name
    assert nv.buffer_client(2, "c", "1", 1, 0.0)  # another device has its own budget
    nv.flush(0.1)
    assert values(nv)[1] == {"A": {"a": "2", "b": "2"}, "B": {"c": "1"}}
    assert nv.counters.nv_writes_refused == 1


def test_client_write_to_an_unmapped_number_is_refused() -> None:
    nv = make_nv()
    assert not nv.buffer_client(0, "k", "v", 1, 0.0)
    assert not nv.buffer_client(3, "k", "v", 1, 0.0)
    assert nv.counters.nv_writes_refused == 2 and not nv.pending_client


# -------------------------------------------- buffering, sequence, deltas


def test_latest_write_wins_within_a_flush_window() -> None:
    nv = make_nv()
    for value in ("1", "2", "3"):
        nv.buffer_global("g", value, 1, 0.0)
        nv.buffer_client(2, "k", value, 1, 0.0)
    out = decoded(nv.flush(0.05))
    assert out == [
        GlobalVarSync((VarEntry("g", "3", 1),)),
        ClientVarSync((ClientVars(2, (VarEntry("k", "3", 1),)),)),
    ]
    assert nv.write_seq == 2 and nv.counters.nv_writes_applied == 2


def test_globals_apply_before_client_vars_in_first_write_order_with_one_sequence() -> None:
    nv = make_nv()
    nv.buffer_client(1, "k", "v", 2, 0.0)
    nv.buffer_global("b", "1", 1, 0.0)
    nv.buffer_global("a", "1", 1, 0.0)
    nv.buffer_global("b", "2", 2, 0.0)
    out = decoded(nv.flush(0.0))
    assert out[0] == GlobalVarSync((VarEntry("b", "2", 2), VarEntry("a", "1", 1)))
    assert (nv.globals["b"].seq, nv.globals["a"].seq, nv.client_vars["A"]["k"].seq) == (1, 2, 3)
    assert nv.changes == [
        ("global", ROOM, "b", "2", 2, 1),
        ("global", ROOM, "a", "1", 1, 2),
        ("client_var", ROOM, "A", "k", "v", 2, 3),
    ]


def test_writing_the_stored_value_is_a_no_op_without_sync_or_sequence() -> None:
    nv = make_nv()
    nv.buffer_global("g", "v", 1, 0.0)
    nv.buffer_client(1, "k", "v", 1, 0.0)
    nv.flush(0.0)
    before = list(nv.changes)
    nv.buffer_global("g", "v", 2, 1.0)
    nv.buffer_client(1, "k", "v", 2, 1.0)
    assert nv.flush(1.0) == []
    assert nv.changes == before and nv.write_seq == 2
    assert nv.globals["g"].last_writer == 1  # the no-op does not claim the write


def test_client_delta_carries_the_complete_set_of_each_changed_client_only() -> None:
    nv = make_nv(devices=("A", "B", "C"))
    nv.buffer_client(1, "x", "1", 1, 0.0)
    nv.buffer_client(1, "y", "1", 1, 0.0)
    nv.buffer_client(3, "z", "1", 1, 0.0)
    nv.flush(0.0)
    nv.buffer_client(1, "y", "2", 2, 1.0)
    (sync,) = decoded(nv.flush(1.0))
    assert sync == ClientVarSync((ClientVars(1, (VarEntry("x", "1", 1), VarEntry("y", "2", 2))),))


def test_flush_timing_honours_the_interval_and_measures_the_wait() -> None:
    nv = make_nv(nv_flush_interval=0.05)
    assert not nv.flush_due(0.0) and nv.next_flush_at() is None
    nv.buffer_global("g", "1", 1, 0.0)
    assert nv.flush_due(0.0)  # leading edge: the first write after a quiet period
    nv.flush(0.0)
    assert nv.last_flush_wait == 0.0
    nv.buffer_global("g", "2", 1, 0.01)
    nv.buffer_global("g", "3", 1, 0.02)
    assert not nv.flush_due(0.04) and nv.next_flush_at() == pytest.approx(0.05)
    assert nv.flush_due(0.05)
    nv.flush(0.05)
    assert nv.last_flush_wait == pytest.approx(0.04)  # from the oldest buffered write


def test_a_target_expired_before_the_flush_gets_nothing() -> None:
    nv = make_nv()
    nv.buffer_client(2, "k", "v", 1, 0.0)
    nv.forget_device("B", nv.numbering.expire("B"))
    assert nv.flush(0.0) == [] and nv.client_vars == {}


def test_rate_monitor_warns_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    nv = make_nv(nv_monitor_threshold=3, nv_monitor_window_size=1.0)
    with caplog.at_level(logging.WARNING, logger="shard_worker.network_variables"):
        for i in range(6):
            nv.buffer_global("g", str(i), 1, 0.1 * i)
        for i in range(5):
            nv.buffer_client(1, "k", str(i), 1, 1.0 + 0.1 * i)
    warnings = [r.getMessage() for r in caplog.records if "NV writes within" in r.getMessage()]
    assert len(warnings) == 2 and all("threshold 3" in w for w in warnings)
    assert len(nv.pending_globals) == 1  # a warning never throttles


# -------------------------------------------------------- late joiners


def test_full_snapshot_lists_every_mapped_client_and_omits_empty_globals() -> None:
    nv = make_nv(devices=("A", "B", "C"))
    assert decoded(nv.full_sync_payloads()) == [
        ClientVarSync((ClientVars(1, ()), ClientVars(2, ()), ClientVars(3, ())))
    ]
    nv.buffer_global("g", "v", 1, 0.0)
    nv.buffer_client(2, "k", "v", 1, 0.0)
    nv.flush(0.0)
    assert decoded(nv.full_sync_payloads()) == [
        GlobalVarSync((VarEntry("g", "v", 1),)),
        ClientVarSync((ClientVars(1, ()), ClientVars(2, (VarEntry("k", "v", 1),)), ClientVars(3, ()))),
    ]


def test_full_snapshot_of_a_room_without_numbers_is_empty() -> None:
    assert make_nv(devices=()).full_sync_payloads() == []


# -------------------------------------------------------------- deletes


def test_delete_one_or_all_drops_buffered_writes_and_journals_only_real_removals() -> None:
    nv = make_nv()
    for name in ("a", "b", "c"):
        nv.buffer_client(1, name, "v", 1, 0.0)
    nv.flush(0.0)
    nv.buffer_client(1, "a", "w", 1, 1.0)
    nv.buffer_client(1, "b", "w", 1, 1.0)
    nv.buffer_client(2, "a", "w", 1, 1.0)
    assert nv.delete_client_vars("A", 1, "a") == 1
    assert set(nv.pending_client) == {(1, "b"), (2, "a")}
    assert nv.delete_client_vars("A", 1, None) == 2
    assert set(nv.pending_client) == {(2, "a")} and "A" not in nv.client_vars
    assert nv.delete_client_vars("A", 1, None) == 0
    assert [c for c in nv.changes if c[0] == "client_var_del"] == [
        ("client_var_del", ROOM, "A", "a"),
        ("client_var_del", ROOM, "A", None),
    ]


def test_clear_always_answers_an_empty_set() -> None:
    nv = make_nv()
    assert decode(nv.clear_client("A", 1)) == ClientVarSync((ClientVars(1, ()),))
    assert nv.changes == []  # nothing was stored, nothing to journal


# ------------------------------------------------------------------ REST


@pytest.mark.parametrize(
    "variables",
    [{"": "v"}, {"n" * 65: "v"}, {ROCKET * 64: "v"}, {"n": "v" * 1025}, {"n": 1}, {2: "v"}],
)
def test_rest_refuses_what_the_limits_would_truncate(variables: dict) -> None:
    nv = make_nv()
    with pytest.raises(RestValidationError):
        nv.rest_set_globals(variables)
    with pytest.raises(RestValidationError):
        nv.rest_set_client_vars("A", 1, variables)
    assert nv.changes == []


def test_rest_limits_count_stored_buffered_and_new_names() -> None:
    nv = make_nv(max_global_vars=3, max_client_vars=3)
    nv.buffer_global("a", "1", 1, 0.0)
    nv.flush(0.0)
    nv.buffer_global("b", "1", 1, 0.0)
    nv.buffer_client(1, "a", "1", 1, 0.0)
    with pytest.raises(NvLimitError, match="global"):
        nv.rest_set_globals({"c": "1", "d": "1"})
    with pytest.raises(NvLimitError, match="device A"):
        nv.rest_set_client_vars("A", 1, {"b": "1", "c": "1", "d": "1"})
    assert nv.rest_set_globals({"a": "2", "c": "1"}) == [VarEntry("a", "2", 0), VarEntry("c", "1", 0)]
    assert nv.rest_set_client_vars("A", 1, {"b": "1", "c": "1"}) is True


def test_rest_writes_apply_at_once_as_writer_0_and_cancel_buffered_writes() -> None:
    nv = make_nv()
    nv.buffer_global("g", "live", 1, 0.0)
    nv.buffer_client(1, "k", "live", 2, 0.0)
    assert nv.rest_set_globals({"g": "rest"}) == [VarEntry("g", "rest", 0)]
    assert nv.rest_set_client_vars("A", 1, {"k": "rest"}) is True
    assert not nv.pending_globals and not nv.pending_client
    assert nv.flush(0.1) == []
    assert (nv.globals["g"].last_writer, nv.client_vars["A"]["k"].last_writer) == (0, 0)
    assert nv.rest_set_client_vars("A", 1, {"k": "rest"}) is False  # no-op


def test_rest_client_vars_of_a_device_without_number_are_kept_for_later() -> None:
    nv = make_nv()
    assert nv.rest_set_client_vars("Z", None, {"k": "v"}) is True
    assert nv.client_values("Z") == {"k": "v"}
    nv.numbering.assign("Z", 1.0)
    clients = decode(nv.full_sync_payloads()[0]).clients  # type: ignore[attr-defined]
    assert clients[-1] == ClientVars(3, (VarEntry("k", "v", 0),))


# --------------------------------------------------------------- restore


def test_restore_reloads_both_scopes_and_the_sequence_continues() -> None:
    nv = make_nv()
    nv.restore(7, {"g": ("v", 1, 3)}, {"A": {"k": ("x", 2, 7)}})
    assert nv.global_values() == {"g": "v"} and nv.client_values("A") == {"k": "x"}
    assert nv.changes == []
    nv.buffer_global("h", "1", 1, 0.0)
    nv.flush(0.0)
    assert nv.globals["h"].seq == 8
