"""What every SQLite file of the embedded store does the same way."""

from __future__ import annotations

import sqlite3

from shard_worker.store.base import StoreError

__all__ = ["begin_write", "rollback"]


def begin_write(db: sqlite3.Connection, path: str) -> None:
    """BEGIN IMMEDIATE: take the write lock now (waiting at most the busy
    timeout), so the transaction cannot fail later on a lock upgrade."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StoreError(path, f"cannot begin a transaction: {exc}") from exc


def rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # a failed COMMIT may already have rolled back
