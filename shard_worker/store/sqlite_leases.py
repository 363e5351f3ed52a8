"""Room leases of one node on the embedded store: ``data_dir/leases.sqlite3``.

On SQLite every shard keeps its rooms in its own file, but a room can move
between shard processes of the node: ``relayctl scale`` changes which slot a
room hashes to, and SIGHUP replaces a slot's process with a new incarnation
while the old one still serves. As in the shared store (``redis_scripts.py``),
a shard takes a room's lease before it loads the room, so at most one process
serves, and writes, a room at a time. One row per room:

* ``holder``: ``"k.i"`` (slot k, incarnation i), NULL once released;
* ``pid``, ``pid_start``: the holding process and its start time (field 22 of
  ``/proc/<pid>/stat``), so that a pid reused by an unrelated process is not
  mistaken for a live holder. There is no TTL: a lease of a dead process is
  taken over at once, one of a live process never (it is handed over by
  :meth:`SqliteLeases.release`);
* ``token``: fencing counter, +1 on every takeover, never reset;
* ``home``: the index of the shard file that holds the room's rows (NULL =
  unknown: a room stored before leases existed, searched for once).

Every lease operation is one short transaction. The busy timeout follows the
shard store's (``sqlite_store._BUSY_TIMEOUT_S``): a lock wait happens inside a
worker's loop, which sends no heartbeat meanwhile.

Each instance is used by one single-threaded process.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable

from shard_worker.store.base import LeaseBusy, StoreError
from shard_worker.store.sqlite_common import begin_write, rollback

__all__ = ["LEASES_FILE", "SqliteLeases", "leases_path", "process_alive", "process_start"]

LEASES_FILE = "leases.sqlite3"
# A live holder is handing the room over within a loop turn or two (journal,
# then release): retry soon rather than at the held-message interval.
RETRY_AFTER_S = 0.02
_DEFAULT_BUSY_TIMEOUT_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    room_id   TEXT PRIMARY KEY,
    holder    TEXT,
    pid       INTEGER,
    pid_start INTEGER,
    token     INTEGER NOT NULL DEFAULT 0,
    home      INTEGER
) WITHOUT ROWID;
-- close() releases what its process holds without reading every room's row.
CREATE INDEX IF NOT EXISTS leases_by_holder ON leases (holder, pid) WHERE holder IS NOT NULL;
"""

# /proc/<pid>/stat exists on Linux; elsewhere liveness falls back to the pid.
_PROC = os.path.isfile("/proc/self/stat")


def leases_path(data_dir: str) -> str:
    return os.path.join(data_dir, LEASES_FILE)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields
    # we want are counted from the last ')'. After it come field 3 (state)
    # onwards, so field 22 (starttime) is the 20th.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return rest[0].decode("ascii"), int(rest[19])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def process_start(pid: int) -> int | None:
    """Start time of a process (Linux), None where it cannot be known."""
    stat = _stat(pid) if _PROC else None
    return stat[1] if stat is not None else None


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid``, started at ``start`` (None: unknown), still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by somebody else
    if not _PROC:
        return True
    stat = _stat(pid)
    if stat is None:
        return False  # exited between the two looks
    state, started = stat
    # A zombie has exited (and written its last journal) but is not reaped
    # yet: kill(pid, 0) still succeeds on it.
    if state in ("Z", "X", "x"):
        return False
    return start is None or started == start


