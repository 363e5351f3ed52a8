"""Rooms moving between shard processes of one node on the embedded store.

Real SQLite files in a temporary data dir, real child processes where a
holder's liveness matters (shard_worker/store/sqlite_leases.py and the moving
of rows in shard_worker/store/sqlite_store.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from shard_worker.store.base import LeaseBusy, RoomSnapshot, StoreError
from shard_worker.store.sqlite_leases import SqliteLeases, leases_path, process_alive, process_start
from shard_worker.store.sqlite_store import (
    SqliteRoomStore,
    open_store,
    prepare_cold_start,
    shard_store_path,
)

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parent.parent
POSE = bytes(range(13))
TABLES = ("rooms", "devices", "globals", "client_vars", "objects", "object_poses", "members")


def full_state(room: str = "room", seq: int = 0) -> list[tuple]:
    """Every record kind, with numbers reused so that assignment order is not number order."""
    return [
        ("device", room, "dev-a", 1, 2),
        ("device", room, "dev-b", 2, 3),
        ("device", room, "dev-c", 3, 4),
        ("device_expire", room, "dev-a"),
        ("device", room, "dev-d", 1, 4),
        ("global", room, "score", "10", 1, seq + 1),
        ("global", room, "mode", "race", 2, seq + 2),
        ("client_var", room, "dev-b", "hp", "100", 2, seq + 3),
        ("client_var", room, "dev-d", "team", "red", 1, seq + 4),
        ("object", room, 7, 1),
        ("object", room, 3, 2),
        ("object_pose", room, 7, POSE, 12),
        ("member", room, "dev-b", b"\x00id-b", False),
        ("member", room, "dev-d", None, True),
    ]


def expected_state(room: str = "room", seq: int = 0) -> RoomSnapshot:
    return RoomSnapshot(
        room_id=room,
        devices={"dev-b": 2, "dev-c": 3, "dev-d": 1},
        next_client_no=4,
        write_seq=seq + 4,
        globals={"score": ("10", 1, seq + 1), "mode": ("race", 2, seq + 2)},
        client_vars={"dev-b": {"hp": ("100", 2, seq + 3)}, "dev-d": {"team": ("red", 1, seq + 4)}},
        objects={3: 2, 7: 1},
        members={"dev-b": (b"\x00id-b", False), "dev-d": (None, True)},
        object_poses={7: (POSE, 12)},
    )


def rows_of(data_dir: str, shard: int, room: str) -> int:
    """How many rows of ``room`` shard file ``shard`` has, over every room table."""
    db = sqlite3.connect(shard_store_path(data_dir, shard))
    try:
        return sum(db.execute(f"SELECT COUNT(*) FROM {t} WHERE room_id = ?", (room,)).fetchone()[0]
                   for t in TABLES)
    finally:
        db.close()


def lease_row(data_dir: str, room: str) -> tuple | None:
    db = sqlite3.connect(leases_path(data_dir))
    try:
        return db.execute("SELECT holder, pid, pid_start, token, home FROM leases WHERE room_id = ?",
                          (room,)).fetchone()
    finally:
        db.close()


def assert_same(snap: RoomSnapshot | None, expected: RoomSnapshot) -> None:
    assert snap == expected
    assert snap is not None
    # dict equality ignores order; the order is part of the state
    assert list(snap.devices) == list(expected.devices)
    assert list(snap.globals) == list(expected.globals)
    assert list(snap.members) == list(expected.members)


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")


# --------------------------------------------------------- hand-over in one node


def test_second_shard_waits_then_gets_the_room_with_all_its_state(data_dir: str) -> None:
    a, b = open_store(data_dir, 0), open_store(data_dir, 1)
    try:
        t1 = a.acquire("room")
        a.apply(full_state())
        with pytest.raises(LeaseBusy) as busy:
            b.acquire("room")
        assert "0.0" in busy.value.holder and str(os.getpid()) in busy.value.holder
        assert 0 < busy.value.retry_after <= 0.1
        assert rows_of(data_dir, 1, "room") == 0  # a refused acquire moves nothing

        a.release(["room"])
        t2 = b.acquire("room")
        assert t2 > t1
        assert_same(b.load_room("room"), expected_state())
        # the first file no longer has the room, in any table
        assert a.load_room("room") is None
        assert "room" not in a.room_ids() and b.room_ids() == ["room"]
        assert rows_of(data_dir, 0, "room") == 0
        assert lease_row(data_dir, "room")[4] == 1  # home

        # and back: b's writes travel too, and a's acquire is fenced higher again
        b.apply([("global", "room", "score", "11", 3, 5), ("member_remove", "room", "dev-b")])
        b.release(["room"])
        assert a.acquire("room") > t2
        snap = a.load_room("room")
        assert snap is not None and snap.globals["score"] == ("11", 3, 5)
        assert list(snap.members) == ["dev-d"]
        assert rows_of(data_dir, 1, "room") == 0
    finally:
        a.close()
        b.close()


def test_reacquire_by_the_holder_keeps_the_token(data_dir: str) -> None:
    with open_store(data_dir, 0) as a:
        token = a.acquire("room")
        assert a.acquire("room") == token
        assert lease_row(data_dir, "room")[3] == token


def test_a_new_room_is_homed_where_it_was_first_acquired(data_dir: str) -> None:
    with open_store(data_dir, 3) as a:
        a.acquire("fresh")
        assert a.load_room("fresh") is None
        holder, pid, start, token, home = lease_row(data_dir, "fresh")
        assert (holder, pid, start, token, home) == ("3.0", os.getpid(), process_start(os.getpid()), 1, 3)


def test_close_hands_every_lease_over(data_dir: str) -> None:
    a, b = open_store(data_dir, 0), open_store(data_dir, 1)
    try:
        a.acquire("r1")
        a.acquire("r2")
        a.apply([("global", "r1", "k", "v", 1, 1)])
        a.close()
        assert lease_row(data_dir, "r1")[:3] == (None, None, None)
        b.acquire("r1")
        b.acquire("r2")
        snap = b.load_room("r1")
        assert snap is not None and snap.globals == {"k": ("v", 1, 1)}
    finally:
        a.close()
        b.close()


def test_renew_reports_lost_leases_and_release_frees_only_our_own(data_dir: str) -> None:
    a, b = open_store(data_dir, 0), open_store(data_dir, 1)
    try:
        a.acquire("r1")
        a.acquire("r2")
        assert a.renew(["r1", "r2"]) == []
        b.release(["r1"])  # not b's: nothing happens
        with pytest.raises(LeaseBusy):
            b.acquire("r1")
        # A cold start while a is (wrongly) still running takes its leases away.
        cold = SqliteLeases(data_dir, "cold-start")
        cold.clear_holders()
        cold.close()
        assert a.acquire("r1")  # a serves r1 again
        b.acquire("r2")
        assert a.renew(["r1", "r2"]) == ["r2"]
        assert b.renew(["r2"]) == []
        a.release(["r2"])  # b's now: stays b's
        with pytest.raises(LeaseBusy):
            a.acquire("r2")
    finally:
        a.close()
        b.close()


# -------------------------------------------------- holders in other processes

HOLDER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    from shard_worker.store.sqlite_store import open_store

    data_dir, shard, incarnation, then = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = open_store(data_dir, shard, incarnation=incarnation)
    store.acquire("room")
    store.apply(RECORDS)
    print("held", flush=True)
    if then == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif then == "exit":
        os._exit(0)  # no close: the lease is never released
    sys.stdin.readline()  # "close": hold until told, then stop gracefully
    store.close()
    print("closed", flush=True)
    """
).replace("RECORDS", repr(full_state()))


