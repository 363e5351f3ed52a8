"""The embedded room store: one SQLite database (WAL) per shard.

Only what must survive a restart is kept (DESIGN.md, "State that must
survive"): device-id -> client-number mappings with each room's counter,
global and client variables with their writer and write sequence, and object
ownership; and current members with their control identity, so that a shard
restarted after a crash still reaches its clients (a cold start clears them).
Poses and timers are ephemeral and never reach this file.

The worker is single-threaded and the only writer of its rooms. Once per loop turn it
hands the change records its rooms produced to :meth:`SqliteRoomStore.apply`
*before* sending any message that announces them, so anything a client has
seen is on disk even if the process is SIGKILLed right afterwards. A restarted
worker reloads a room lazily with :meth:`SqliteRoomStore.load_room`.

Change records are listed in ``shard_worker/store/base.py``.

Leases and moving rooms: a room can move between shard processes of the
node (``relayctl scale`` changes the slot it hashes to; SIGHUP replaces a
slot's process with a new incarnation). A shard takes the room's lease in the
node-wide table ``data_dir/leases.sqlite3`` (``sqlite_leases.py``) before it
loads the room, so one process at a time serves and writes it. The lease row
also records the room's *home*, the shard file that holds its rows: a shard
that acquires a room homed in another file moves the rows into its own file
first (:meth:`SqliteRoomStore.acquire`), so each shard still reads and writes
only its own file. A file opened on its own (``SqliteRoomStore(path)``: tools,
tests) has no lease table and takes every lease at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from shard_worker.store.base import ChangeRecord, RoomSnapshot, StoreError, StoreHealth
from shard_worker.store.sqlite_checkpointer import Checkpointer
from shard_worker.store.sqlite_common import begin_write, rollback
from shard_worker.store.sqlite_leases import SqliteLeases

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "RoomSnapshot",
    "SqliteRoomStore",
    "StoreError",
    "open_store",
    "prepare_cold_start",
    "shard_store_path",
]

SCHEMA_VERSION = 2
# Version 1 had no object_poses table; it is upgraded in place on open.
# The last pose of each object (13 bytes, verbatim), written at most once
# per broadcast tick: what a late joiner (or a new owner shard) sends.
_OBJECT_POSES_TABLE = """
CREATE TABLE object_poses (
    room_id   TEXT NOT NULL,
    object_id INTEGER NOT NULL,
    pose      BLOB NOT NULL,
    pose_seq  INTEGER NOT NULL,
    PRIMARY KEY (room_id, object_id)
) WITHOUT ROWID;
"""
_UPGRADES = {"1": _OBJECT_POSES_TABLE}

# The lock of a file is contended only briefly: by an operator's sqlite3
# shell, a predecessor that has not quite exited yet, the old incarnation of
# the slot during a reload, or another shard moving a room out of the file
# (one short transaction). The lease table takes the same timeout.
# Waiting is done inside the worker's loop, which sends no heartbeat
# meanwhile: the wait must end (with a StoreError, so the shard exits and is
# restarted with a clear reason) well before the supervisor's heartbeat
# timeout (default 3 s) declares the shard hung and kills it. Workers pass
# min(this, heartbeat_timeout / 3).
_BUSY_TIMEOUT_S = 1.0

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per room that has any durable state. Its presence is what makes
-- load_room return a snapshot: a room whose devices all expired still has a
-- counter that must not restart at 1.
CREATE TABLE rooms (
    room_id        TEXT PRIMARY KEY,
    next_client_no INTEGER NOT NULL DEFAULT 1,
    write_seq      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- assign_seq records assignment order, which is what mapping broadcasts and
-- number reuse after 65 535 follow; client numbers alone do not give it once
-- numbers are reused.
CREATE TABLE devices (
    room_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    client_no  INTEGER NOT NULL,
    assign_seq INTEGER NOT NULL,
    PRIMARY KEY (room_id, device_id)
) WITHOUT ROWID;
-- UNIQUE: two devices sharing a number would reload as a corrupt room, so a
-- record stream that implies it (e.g. device before the device_expire that
-- frees the number) is refused loudly instead of stored.
CREATE UNIQUE INDEX devices_by_number ON devices (room_id, client_no);
CREATE INDEX devices_by_assignment ON devices (room_id, assign_seq);

CREATE TABLE globals (
    room_id TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    writer  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room_id, name)
) WITHOUT ROWID;

-- Keyed by device id, not client number: variables outlive a number's
-- assignment (REST writes before a device has one) and die with the mapping.
CREATE TABLE client_vars (
    room_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    writer    INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (room_id, device_id, name)
) WITHOUT ROWID;

CREATE TABLE objects (
    room_id   TEXT NOT NULL,
    object_id INTEGER NOT NULL,
    owner     INTEGER NOT NULL,
    PRIMARY KEY (room_id, object_id)
) WITHOUT ROWID;

-- Current members with their control identity (an ingress routing id), so a
-- shard restarted after a crash can still address its clients. Identities
-- die with the ingress's connections, so a cold start clears this table.
CREATE TABLE members (
    room_id          TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    control_identity BLOB,
    stealth          INTEGER NOT NULL,
    member_seq       INTEGER NOT NULL,
    PRIMARY KEY (room_id, device_id)
) WITHOUT ROWID;
"""

