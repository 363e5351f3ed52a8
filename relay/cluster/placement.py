"""Which (node, shard) owns a room: one pure function, called by every process.

Rendezvous (highest-random-weight) hashing over the (node, shard) pairs of
the view, computed in two stages so that it is cheap and compatible:

1. *weighted* rendezvous over the nodes, the weight being the node's shard
   count, so that every (node, shard) pair is equally likely to win, exactly
   as with a flat pass over all pairs (score = weight / -ln(u));
2. plain rendezvous over that node's shards (``relay.hashing``).

A join or leave moves only the rooms whose winning node changed (about 1/N
of them), and a node alone places rooms exactly as a single node always has,
so data directories and tests that pick rooms per shard stay valid.

Stable hashing only (blake2b): every process and every node must agree.
"""

from __future__ import annotations

import hashlib
import math

from relay.cluster.view import ClusterView
from relay.hashing import shard_for_room

__all__ = ["LocalRouter", "owner_of"]

_TWO_64 = float(2**64)


def _node_score(room_id: bytes, node_id: str, weight: int) -> float:
    digest = hashlib.blake2b(room_id, digest_size=8, key=b"node:" + node_id.encode("utf-8")).digest()
    # u in (0, 1): never 0 (log) nor 1 (division by zero).
    u = (int.from_bytes(digest, "little") + 0.5) / _TWO_64
    return weight / -math.log(u)


def owner_of(room_id: bytes, view: ClusterView) -> tuple[str, int]:
    """The (node id, shard index) that owns ``room_id`` in ``view``."""
    nodes = view.nodes
    if len(nodes) == 1:
        only = nodes[0]
        return only.node_id, shard_for_room(room_id, only.shards)
    best = None
    best_score = -1.0
    for node in nodes:
        score = _node_score(room_id, node.node_id, node.shards)
        if score > best_score:
            best, best_score = node, score
    if best is None:
        raise ValueError("placement needs a view with at least one node")
    return best.node_id, shard_for_room(room_id, best.shards)


class LocalRouter:
    """The ingress's question: which shard, here or on another node, owns this room?

    ``route`` returns a local shard index (>= 0), or ``-1 - j`` for the j-th
    remote (node id, shard) target (``remote_target(j)``). One dict hit per
    message; the cache and the remote targets are rebuilt for a new view.
    """

    __slots__ = ("_cache", "_max_entries", "_remote_index", "node_id", "remote_targets", "view")

    def __init__(self, view: ClusterView, node_id: str, max_entries: int = 100_000) -> None:
        self.node_id = node_id
        self._max_entries = max_entries
        self.set_view(view)

    def set_view(self, view: ClusterView) -> None:
        self.view = view
        self._cache: dict[bytes, int] = {}
        self.remote_targets: list[tuple[str, int]] = []
        self._remote_index: dict[tuple[str, int], int] = {}

    def route(self, room_id: bytes) -> int:
        target = self._cache.get(room_id)
        if target is None:
            owner = owner_of(room_id, self.view)
            if owner[0] == self.node_id:
                target = owner[1]
            else:
                j = self._remote_index.get(owner)
                if j is None:
                    j = self._remote_index[owner] = len(self.remote_targets)
                    self.remote_targets.append(owner)
                target = -1 - j
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[room_id] = target
        return target

    def remote_target(self, target: int) -> tuple[str, int]:
        return self.remote_targets[-1 - target]

    def __len__(self) -> int:
        return len(self._cache)