def holder(data_dir: str, then: str, shard: int = 0, incarnation: int = 0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, data_dir, str(shard), str(incarnation), then],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("then", ["sigkill", "exit"])
def test_lease_of_a_dead_process_is_taken_over_at_once(data_dir: str, then: str) -> None:
    proc = holder(data_dir, then)
    proc.wait(timeout=10)
    with open_store(data_dir, 1) as b:
        assert b.acquire("room") == 2
        assert_same(b.load_room("room"), expected_state())
        assert rows_of(data_dir, 0, "room") == 0


def test_a_killed_holder_not_yet_reaped_is_dead(data_dir: str) -> None:
    proc = holder(data_dir, "close")
    try:
        with open_store(data_dir, 1) as b:
            with pytest.raises(LeaseBusy):
                b.acquire("room")
            proc.kill()  # not waited for: a zombie, which kill(pid, 0) still finds
            deadline = time.monotonic() + 5
            while process_alive(proc.pid, None) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert os.path.exists(f"/proc/{proc.pid}")  # still there, unreaped
            b.acquire("room")
            assert_same(b.load_room("room"), expected_state())
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_live_holder_in_another_process_hands_over_on_graceful_stop(data_dir: str) -> None:
    proc = holder(data_dir, "close")
    try:
        with open_store(data_dir, 1) as b:
            with pytest.raises(LeaseBusy) as busy:
                b.acquire("room")
            assert f"pid {proc.pid}" in busy.value.holder
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
            assert proc.wait(timeout=10) == 0
            assert b.acquire("room") == 2
            assert_same(b.load_room("room"), expected_state())
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_new_incarnation_of_a_slot_waits_for_the_old_one(data_dir: str) -> None:
    proc = holder(data_dir, "close", shard=0, incarnation=0)
    try:
        with open_store(data_dir, 0, incarnation=1) as new:
            with pytest.raises(LeaseBusy) as busy:
                new.acquire("room")
            assert "0.0" in busy.value.holder
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
            assert new.acquire("room") == 2
            assert_same(new.load_room("room"), expected_state())  # same file, nothing moved
            assert lease_row(data_dir, "room")[0] == "0.1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_reused_pid_is_not_mistaken_for_the_holder(data_dir: str) -> None:
    me, started = os.getpid(), process_start(os.getpid())
    assert started is not None
    assert process_alive(me, started)
    assert not process_alive(me, started + 1)
    with open_store(data_dir, 0) as a:
        a.acquire("room")
        a.apply([("global", "room", "k", "v", 1, 1)])
    # The row says a process with our pid but another start time holds it:
    # that process is gone and the pid was reused (by us).
    db = sqlite3.connect(leases_path(data_dir))
    with db:
        db.execute("UPDATE leases SET holder = '0.0', pid = ?, pid_start = ?", (me, started - 1))
    db.close()
    with open_store(data_dir, 1) as b:
        assert b.acquire("room") == 2
        snap = b.load_room("room")
        assert snap is not None and snap.globals == {"k": ("v", 1, 1)}


