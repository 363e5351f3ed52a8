"""Folding a shard's WAL into its database file, off the shard's loop.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its
threshold (1 000 pages), and a checkpoint writes the database pages and, with
``synchronous=NORMAL``, fsyncs: on a busy disk that one commit takes tens of
milliseconds, and the shard journals before it sends the replies that
announce a change, so every control message of that loop turn waits
(BENCHMARKS.md, "Where control time goes": 16-45 ms ``control_journal``
turns). The shard's connection therefore turns automatic checkpoints off and
this thread, with a connection of its own, runs a PASSIVE checkpoint once the
WAL has grown past ``wal_bytes``. PASSIVE never blocks the writer: it copies
what no reader still needs, and the writer restarts the WAL from the start
once everything is copied. SQLite releases the GIL while it works.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger("relay.store")

__all__ = ["Checkpointer"]

CHECK_INTERVAL = 0.5
WAL_BYTES = 1 << 20  # 1 MiB: about 250 pages, a few seconds of a busy shard


class Checkpointer:
    def __init__(self, path: str, busy_timeout: float, *, interval: float = CHECK_INTERVAL,
                 wal_bytes: int = WAL_BYTES) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.interval = interval
        self.wal_bytes = wal_bytes
        self.checkpoints = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            while not self._stop.wait(self.interval):
                try:
                    size = os.path.getsize(self.path + "-wal")
                except OSError:
                    continue
                if size < self.wal_bytes:
                    continue
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    self.errors += 1
                    if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                        log.warning("WAL checkpoint of %s failed (%d so far): %s", self.path, self.errors, exc)
        except sqlite3.Error as exc:
            log.error("WAL checkpointer for %s stopped: %s", self.path, exc)
        finally:
            if db is not None:
                db.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
