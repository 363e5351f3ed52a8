"""Placement over the cluster view's (node, shard) pairs (relay/cluster/placement.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from relay.cluster.placement import LocalRouter, owner_of
from relay.cluster.view import ClusterView, NodeInfo
from relay.hashing import shard_for_room

REPO = str(Path(__file__).resolve().parent.parent)
ROOMS = [f"room-{i}".encode() for i in range(10_000)]


def view(*nodes: tuple[str, int]) -> ClusterView:
    return ClusterView(1, tuple(NodeInfo(n, s) for n, s in nodes))


def test_a_node_alone_places_rooms_as_a_single_node_always_has() -> None:
    v = view(("any-name", 4))
    assert [owner_of(r, v) for r in ROOMS[:2000]] == [("any-name", shard_for_room(r, 4)) for r in ROOMS[:2000]]


def test_every_pair_gets_its_share_weighted_by_shard_count() -> None:
    v = view(("a", 1), ("b", 2), ("c", 3))
    counts = Counter(owner_of(r, v) for r in ROOMS)
    assert set(counts) == {("a", 0), ("b", 0), ("b", 1), ("c", 0), ("c", 1), ("c", 2)}
    for pair, count in counts.items():
        assert 10_000 / 6 * 0.85 < count < 10_000 / 6 * 1.15, (pair, count)


def test_a_join_moves_only_rooms_to_the_new_node_about_one_in_n() -> None:
    before = [owner_of(r, view(("a", 2), ("b", 2), ("c", 2))) for r in ROOMS]
    after = [owner_of(r, view(("a", 2), ("b", 2), ("c", 2), ("d", 2))) for r in ROOMS]
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert all(y[0] == "d" for _, y in moved)
    assert 0.2 < len(moved) / len(ROOMS) < 0.3  # 1/4 expected


def test_a_leave_moves_only_the_leaving_nodes_rooms() -> None:
    before = [owner_of(r, view(("a", 2), ("b", 2), ("c", 2))) for r in ROOMS]
    after = [owner_of(r, view(("a", 2), ("c", 2))) for r in ROOMS]
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert all(x[0] == "b" for x, _ in moved)
    assert sum(1 for x in before if x[0] == "b") == len(moved)


def test_placement_is_stable_across_processes() -> None:
    code = (
        "from relay.cluster.placement import owner_of;"
        "from relay.cluster.view import ClusterView, NodeInfo;"
        "v = ClusterView(1, (NodeInfo('a', 2), NodeInfo('b', 3)));"
        "print(';'.join('%s/%d' % owner_of(f'room-{i}'.encode(), v) for i in range(500)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"}, cwd=REPO).stdout.strip()
    v = view(("a", 2), ("b", 3))
    assert out.split(";") == ["{}/{}".format(*owner_of(r, v)) for r in ROOMS[:500]]


def test_local_router_routes_remote_rooms_away_and_stays_bounded() -> None:
    v = view(("a", 2), ("b", 2))
    router = LocalRouter(v, "a", max_entries=100)
    for r in ROOMS[:1000]:
        node, shard = owner_of(r, v)
        target = router.route(r)
        assert target == shard if node == "a" else router.remote_target(target) == (node, shard)
    assert len(router) <= 100
    router.set_view(view(("a", 2)))
    assert all(router.route(r) == shard_for_room(r, 2) for r in ROOMS[:200])