# ------------------------------------------------------- another shard count


def legacy_room(data_dir: str, shard: int, room: str, seq: int) -> None:
    """Rows written by code without a lease table (the room's home unknown)."""
    with SqliteRoomStore(shard_store_path(data_dir, shard)) as old:
        old.apply(full_state(room, seq))
    assert not os.path.exists(leases_path(data_dir)) or lease_row(data_dir, room) is None


def test_legacy_room_of_a_larger_layout_is_found_and_moved(data_dir: str) -> None:
    legacy_room(data_dir, 2, "room", 0)  # shard 2 of 3
    prepare_cold_start(data_dir, 2)  # restarted with 2 shards
    with open_store(data_dir, 1) as b:
        b.acquire("room")
        assert_same(b.load_room("room"), replace(expected_state(), members={}))  # cold start
    assert rows_of(data_dir, 2, "room") == 0
    assert lease_row(data_dir, "room")[4] == 1


def test_of_several_legacy_copies_the_last_written_wins(data_dir: str) -> None:
    legacy_room(data_dir, 0, "room", 0)
    legacy_room(data_dir, 2, "room", 10)  # written later: higher write_seq
    legacy_room(data_dir, 3, "room", 5)
    with open_store(data_dir, 1) as b:
        b.acquire("room")
        assert_same(b.load_room("room"), expected_state(seq=10))
    assert [rows_of(data_dir, k, "room") for k in (0, 2, 3)] == [0, 0, 0]  # stale copies dropped


