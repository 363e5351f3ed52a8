"""Room -> shard placement: rendezvous (highest-random-weight) hashing.

blake2b, never Python's hash(): every process and every restart must agree on
where a room lives. Rendezvous hashing moves only the rooms whose winner
changed when the shard count changes (about 1/N of them); today the count is
fixed for the life of a node and of its data dir (live rescaling is planned,
see README).
"""

from __future__ import annotations

import hashlib


def _weight(room_id: bytes, shard_id: int) -> int:
    digest = hashlib.blake2b(room_id, digest_size=8, key=b"shard-%d" % shard_id).digest()
    return int.from_bytes(digest, "little")


def shard_for_room(room_id: bytes, shard_count: int) -> int:
    """Index in [0, shard_count) of the shard that owns ``room_id``."""
    if shard_count <= 1:
        return 0
    best_shard = 0
    best_weight = -1
    for shard_id in range(shard_count):
        weight = _weight(room_id, shard_id)
        if weight > best_weight:
            best_shard, best_weight = shard_id, weight
    return best_shard