# --- statements used by apply ------------------------------------------------

# A re-sent assignment of the same number keeps its place; a new number is a
# new assignment and goes to the end of the order.
_UPSERT_DEVICE = """
INSERT INTO devices (room_id, device_id, client_no, assign_seq)
VALUES (?1, ?2, ?3,
        (SELECT COALESCE(MAX(assign_seq), 0) + 1 FROM devices WHERE room_id = ?1))
ON CONFLICT (room_id, device_id) DO UPDATE SET
    assign_seq = CASE WHEN client_no = excluded.client_no
                      THEN assign_seq ELSE excluded.assign_seq END,
    client_no = excluded.client_no
"""
_SET_COUNTER = """
INSERT INTO rooms (room_id, next_client_no) VALUES (?, ?)
ON CONFLICT (room_id) DO UPDATE SET next_client_no = excluded.next_client_no
"""
# MAX so that the reloaded sequence never goes backwards, whatever order the
# records of one turn arrive in.
_BUMP_WRITE_SEQ = """
INSERT INTO rooms (room_id, write_seq) VALUES (?, ?)
ON CONFLICT (room_id) DO UPDATE SET write_seq = MAX(write_seq, excluded.write_seq)
"""
_TOUCH_ROOM = "INSERT OR IGNORE INTO rooms (room_id) VALUES (?)"
_UPSERT_GLOBAL = """
INSERT INTO globals (room_id, name, value, writer, seq) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (room_id, name) DO UPDATE SET
    value = excluded.value, writer = excluded.writer, seq = excluded.seq
"""
_UPSERT_CLIENT_VAR = """
INSERT INTO client_vars (room_id, device_id, name, value, writer, seq)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (room_id, device_id, name) DO UPDATE SET
    value = excluded.value, writer = excluded.writer, seq = excluded.seq
"""
_UPSERT_OBJECT = """
INSERT INTO objects (room_id, object_id, owner) VALUES (?, ?, ?)
ON CONFLICT (room_id, object_id) DO UPDATE SET owner = excluded.owner
"""
_DELETE_DEVICE = "DELETE FROM devices WHERE room_id = ? AND device_id = ?"
_DELETE_DEVICE_VARS = "DELETE FROM client_vars WHERE room_id = ? AND device_id = ?"
_DELETE_ONE_VAR = "DELETE FROM client_vars WHERE room_id = ? AND device_id = ? AND name = ?"
_UPSERT_MEMBER = """
INSERT INTO members (room_id, device_id, control_identity, stealth, member_seq)
VALUES (?1, ?2, ?3, ?4,
        (SELECT COALESCE(MAX(member_seq), 0) + 1 FROM members WHERE room_id = ?1))
ON CONFLICT (room_id, device_id) DO UPDATE SET
    control_identity = excluded.control_identity, stealth = excluded.stealth
"""
_UPSERT_OBJECT_POSE = """
INSERT INTO object_poses (room_id, object_id, pose, pose_seq) VALUES (?, ?, ?, ?)
ON CONFLICT (room_id, object_id) DO UPDATE SET
    pose = excluded.pose, pose_seq = excluded.pose_seq
"""
_DELETE_MEMBER = "DELETE FROM members WHERE room_id = ? AND device_id = ?"
_ROOM_TABLES = ("rooms", "devices", "globals", "client_vars", "objects", "object_poses", "members")