class SqliteLeases:
    """The node's lease table, as one shard process (``holder``) sees it."""

    def __init__(self, data_dir: str, holder: str, busy_timeout: float = _DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = leases_path(data_dir)
        self.holder = holder
        self.pid = os.getpid()
        self.pid_start = process_start(self.pid)
        self._db: sqlite3.Connection | None = None
        try:
            os.makedirs(data_dir, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
            self._db = db
            self._open(db)
        except StoreError:
            self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise StoreError(self.path, f"cannot open: {exc}") from exc

    def _open(self, db: sqlite3.Connection) -> None:
        try:
            problems = [str(row[0]) for row in db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StoreError(self.path, f"not a usable SQLite database: {exc}") from exc
        if problems != ["ok"]:
            raise StoreError(self.path, f"corrupt database (quick_check: {'; '.join(problems[:4])})")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "leases" not in tables:
            raise StoreError(self.path, "not a relay lease table (no leases table)")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(self.path, f"cannot switch to WAL journal mode (got {mode!r})")
        # As the shard files: a process crash loses nothing committed.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(self.path, "lease table is closed")
        return self._db

    def _mine(self) -> tuple[str, int, int | None]:
        return self.holder, self.pid, self.pid_start

    def _write(self, what: str, sql: str, params: tuple) -> None:
        db = self._conn()
        try:
            db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot {what}: {exc}") from exc

    # ------------------------------------------------------------ operations

    def acquire(self, room_id: str) -> tuple[int, int | None]:
        """Take the room's lease (or confirm we hold it): (fencing token, home).

        Raises :class:`LeaseBusy` while another live process holds it.
        """
        db = self._conn()
        begin_write(db, self.path)
        try:
            row = db.execute(
                "SELECT holder, pid, pid_start, token, home FROM leases WHERE room_id = ?", (room_id,)
            ).fetchone()
            if row is None:
                token, home = 1, None
                db.execute(
                    "INSERT INTO leases (room_id, holder, pid, pid_start, token) VALUES (?, ?, ?, ?, ?)",
                    (room_id, *self._mine(), token),
                )
            else:
                holder, pid, start, token, home = row
                if (holder, pid, start) != self._mine():
                    if holder is not None and pid is not None and process_alive(pid, start):
                        db.execute("ROLLBACK")
                        raise LeaseBusy(room_id, f"shard {holder} (pid {pid})", RETRY_AFTER_S)
                    token += 1
                    db.execute(
                        "UPDATE leases SET holder = ?, pid = ?, pid_start = ?, token = ? WHERE room_id = ?",
                        (*self._mine(), token, room_id),
                    )
            db.execute("COMMIT")
        except LeaseBusy:
            raise
        except BaseException as exc:
            rollback(db)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(self.path, f"cannot take the lease of {room_id!r}: {exc}") from exc
            raise
        return token, home

    def release(self, room_ids: Iterable[str]) -> None:
        """Hand over the rooms' leases we hold (token and home stay)."""
        rooms = list(room_ids)
        if rooms:
            self._write(
                "release leases",
                "UPDATE leases SET holder = NULL, pid = NULL, pid_start = NULL"
                " WHERE room_id IN (SELECT value FROM json_each(?))"
                " AND holder = ? AND pid = ? AND pid_start IS ?",
                (json.dumps(rooms), *self._mine()),
            )

    def release_all(self) -> None:
        """Hand over every lease this process holds (graceful stop)."""
        self._write(
            "release leases",
            "UPDATE leases SET holder = NULL, pid = NULL, pid_start = NULL"
            " WHERE holder = ? AND pid = ? AND pid_start IS ?",
            self._mine(),
        )

    def renew(self, room_ids: Iterable[str]) -> list[str]:
        """The rooms among ``room_ids`` whose lease we no longer hold.

        Leases here do not expire, so nothing is extended: this only notices a
        lease taken away (a cold start of the node, an operator's edit).
        """
        rooms = list(room_ids)
        if not rooms:
            return []
        try:
            held = {
                row[0]
                for row in self._conn().execute(
                    "SELECT room_id FROM leases WHERE room_id IN (SELECT value FROM json_each(?))"
                    " AND holder = ? AND pid = ? AND pid_start IS ?",
                    (json.dumps(rooms), *self._mine()),
                ).fetchall()
            }
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot check leases: {exc}") from exc
        return [r for r in rooms if r not in held]

    def set_home(self, room_id: str, home: int) -> None:
        self._write("record a room's home", "UPDATE leases SET home = ? WHERE room_id = ?", (home, room_id))

    def home(self, room_id: str) -> int | None:
        row = self._conn().execute("SELECT home FROM leases WHERE room_id = ?", (room_id,)).fetchone()
        return None if row is None else row[0]

    def clear_holders(self) -> None:
        """Cold start: no process of an earlier run holds anything (homes stay)."""
        self._write(
            "clear lease holders",
            "UPDATE leases SET holder = NULL, pid = NULL, pid_start = NULL WHERE holder IS NOT NULL",
            (),
        )

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
