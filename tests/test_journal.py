"""The shard's durable store (shard_worker/store/sqlite_store.py): SQLite in WAL mode."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shard_worker.store.sqlite_store import (
    SCHEMA_VERSION,
    RoomSnapshot,
    SqliteRoomStore,
    StoreError,
    open_store,
    shard_store_path,
)

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def reopen(store: SqliteRoomStore) -> SqliteRoomStore:
    store.close()
    return SqliteRoomStore(store.path)


# ----------------------------------------------------------------- round trip


def test_every_record_kind_survives_close_and_reopen(data_dir: str) -> None:
    store = open_store(data_dir, 3)
    assert store.path == shard_store_path(data_dir, 3)
    store.apply(
        [
            ("device", "room", "dev-a", 1, 2),
            ("device", "room", "dev-b", 2, 3),
            ("global", "room", "score", "10", 1, 1),
            ("global", "room", "mode", "race", 2, 2),
            ("client_var", "room", "dev-a", "hp", "100", 2, 3),
            ("client_var", "room", "dev-b", "hp", "90", 1, 4),
            ("client_var", "room", "dev-a", "team", "red", 1, 5),
            ("object", "room", 7, 1),
            ("object", "room", 3, 2),
        ]
    )
    store.apply(
        [
            ("global", "room", "score", "11", 2, 6),  # update keeps one row
            ("client_var_del", "room", "dev-b", "hp"),
            ("object", "room", 7, 0),  # released
        ]
    )
    store = reopen(store)
    try:
        snap = store.load_room("room")
        assert snap == RoomSnapshot(
            room_id="room",
            devices={"dev-a": 1, "dev-b": 2},
            next_client_no=3,
            write_seq=6,
            globals={"mode": ("race", 2, 2), "score": ("11", 2, 6)},
            client_vars={"dev-a": {"hp": ("100", 2, 3), "team": ("red", 1, 5)}},
            objects={3: 2, 7: 0},
        )
        # dict equality ignores order; the order is part of the contract
        assert list(snap.globals) == ["mode", "score"]
        assert list(snap.client_vars["dev-a"]) == ["hp", "team"]
        assert list(snap.objects) == [3, 7]
        assert store.room_ids() == ["room"]
        assert store.load_room("other") is None
    finally:
        store.close()


def test_clean_close_leaves_a_single_file(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    store.apply([("global", "r", "g", "v", 1, 1)])
    store.close()
    store.close()  # idempotent
    # no -wal / -shm left: the shard file and the node's lease table, each whole
    assert sorted(os.listdir(data_dir)) == ["leases.sqlite3", "shard-0.sqlite3"]
    with pytest.raises(StoreError, match="closed"):
        store.apply([("global", "r", "g", "v", 1, 2)])


def test_assignment_order_is_kept_not_number_order(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    # After the counter passed 65 535, freed numbers are handed out again: the
    # newest assignment has the lowest number but must stay last.
    store.apply(
        [
            ("device", "r", "d1", 1, 2),
            ("device", "r", "d2", 2, 3),
            ("device", "r", "d3", 3, 4),
        ]
    )
    store.apply([("device_expire", "r", "d1"), ("device", "r", "d4", 1, 65536)])
    store.apply([("device", "r", "d5", 65535, 65536)])
    store = reopen(store)
    try:
        snap = store.load_room("r")
        assert snap is not None
        assert list(snap.devices.items()) == [("d2", 2), ("d3", 3), ("d4", 1), ("d5", 65535)]
        assert snap.next_client_no == 65536
    finally:
        store.close()


def test_records_apply_in_order_within_one_turn(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    store.apply([("device", "r", "old", 1, 2), ("client_var", "r", "old", "n", "v", 1, 1)])
    # expire then reuse the same number in one transaction
    store.apply(
        [
            ("device_expire", "r", "old"),
            ("device", "r", "new", 1, 2),
            ("client_var", "r", "new", "n", "w", 1, 2),
            ("client_var_del", "r", "new", None),
            ("client_var", "r", "new", "m", "x", 1, 3),
        ]
    )
    snap = store.load_room("r")
    assert snap is not None
    assert snap.devices == {"new": 1}
    assert snap.client_vars == {"new": {"m": ("x", 1, 3)}}
    store.close()


def test_two_devices_never_share_a_number(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    store.apply([("device", "r", "a", 1, 2)])
    # the wrong order (reuse before expiry) would reload as a corrupt room
    with pytest.raises(StoreError, match="shard-0.sqlite3"):
        store.apply([("device", "r", "b", 1, 2), ("device_expire", "r", "a")])
    snap = store.load_room("r")
    assert snap is not None and snap.devices == {"a": 1}  # whole turn rolled back
    store.apply([("global", "r", "g", "v", 1, 1)])  # and the store still works
    store.close()


def test_unknown_kind_is_a_value_error_and_writes_nothing(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    with pytest.raises(ValueError, match="bogus"):
        store.apply([("global", "r", "g", "v", 1, 1), ("bogus", "r")])
    with pytest.raises(ValueError, match="fields"):
        store.apply([("object", "r", 1)])
    assert store.room_ids() == []
    store.apply([])  # an idle turn is fine
    store.close()


def test_device_expire_removes_number_and_only_that_devices_vars(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    store.apply(
        [
            ("device", "r", "a", 1, 2),
            ("device", "r", "b", 2, 3),
            ("device", "other", "a", 1, 2),
            ("global", "r", "g", "v", 1, 1),
            ("client_var", "r", "a", "x", "1", 1, 2),
            ("client_var", "r", "a", "y", "2", 1, 3),
            ("client_var", "r", "b", "x", "3", 2, 4),
            ("client_var", "other", "a", "x", "4", 1, 1),
            ("object", "r", 5, 1),
        ]
    )
    store.apply([("device_expire", "r", "a")])
    store = reopen(store)
    try:
        snap = store.load_room("r")
        assert snap is not None
        assert snap.devices == {"b": 2}
        assert snap.next_client_no == 3  # numbers are not handed out again
        assert snap.write_seq == 4  # the sequence never goes backwards
        assert snap.client_vars == {"b": {"x": ("3", 2, 4)}}
        assert snap.globals == {"g": ("v", 1, 1)}
        assert snap.objects == {5: 1}  # ownership is the room's business
        other = store.load_room("other")
        assert other is not None
        assert other.devices == {"a": 1}
        assert other.client_vars == {"a": {"x": ("4", 1, 1)}}
    finally:
        store.close()


def test_room_delete_isolates_rooms(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    for room in ("a", "b"):
        store.apply(
            [
                ("device", room, "d", 1, 2),
                ("global", room, "g", room, 1, 1),
                ("client_var", room, "d", "n", room, 1, 2),
                ("object", room, 9, 1),
            ]
        )
    store.apply([("room_delete", "a")])
    assert store.load_room("a") is None
    assert store.room_ids() == ["b"]
    # a re-created room numbers from 1 again
    store.apply([("device", "a", "x", 1, 2)])
    store = reopen(store)
    try:
        a = store.load_room("a")
        assert a == RoomSnapshot(room_id="a", devices={"x": 1}, next_client_no=2)
        b = store.load_room("b")
        assert b is not None
        assert b.devices == {"d": 1}
        assert b.globals == {"g": ("b", 1, 1)}
        assert b.client_vars == {"d": {"n": ("b", 1, 2)}}
        assert b.objects == {9: 1}
        assert store.room_ids() == ["a", "b"]
    finally:
        store.close()


def test_unicode_ids_and_values_round_trip(data_dir: str) -> None:
    rooms = ["", "Raum-ü", "\U0001f600\U00010348", "a\x00b", "A"]
    device = "\U0001f47e-device-日本"
    store = open_store(data_dir, 0)
    for i, room in enumerate(rooms):
        store.apply(
            [
                ("device", room, device, 1, 2),
                ("device", room, "", 2, 3),
                ("global", room, "", "", 1, 1),
                ("global", room, "\U0001f3c1", "\U0001f600" * 1024, 2, 2),
                ("client_var", room, device, "名前", "välue\x00\U0010ffff", 1, 3),
                ("client_var", room, "", "", "", 0, 4),
                ("object", room, 65535 + i, 2),
            ]
        )
    store = reopen(store)
    try:
        # exact, case-sensitive matching: "a" is not "A", "a\x00b" is not "a"
        assert store.load_room("a") is None
        assert store.room_ids() == sorted(rooms)
        for i, room in enumerate(rooms):
            snap = store.load_room(room)
            assert snap is not None
            assert snap.room_id == room
            assert list(snap.devices.items()) == [(device, 1), ("", 2)]
            assert snap.globals == {"": ("", 1, 1), "\U0001f3c1": ("\U0001f600" * 1024, 2, 2)}
            assert snap.client_vars == {
                device: {"名前": ("välue\x00\U0010ffff", 1, 3)},
                "": {"": ("", 0, 4)},
            }
            assert snap.objects == {65535 + i: 2}
    finally:
        store.close()


# -------------------------------------------------------------------- crashes

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from shard_worker.store.sqlite_store import open_store

    store = open_store(sys.argv[1], 0)
    store.apply([("device", "r", "d%d" % i, i, i + 1) for i in range(1, 201)])
    store.apply(
        [("global", "r", "g%d" % i, "v%d" % i, 1, i) for i in range(1, 501)]
        + [("client_var", "r", "d1", "c%d" % i, "w", 2, 500 + i) for i in range(1, 101)]
        + [("object", "r", i, i) for i in range(1, 51)]
    )
    print("applied", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_data_survives_sigkill_right_after_apply(data_dir: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, data_dir],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "applied"
    # no clean close happened: the commits live in the WAL only
    assert os.path.exists(shard_store_path(data_dir, 0) + "-wal")

    store = open_store(data_dir, 0)
    try:
        assert store.integrity_ok()
        snap = store.load_room("r")
        assert snap is not None
        assert list(snap.devices.items()) == [(f"d{i}", i) for i in range(1, 201)]
        assert snap.next_client_no == 201
        assert snap.write_seq == 600
        assert snap.globals == {f"g{i}": (f"v{i}", 1, i) for i in range(1, 501)}
        assert snap.client_vars == {"d1": {f"c{i}": ("w", 2, 500 + i) for i in range(1, 101)}}
        assert snap.objects == {i: i for i in range(1, 51)}
        store.apply([("global", "r", "after", "restart", 1, 601)])
    finally:
        store.close()
    with open_store(data_dir, 0) as again:
        assert again.integrity_ok()


# ------------------------------------------------------------- refusing to open


def test_garbage_file_is_refused_with_its_path(data_dir: str) -> None:
    path = shard_store_path(data_dir, 1)
    os.makedirs(data_dir)
    garbage = os.urandom(8192)
    with open(path, "wb") as f:
        f.write(garbage)
    with pytest.raises(StoreError) as info:
        open_store(data_dir, 1)
    assert path in str(info.value)
    assert info.value.path == path
    with open(path, "rb") as f:
        assert f.read() == garbage  # nothing was "repaired" or initialised


def test_damaged_pages_are_refused_with_its_path(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    for n in range(20):
        store.apply([("global", f"r{n}", f"g{i}", "x" * 200, 1, i) for i in range(100)])
    store.close()
    path = shard_store_path(data_dir, 0)
    size = os.path.getsize(path)
    assert size > 20 * 4096
    # keep the header (page 1) intact so it still looks like SQLite
    with open(path, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xa5" * (size - 4096 * 4))
    with pytest.raises(StoreError, match="corrupt|not a usable") as info:
        open_store(data_dir, 0)
    assert path in str(info.value)


def test_unknown_schema_version_is_refused(data_dir: str) -> None:
    open_store(data_dir, 0).close()
    path = shard_store_path(data_dir, 0)
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    db.close()
    with pytest.raises(StoreError, match="schema version") as info:
        open_store(data_dir, 0)
    assert path in str(info.value)


def test_foreign_sqlite_database_is_refused(data_dir: str) -> None:
    os.makedirs(data_dir)
    path = shard_store_path(data_dir, 0)
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE something_else (x)")
    db.close()
    with pytest.raises(StoreError, match="meta") as info:
        open_store(data_dir, 0)
    assert path in str(info.value)


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    # Tests run as root, so permissions do not stop anything: put the data
    # dir under a regular file instead.
    (tmp_path / "afile").write_text("not a directory")
    data_dir = str(tmp_path / "afile" / "sub")
    with pytest.raises(StoreError) as info:
        open_store(data_dir, 2)
    assert shard_store_path(data_dir, 2) in str(info.value)


def test_path_that_is_a_directory(data_dir: str) -> None:
    os.makedirs(shard_store_path(data_dir, 0))
    with pytest.raises(StoreError) as info:
        open_store(data_dir, 0)
    assert shard_store_path(data_dir, 0) in str(info.value)


def test_store_path_layout() -> None:
    assert shard_store_path("/var/lib/relay", 4) == os.path.join(
        "/var/lib/relay", "shard-4.sqlite3"
    )


def test_new_store_is_wal_with_schema_version(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    assert store.integrity_ok()
    assert store.room_ids() == []
    store.close()
    db = sqlite3.connect(shard_store_path(data_dir, 0))
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    finally:
        db.close()


def test_a_version_1_store_is_upgraded_in_place_and_keeps_its_rooms(data_dir: str) -> None:
    store = open_store(data_dir, 0)
    store.apply([("device", "old", "d", 1, 2)])
    path = store.path
    store.close()
    with sqlite3.connect(path) as db:  # what the previous release wrote
        db.execute("DROP TABLE object_poses")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    again = open_store(data_dir, 0)
    try:
        again.apply([("object_pose", "old", 5, bytes(13), 3)])
        snap = again.load_room("old")
        assert snap is not None and snap.devices == {"d": 1} and snap.object_poses == {5: (bytes(13), 3)}
    finally:
        again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_checkpoints_run_off_the_commit_path(data_dir: str) -> None:
    """Commits never checkpoint (wal_autocheckpoint off); the store's own thread
    folds the WAL back once it has grown, so the WAL does not grow forever."""
    import time

    store = open_store(data_dir, 0)
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        wal = store.path + "-wal"
        value = "x" * 2000
        seq = 0
        while os.path.getsize(wal) < 2 * (1 << 20):
            seq += 1
            store.apply([("global", f"room-{seq % 50}", f"g{seq % 400}", value, 1, seq)])
        deadline = time.monotonic() + 10
        while store._checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._checkpointer.checkpoints >= 1
        # After a complete checkpoint the next commit restarts the WAL from its start.
        store.apply([("global", "room-0", "after", "v", 1, seq + 1)])
        frames = store._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert frames < 100, frames
    finally:
        store.close()