Record = ChangeRecord


def _check_arity(kind: str, records: Sequence[Record], arity: int) -> None:
    for record in records:
        if len(record) != arity:
            raise ValueError(f"journal record {kind!r} needs {arity} fields: {record!r}")


# Each handler gets a run of consecutive records of one kind. Splitting the run
# into one executemany per statement is safe because, within a run, the
# statements either touch different tables (rooms vs. the row table), commute
# (deletes; MAX on write_seq), or are executed by executemany in record order
# (upserts, the counter). Runs themselves are applied in order, so
# device_expire followed by device reusing the number stays correct.


def _apply_device(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("device", records, 5)
    db.executemany(_UPSERT_DEVICE, [(r[1], r[2], r[3]) for r in records])
    db.executemany(_SET_COUNTER, [(r[1], r[4]) for r in records])


def _apply_device_expire(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("device_expire", records, 3)
    rows = [(r[1], r[2]) for r in records]
    db.executemany(_DELETE_DEVICE, rows)
    db.executemany(_DELETE_DEVICE_VARS, rows)


def _apply_global(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("global", records, 6)
    db.executemany(_UPSERT_GLOBAL, [r[1:] for r in records])
    db.executemany(_BUMP_WRITE_SEQ, _max_seq_per_room(records))


def _apply_client_var(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("client_var", records, 7)
    db.executemany(_UPSERT_CLIENT_VAR, [r[1:] for r in records])
    db.executemany(_BUMP_WRITE_SEQ, _max_seq_per_room(records))


def _apply_client_var_del(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("client_var_del", records, 4)
    db.executemany(_DELETE_DEVICE_VARS, [(r[1], r[2]) for r in records if r[3] is None])
    db.executemany(_DELETE_ONE_VAR, [r[1:] for r in records if r[3] is not None])


def _apply_object(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("object", records, 4)
    db.executemany(_UPSERT_OBJECT, [r[1:] for r in records])
    db.executemany(_TOUCH_ROOM, [(room,) for room in {r[1] for r in records}])


def _apply_object_pose(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("object_pose", records, 5)
    db.executemany(_UPSERT_OBJECT_POSE, [r[1:] for r in records])
    db.executemany(_TOUCH_ROOM, [(room,) for room in {r[1] for r in records}])


def _apply_member(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("member", records, 5)
    db.executemany(_UPSERT_MEMBER, [(r[1], r[2], r[3], int(r[4])) for r in records])


def _apply_member_remove(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("member_remove", records, 3)
    db.executemany(_DELETE_MEMBER, [(r[1], r[2]) for r in records])


def _apply_room_delete(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    _check_arity("room_delete", records, 2)
    rooms = [(r[1],) for r in records]
    for table in _ROOM_TABLES:
        db.executemany(f"DELETE FROM {table} WHERE room_id = ?", rooms)


def _kind(record: Record) -> object:
    return record[0] if record else None


def _max_seq_per_room(records: Sequence[Record]) -> list[tuple[str, int]]:
    # One rooms-row update per room instead of per record: a turn's NV flush
    # typically writes many variables of few rooms.
    best: dict[str, int] = {}
    for r in records:
        room, seq = r[1], r[-1]
        if seq > best.get(room, -1):
            best[room] = seq
    return list(best.items())


_HANDLERS: dict[str, Callable[[sqlite3.Connection, Sequence[Record]], None]] = {
    "device": _apply_device,
    "device_expire": _apply_device_expire,
    "global": _apply_global,
    "client_var": _apply_client_var,
    "client_var_del": _apply_client_var_del,
    "object": _apply_object,
    "object_pose": _apply_object_pose,
    "room_delete": _apply_room_delete,
    "member": _apply_member,
    "member_remove": _apply_member_remove,
}


class SqliteRoomStore:
    """One shard's rooms in one SQLite file (WAL). Not thread-safe; one owner."""

    kind = "sqlite"

    def __init__(
        self,
        path: str,
        busy_timeout: float = _BUSY_TIMEOUT_S,
        *,
        leases: SqliteLeases | None = None,
        shard_index: int | None = None,
    ) -> None:
        """``leases`` and ``shard_index`` (this file is ``shard-{index}``) come
        together, from :func:`open_store`; without them the file stands alone."""
        self.path = path
        self.busy_timeout = busy_timeout
        self.leases = leases
        self.index = shard_index
        self.data_dir = os.path.dirname(os.path.abspath(path))
        # Other shards' files, opened on first need to look a room up.
        self._peers: dict[int, sqlite3.Connection] = {}
        self._columns: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly in
            # apply, so one loop turn is exactly one commit.
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            self._db = db
            # Before anything writes: a corrupt or foreign file must fail
            # here, never be mistaken for an empty store. (A new, empty file
            # passes trivially.)
            self._check_integrity(db)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(path, f"cannot switch to WAL journal mode (got {mode!r})")
            # NORMAL in WAL mode writes every commit into the WAL file before
            # COMMIT returns but fsyncs only at checkpoints. The failure we
            # guard against is the worker process dying (crash, SIGKILL): the
            # written pages sit in the OS cache and survive it. Power loss may
            # drop the last few commits but never corrupts the file, and FULL
            # would cost an fsync per loop turn.
            db.execute("PRAGMA synchronous=NORMAL")
            self._init_schema(db)
            # Checkpoints run on their own thread, never inside a commit on
            # the control path (sqlite_checkpointer.py).
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = Checkpointer(path, busy_timeout)
        except StoreError:
            self._abandon()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._abandon()
            raise StoreError(path, f"cannot open: {exc}") from exc

    # --------------------------------------------------------------- opening

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed", ...
            raise StoreError(self.path, f"not a usable SQLite database: {exc}") from exc
        problems = [str(row[0]) for row in rows]
        if problems != ["ok"]:
            # One damaged page can produce hundreds of lines; the first few
            # are enough to tell the operator what kind of damage it is.
            lines = "\n".join(problems).splitlines()
            shown = "; ".join(lines[:4])
            if len(lines) > 4:
                shown += f"; ... ({len(lines) - 4} more)"
            raise StoreError(self.path, f"corrupt database (quick_check: {shown})")

    def _init_schema(self, db: sqlite3.Connection) -> None:
        tables = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            # One transaction: a crash mid-creation leaves an empty file that
            # is simply initialised again, never a half-made schema.
            try:
                db.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + _OBJECT_POSES_TABLE
                    + f"INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');"
                    + "COMMIT;"
                )
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return
        if "meta" not in tables:
            raise StoreError(self.path, "not a relay shard store (no meta table)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise StoreError(self.path, "no schema_version in meta table")
        upgrade = _UPGRADES.get(row[0])
        if upgrade is not None:
            db.executescript(
                "BEGIN IMMEDIATE;"
                + upgrade
                + f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';"
                + "COMMIT;"
            )
            return
        if row[0] != str(SCHEMA_VERSION):
            raise StoreError(
                self.path,
                f"schema version {row[0]!r} is not supported (this code knows {SCHEMA_VERSION})",
            )
        # A write at startup makes a read-only file or directory fail here,
        # not at the first client message.
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        db.execute("COMMIT")

    def _abandon(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._close_peers()
        if self.leases is not None:
            self.leases.close()
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(self.path, "store is closed")
        return self._db

    # ---------------------------------------------------------------- writes

    def apply(self, changes: Sequence[ChangeRecord]) -> list[str]:
        """Write one loop turn's change records in one transaction, in order.

        Returns only once the transaction is committed (and never refuses a
        room: a shard releases a lease only after journalling the room's last
        records, and nothing takes the lease of a live process). Unknown record kinds
        or wrong arity raise ValueError and nothing of the turn is written.
        """
        if not changes:
            return []
        db = self._conn()
        begin_write(db, self.path)
        try:
            for kind, run in itertools.groupby(changes, key=_kind):
                handler = _HANDLERS.get(kind)
                if handler is None:
                    raise ValueError(f"unknown journal record kind {kind!r}")
                handler(db, list(run))
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a failed COMMIT may already have rolled back
            if isinstance(exc, sqlite3.Error):
                raise StoreError(self.path, f"cannot write changes: {exc}") from exc
            raise
        return []

    # ---------------------------------------------------------------- leases

    def acquire(self, room_id: str) -> int:
        """Take the room's lease and bring its rows into this file; return the token.

        Raises :class:`LeaseBusy` while another live shard process holds the
        room (it is handing it over: the caller holds the room's messages and
        retries).
        """
        leases = self.leases
        if leases is None or self.index is None:
            return 1  # a file on its own: nobody to share its rooms with
        token, home = leases.acquire(room_id)
        if home == self.index:
            return token
        try:
            self._bring_home(room_id, home)
        except BaseException:
            # Nothing of the room is served from here: let the next try (ours
            # or another shard's) start over.
            try:
                leases.release([room_id])
            except StoreError:
                pass
            raise
        return token

    def _bring_home(self, room_id: str, home: int | None) -> None:
        """Make this file hold the room's live rows and record it as their home."""
        assert self.leases is not None and self.index is not None
        stale: list[int] = []
        if home is not None and not os.path.exists(shard_store_path(self.data_dir, home)):
            home = None  # its file was removed by hand: look for other copies
        if home is None:
            # Stored before the lease table knew it (or a node restarted with
            # another shard count): search every shard file. Several copies
            # come from layouts that placed the room differently; the one
            # written last (highest write_seq) is the live one.
            copies = self._find_copies(room_id)
            if copies:
                home = max(copies, key=lambda k: (copies[k], -k))
                stale = [k for k in copies if k not in (home, self.index)]
        if home is None or home == self.index:
            self.leases.set_home(room_id, self.index)
        else:
            self._move_in(room_id, home)
        for k in stale:
            # Harmless once the home is recorded, only wasted space.
            self._delete_from(room_id, k)

    def _find_copies(self, room_id: str) -> dict[int, int]:
        """Shard file index -> rooms.write_seq of every file that has the room."""
        found: dict[int, int] = {}
        for k in shard_indexes(self.data_dir):
            db = self._conn() if k == self.index else self._peer(k)
            try:
                row = db.execute("SELECT write_seq FROM rooms WHERE room_id = ?", (room_id,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(
                    shard_store_path(self.data_dir, k), f"cannot look up room {room_id!r}: {exc}"
                ) from exc
            if row:
                found[k] = row[0][0]
        return found

    def _peer(self, k: int) -> sqlite3.Connection:
        db = self._peers.get(k)
        if db is None:
            path = shard_store_path(self.data_dir, k)
            try:
                # mode=rw: a lookup must never create a file.
                db = sqlite3.connect(
                    Path(path).as_uri() + "?mode=rw", uri=True,
                    timeout=self.busy_timeout, isolation_level=None,
                )
            except sqlite3.Error as exc:
                raise StoreError(path, f"cannot open: {exc}") from exc
            self._peers[k] = db
        return db

    def _close_peers(self) -> None:
        for db in self._peers.values():
            try:
                db.close()
            except sqlite3.Error:
                pass
        self._peers.clear()

    def _column_list(self, table: str) -> str:
        cols = self._columns.get(table)
        if cols is None:
            names = [row[1] for row in self._conn().execute(f"PRAGMA main.table_info({table})")]
            cols = self._columns[table] = ", ".join(names)
        return cols

    def _move_in(self, room_id: str, source: int) -> None:
        """Move the room's rows from shard file ``source`` into this one.

        Three steps, each committed before the next. The lease's ``home``
        names the live copy, and is switched only once the copy exists:

        1. one transaction on this file: drop whatever this file has of the
           room (a stale copy from an earlier, interrupted move) and copy the
           source's rows in;
        2. ``home`` := this file;
        3. one transaction on the source file: delete the room's rows.

        A crash after 1 leaves two equal copies with ``home`` on the source:
        the next acquire moves it again. A crash after 2 leaves a stale copy
        in the source, which the next move out of this file overwrites
        (step 1 of that move). Either way a copy is lost only after another
        copy is live, never before.

        The source file may be in use by its own shard, which writes its
        other rooms meanwhile, never this one (it released the lease after
        journalling the room's last records): SQLite's locks and the busy
        timeout order the two writers.
        """
        assert self.leases is not None and self.index is not None
        db = self._conn()
        source_path = shard_store_path(self.data_dir, source)
        key = (room_id,)
        try:
            db.execute("ATTACH DATABASE ? AS src", (source_path,))
        except sqlite3.Error as exc:
            raise StoreError(source_path, f"cannot attach to move room {room_id!r}: {exc}") from exc
        try:
            # Step 1. A deferred BEGIN with a write to main first: the write
            # lock is taken on this file only (BEGIN IMMEDIATE would also lock
            # the source, stalling its shard), the source is only read.
            try:
                db.execute("BEGIN")
                for table in _ROOM_TABLES:
                    db.execute(f"DELETE FROM main.{table} WHERE room_id = ?", key)
                for table in _ROOM_TABLES:
                    cols = self._column_list(table)
                    db.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table} WHERE room_id = ?",
                        key,
                    )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback(db)
                raise StoreError(self.path, f"cannot move room {room_id!r} in from {source_path}: {exc}") from exc
            # Step 2.
            self.leases.set_home(room_id, self.index)
            # Step 3. Failing here only leaves a stale copy behind.
            try:
                db.execute("BEGIN")
                for table in _ROOM_TABLES:
                    db.execute(f"DELETE FROM src.{table} WHERE room_id = ?", key)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback(db)
                log.warning("room %r moved in from %s, but its old copy there stays: %s",
                            room_id, source_path, exc)
        finally:
            try:
                db.execute("DETACH DATABASE src")
            except sqlite3.Error as exc:
                log.warning("cannot detach %s: %s", source_path, exc)

    def _delete_from(self, room_id: str, k: int) -> None:
        """Drop a stale copy of a room from shard file ``k`` (best effort)."""
        db = self._peer(k)
        try:
            db.execute("BEGIN IMMEDIATE")
            for table in _ROOM_TABLES:
                db.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(db)
            log.warning("stale copy of room %r stays in %s: %s",
                        room_id, shard_store_path(self.data_dir, k), exc)

    def release(self, room_ids: Iterable[str]) -> None:
        """Hand the rooms over: their rows stay here, recorded as their home."""
        if self.leases is not None:
            self.leases.release(room_ids)

    def renew(self, room_ids: Iterable[str]) -> list[str]:
        """The rooms whose lease this process no longer holds (they never expire)."""
        if self.leases is None:
            return []
        return self.leases.renew(room_ids)

    def maintain(self, now: float) -> None:
        """A local file needs no reconnecting; errors surface in apply."""

    def health(self) -> StoreHealth:
        return StoreHealth(kind=self.kind, detail=self.path)

    # ----------------------------------------------------------------- reads

    def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The stored state of a room, or None if nothing is stored for it."""
        db = self._conn()
        try:
            row = db.execute(
                "SELECT next_client_no, write_seq FROM rooms WHERE room_id = ?", (room_id,)
            ).fetchone()
            if row is None:
                return None
            snap = RoomSnapshot(room_id=room_id, next_client_no=row[0], write_seq=row[1])
            key = (room_id,)
            snap.devices = dict(
                db.execute(
                    "SELECT device_id, client_no FROM devices WHERE room_id = ?"
                    " ORDER BY assign_seq",
                    key,
                )
            )
            for name, value, writer, seq in db.execute(
                "SELECT name, value, writer, seq FROM globals WHERE room_id = ? ORDER BY seq",
                key,
            ):
                snap.globals[name] = (value, writer, seq)
            for device_id, name, value, writer, seq in db.execute(
                "SELECT device_id, name, value, writer, seq FROM client_vars"
                " WHERE room_id = ? ORDER BY seq",
                key,
            ):
                snap.client_vars.setdefault(device_id, {})[name] = (value, writer, seq)
            snap.objects = dict(
                db.execute(
                    "SELECT object_id, owner FROM objects WHERE room_id = ? ORDER BY object_id",
                    key,
                )
            )
            for object_id, pose, pose_seq in db.execute(
                "SELECT object_id, pose, pose_seq FROM object_poses WHERE room_id = ?"
                " ORDER BY object_id",
                key,
            ):
                snap.object_poses[object_id] = (bytes(pose), pose_seq)
            for device_id, identity, stealth in db.execute(
                "SELECT device_id, control_identity, stealth FROM members WHERE room_id = ?"
                " ORDER BY member_seq",
                key,
            ):
                snap.members[device_id] = (identity, bool(stealth))
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot read room {room_id!r}: {exc}") from exc
        return snap

    def clear_members(self) -> None:
        """Forget all members: on a cold start no client connection survives."""
        try:
            db = self._conn()
            with db:
                db.execute("DELETE FROM members")
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot clear members: {exc}") from exc

    def room_ids(self) -> list[str]:
        """Ids of all rooms with stored state, sorted."""
        try:
            rows = self._conn().execute("SELECT room_id FROM rooms ORDER BY room_id")
            return [row[0] for row in rows]
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot list rooms: {exc}") from exc

    def integrity_ok(self) -> bool:
        """Full PRAGMA integrity_check; slow on big files, meant for tools and tests."""
        try:
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError:
            return False
        return [str(row[0]) for row in rows] == ["ok"]

    # --------------------------------------------------------------- closing

    def close(self) -> None:
        """Hand every lease over, commit, fold the WAL into the main file, close.

        Safe to call twice.
        """
        db = self._db
        if db is None:
            return
        self._db = None
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._close_peers()
        if self.leases is not None:
            # A graceful stop is a hand-over: whoever serves these rooms next
            # (a new incarnation, another slot) takes them at once.
            try:
                self.leases.release_all()
            except StoreError as exc:
                log.warning("leases not released on close (taken over once this process is gone): %s", exc)
            finally:
                self.leases.close()
        try:
            db.commit()
            # TRUNCATE leaves a single self-contained file behind, which is
            # what an operator copies or inspects after a clean shutdown.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot checkpoint on close: {exc}") from exc
        finally:
            db.close()

    def __enter__(self) -> SqliteRoomStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def shard_store_path(data_dir: str, shard_index: int) -> str:
    """The database file of shard ``shard_index`` under ``data_dir``."""
    return os.path.join(data_dir, f"shard-{shard_index}.sqlite3")


_SHARD_FILE = re.compile(r"shard-(\d+)\.sqlite3")


def shard_indexes(data_dir: str) -> list[int]:
    """Indexes of the shard files present in ``data_dir``, ascending."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(data_dir, f"cannot list the data dir: {exc}") from exc
    found = (_SHARD_FILE.fullmatch(name) for name in names)
    return sorted(int(m.group(1)) for m in found if m)


def open_store(
    data_dir: str, shard_index: int, busy_timeout: float = _BUSY_TIMEOUT_S, incarnation: int = 0
) -> SqliteRoomStore:
    """Open (or create) a shard's store with the node's lease table.

    ``incarnation`` tells processes of one slot apart (a reload starts a new
    one while the old one still hands its rooms over). Every failure is a
    StoreError naming the file.
    """
    path = shard_store_path(data_dir, shard_index)
    try:
        store = SqliteRoomStore(path, busy_timeout)
    except StoreError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(path, f"cannot open: {exc}") from exc
    try:
        store.leases = SqliteLeases(data_dir, f"{shard_index}.{incarnation}", busy_timeout)
    except BaseException:
        store.close()
        raise
    store.index = shard_index
    return store


def prepare_cold_start(data_dir: str, shards: int, busy_timeout: float = _BUSY_TIMEOUT_S) -> None:
    """Ready ``data_dir`` for a node that starts with no shard process running.

    Checks (and upgrades) every shard file: those of ``range(shards)`` and any
    other left by an earlier, larger shard count, whose rooms the shards find
    and move in when they are used. No client connection and no process of an
    earlier run survives: members and lease holders are cleared, homes stay.
    Raises StoreError naming the first unusable file.
    """
    for k in sorted(set(range(shards)) | set(shard_indexes(data_dir))):
        store = SqliteRoomStore(shard_store_path(data_dir, k), busy_timeout)
        try:
            store.clear_members()
        finally:
            store.close()
    leases = SqliteLeases(data_dir, "cold-start", busy_timeout)
    try:
        leases.clear_holders()
    finally:
        leases.close()