def test_of_equal_legacy_copies_the_lowest_index_wins(data_dir: str) -> None:
    legacy_room(data_dir, 2, "room", 0)
    with SqliteRoomStore(shard_store_path(data_dir, 2)) as old:
        old.apply([("object", "room", 99, 1)])  # no write_seq bump
    legacy_room(data_dir, 1, "room", 0)
    with open_store(data_dir, 3) as d:
        d.acquire("room")
        snap = d.load_room("room")
        assert snap is not None and 99 not in snap.objects  # shard-1's copy


def test_legacy_copy_in_our_own_file_stays_put(data_dir: str) -> None:
    legacy_room(data_dir, 1, "room", 0)
    with open_store(data_dir, 1) as b:
        b.acquire("room")
        assert_same(b.load_room("room"), expected_state())
    assert lease_row(data_dir, "room")[4] == 1


def test_known_home_of_another_shard_count_is_used(data_dir: str) -> None:
    with open_store(data_dir, 4) as old:  # shard 4 of an earlier 5-shard run
        old.acquire("room")
        old.apply(full_state())
    prepare_cold_start(data_dir, 2)
    with open_store(data_dir, 0) as a:
        a.acquire("room")
        assert_same(a.load_room("room"), replace(expected_state(), members={}))  # cold start
    assert rows_of(data_dir, 4, "room") == 0


# ------------------------------------------------- crashes in the middle of a move

