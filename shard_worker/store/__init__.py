"""Where rooms' durable state is stored: one interface, two implementations.

``open_store`` is the one place that reads the ``store`` option: an empty
value (the default) keeps each shard's rooms in SQLite under ``data_dir``;
``redis://host:port/db`` (or ``rediss://``, or ``valkey://``) keeps every
node's rooms in one shared Valkey/Redis server, with leases so that a room has
one owner in the whole cluster.
"""

from __future__ import annotations

from shard_worker.store.base import (
    ChangeRecord,
    LeaseBusy,
    RoomSnapshot,
    RoomStore,
    StoreError,
    StoreHealth,
    StoreUnavailable,
)

__all__ = [
    "ChangeRecord",
    "LeaseBusy",
    "RoomSnapshot",
    "RoomStore",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
]

