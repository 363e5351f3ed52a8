"""Room -> shard placement is stable across processes and spreads evenly."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from relay.hashing import shard_for_room

pytestmark = pytest.mark.timeout(60)

ROOMS = [f"room-{i}".encode() for i in range(1000)]


def test_same_room_same_shard_in_another_process() -> None:
    # A fresh interpreter has a different hash() seed: placement must not care.
    code = (
        "from relay.hashing import shard_for_room;"
        "print(','.join(str(shard_for_room(f'room-{i}'.encode(), 4)) for i in range(1000)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    ).stdout.strip()
    assert out.split(",") == [str(shard_for_room(r, 4)) for r in ROOMS]


def test_thousand_rooms_within_twenty_percent_of_even() -> None:
    counts = Counter(shard_for_room(r, 4) for r in ROOMS)
    assert set(counts) == {0, 1, 2, 3}
    for shard, n in counts.items():
        assert 200 <= n <= 300, (shard, n)


def test_growing_the_shard_count_moves_only_the_new_shards_share() -> None:
    before = [shard_for_room(r, 4) for r in ROOMS]
    after = [shard_for_room(r, 5) for r in ROOMS]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert all(a == 4 for _, a in moved), "rendezvous hashing only moves rooms to the new shard"
    assert 120 <= len(moved) <= 280
