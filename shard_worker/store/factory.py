"""The one place that reads the ``store`` option and opens a shard's store."""

from __future__ import annotations

import os
from collections.abc import Callable

from relay.config import RelayConfig
from shard_worker.store.base import RoomStore


def open_room_store(
    config: RelayConfig,
    shard_index: int,
    node_id: str,
    epoch: int,
    *,
    incarnation: int = 0,
    member_stamp: Callable[[bytes | None], tuple[str, int]] | None = None,
    member_alive: Callable[[str, int], bool] | None = None,
) -> RoomStore | None:
    """The shard's store: shared Valkey/Redis, SQLite in data_dir, or none (in memory).

    ``member_stamp`` and ``member_alive`` tell the shared store which node
    incarnation holds a member's connection (cluster view), so members of a
    node that died are not loaded back. ``incarnation`` counts the processes
    started for this shard slot by reloads: a new incarnation waits for the
    old one to hand its rooms over, where a restarted crashed process (same
    incarnation) takes them at once.
    """
    if config.store:
        from shard_worker.store.redis_store import LeaseOwner, open_redis_store

        owner = LeaseOwner(
            node_id=node_id, epoch=epoch, shard=shard_index, pid=os.getpid(), incarnation=incarnation
        )
        return open_redis_store(
            config.store,
            owner,
            lease_ttl=config.lease_ttl,
            buffer_max_records=config.store_buffer_max_records,
            member_stamp=member_stamp,
            member_alive=member_alive,
        )
    if config.data_dir:
        from shard_worker.store.sqlite_store import _BUSY_TIMEOUT_S, open_store

        # A lock wait must end before the heartbeat timeout would declare the
        # shard dead (sqlite_store.py).
        busy = min(_BUSY_TIMEOUT_S, config.heartbeat_timeout / 3)
        return open_store(config.data_dir, shard_index, busy_timeout=busy, incarnation=incarnation)
    return None