MOVER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    from shard_worker.store.sqlite_store import open_store

    data_dir, crash = sys.argv[1], sys.argv[2]
    store = open_store(data_dir, 1)
    real_set_home = store.leases.set_home

    def set_home(room_id, home):
        # Step 1 (copy into shard-1) is committed when this is called.
        if crash == "after-home":
            real_set_home(room_id, home)  # step 2 done, step 3 never runs
        os.kill(os.getpid(), signal.SIGKILL)

    store.leases.set_home = set_home
    store.acquire("room")
    """
)


def crash_mid_move(data_dir: str, crash: str) -> None:
    with open_store(data_dir, 0) as a:
        a.acquire("room")
        a.apply(full_state())
    proc = subprocess.run([sys.executable, "-c", MOVER, data_dir, crash], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_crash_after_the_copy_before_the_home_switch(data_dir: str) -> None:
    crash_mid_move(data_dir, "before-home")
    # two copies, home still on the source: shard 0 keeps serving its copy
    assert rows_of(data_dir, 0, "room") == rows_of(data_dir, 1, "room") > 0
    assert lease_row(data_dir, "room")[4] == 0
    with open_store(data_dir, 0) as a:
        a.acquire("room")
        assert_same(a.load_room("room"), expected_state())
        a.apply([("device_expire", "room", "dev-c"), ("global", "room", "mode", "walk", 1, 9)])
    # the next move replaces the stale copy in shard-1, never merges with it
    with open_store(data_dir, 1) as b:
        b.acquire("room")
        snap = b.load_room("room")
        assert snap is not None
        assert "dev-c" not in snap.devices and snap.globals["mode"] == ("walk", 1, 9)
    assert rows_of(data_dir, 0, "room") == 0


def test_crash_after_the_home_switch_before_the_old_copy_is_deleted(data_dir: str) -> None:
    crash_mid_move(data_dir, "after-home")
    assert rows_of(data_dir, 0, "room") == rows_of(data_dir, 1, "room") > 0
    assert lease_row(data_dir, "room")[4] == 1
    with open_store(data_dir, 1) as b:  # restarted shard 1: the room is home
        b.acquire("room")
        assert_same(b.load_room("room"), expected_state())
        b.apply([("device_expire", "room", "dev-b"), ("global", "room", "score", "12", 2, 9)])
    # shard 0 gets it back: its stale copy is replaced by shard 1's live one
    with open_store(data_dir, 0) as a:
        a.acquire("room")
        snap = a.load_room("room")
        assert snap is not None
        assert "dev-b" not in snap.devices and snap.globals["score"] == ("12", 2, 9)
    assert rows_of(data_dir, 1, "room") == 0


# ------------------------------------------------------------------ cold start


def test_cold_start_clears_members_and_holders_in_every_file(data_dir: str) -> None:
    stores = [open_store(data_dir, k) for k in range(4)]  # an earlier 4-shard run
    try:
        for k, store in enumerate(stores):
            store.acquire(f"r{k}")
            store.apply(full_state(f"r{k}"))
        prepare_cold_start(data_dir, 2)  # the earlier run's processes are "gone"
        for k in range(4):
            db = sqlite3.connect(shard_store_path(data_dir, k))
            assert db.execute("SELECT COUNT(*) FROM members").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 3  # state stays
            db.close()
            assert lease_row(data_dir, f"r{k}")[:3] == (None, None, None)
            assert lease_row(data_dir, f"r{k}")[4] == k  # homes stay
        assert stores[0].renew(["r0"]) == ["r0"]
        with open_store(data_dir, 1) as b:
            b.acquire("r3")  # no wait for the earlier holder
            snap = b.load_room("r3")
            assert snap is not None and snap.members == {} and snap.devices == expected_state().devices
    finally:
        for store in stores:
            store.close()


def test_cold_start_creates_the_files_of_its_shard_count(data_dir: str) -> None:
    prepare_cold_start(data_dir, 3)
    assert sorted(os.listdir(data_dir)) == [
        "leases.sqlite3", "shard-0.sqlite3", "shard-1.sqlite3", "shard-2.sqlite3",
    ]


def test_cold_start_refuses_a_corrupt_file_beyond_its_shard_count(data_dir: str) -> None:
    prepare_cold_start(data_dir, 2)
    bad = shard_store_path(data_dir, 5)
    with open(bad, "wb") as fh:
        fh.write(b"not a database" * 500)
    with pytest.raises(StoreError) as info:
        prepare_cold_start(data_dir, 2)
    assert bad in str(info.value)


def test_cold_start_refuses_a_corrupt_lease_table(data_dir: str) -> None:
    prepare_cold_start(data_dir, 1)
    with open(leases_path(data_dir), "wb") as fh:
        fh.write(b"not a database" * 500)
    with pytest.raises(StoreError) as info:
        prepare_cold_start(data_dir, 1)
    assert leases_path(data_dir) in str(info.value)
    with pytest.raises(StoreError) as info:
        open_store(data_dir, 0)
    assert leases_path(data_dir) in str(info.value)


# ------------------------------------------------------------ a whole node


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_node_restarted_with_fewer_shards_finds_every_room(tmp_path: Path) -> None:
    from relay.hashing import shard_for_room
    from tests.support import RelayNode, reference_clients, wait_for

    data_dir = str(tmp_path / "data")
    # One room per shard of the 3-shard layout; the one on shard 2 is served
    # by another shard, from another file, once the node runs 2 shards.
    rooms = [next(f"resize-{i}" for i in range(1000) if shard_for_room(f"resize-{i}".encode(), 3) == k)
             for k in range(3)]
    with RelayNode(shards=3, data_dir=data_dir) as node, reference_clients(node, rooms) as clients:
        for n, c in enumerate(clients):
            wait_for(lambda c=c: c.client_no, 10, what="number")
            c.set_global_variable("score", f"v{n}")
        wait_for(lambda: all(c.get_global_variable("score") == f"v{n}" for n, c in enumerate(clients)),
                 5, what="written")
    assert rows_of(data_dir, 2, rooms[2]) > 0
    with RelayNode(shards=2, data_dir=data_dir) as again:
        for n, room in enumerate(rooms):
            with reference_clients(again, [room]) as (client,):
                wait_for(lambda c=client, n=n: c.get_global_variable("score") == f"v{n}", 5,
                         what=f"state of {room} after the resize")
    assert rows_of(data_dir, 2, rooms[2]) == 0  # moved into the shard that serves it now
