"""One contract, two stores: SQLite (embedded) and Valkey/Redis (shared).

The same change records must reload as the same snapshot from either; the
shard cannot tell them apart. Runs against a real valkey-server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shard_worker.store.base import LeaseBusy, RoomSnapshot, RoomStore
from shard_worker.store.redis_store import LeaseOwner, RedisRoomStore
from shard_worker.store.sqlite_store import open_store

pytestmark = pytest.mark.timeout(60)

POSE = bytes(range(13))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoomStore]:
    if request.param == "sqlite":
        opened: RoomStore = open_store(str(tmp_path / "data"), 0)
    else:
        valkey = request.getfixturevalue("valkey")
        opened = RedisRoomStore(valkey.fresh_db_url(), LeaseOwner("n1", 1, 0, os.getpid()))
    yield opened
    opened.close()


def reopen(store: RoomStore, tmp_path: Path) -> RoomStore:
    """A new instance on the same durable state, as a restarted shard gets."""
    if store.kind == "sqlite":
        store.close()
        return open_store(str(tmp_path / "data"), 0)
    assert isinstance(store, RedisRoomStore)
    again = RedisRoomStore(store.url, LeaseOwner("n1", 1, 0, os.getpid() + 1))
    return again


def second_shard(store: RoomStore, tmp_path: Path) -> RoomStore:
    """Another live shard of the same node, on the same durable state."""
    if store.kind == "sqlite":
        return open_store(str(tmp_path / "data"), 1)
    assert isinstance(store, RedisRoomStore)
    return RedisRoomStore(store.url, LeaseOwner("n1", 1, 1, os.getpid()))  # shard 1 of the node


def test_lease_is_exclusive_and_the_next_holder_gets_the_state(store: RoomStore, tmp_path: Path) -> None:
    other = second_shard(store, tmp_path)
    try:
        token = store.acquire("room")
        assert store.acquire("room") == token  # confirming keeps the token
        store.apply([("device", "room", "d", 1, 2), ("global", "room", "g", "v", 1, 1),
                     ("member", "room", "d", b"id", False)])
        with pytest.raises(LeaseBusy):
            other.acquire("room")
        assert store.renew(["room"]) == []
        store.release(["room"])
        assert other.acquire("room") > token
        assert other.renew(["room"]) == []
        snap = other.load_room("room")
        assert snap == RoomSnapshot(room_id="room", devices={"d": 1}, next_client_no=2, write_seq=1,
                                    globals={"g": ("v", 1, 1)}, members={"d": (b"id", False)})
        with pytest.raises(LeaseBusy):
            store.acquire("room")
    finally:
        other.close()


def test_unknown_room_loads_as_none(store: RoomStore) -> None:
    store.acquire("nobody")
    assert store.load_room("nobody") is None


def test_every_record_kind_round_trips(store: RoomStore, tmp_path: Path) -> None:
    store.acquire("room")
    assert store.apply(
        [
            ("device", "room", "dev-a", 1, 2),
            ("device", "room", "dev-b", 2, 3),
            ("global", "room", "score", "10", 1, 1),
            ("global", "room", "mode", "race", 2, 2),
            ("client_var", "room", "dev-a", "hp", "100", 2, 3),
            ("client_var", "room", "dev-b", "hp", "90", 1, 4),
            ("client_var", "room", "dev-a", "team", "red", 1, 5),
            ("object", "room", 7, 1),
            ("object", "room", 3, 2),
            ("object_pose", "room", 7, POSE, 12),
            ("member", "room", "dev-a", b"\x00id-a", False),
            ("member", "room", "dev-b", None, True),
        ]
    ) == []
    store.apply(
        [
            ("global", "room", "score", "11", 2, 6),
            ("client_var_del", "room", "dev-b", "hp"),
            ("member", "room", "dev-a", b"\x00id-a2", True),  # update keeps its place
            ("object_pose", "room", 7, POSE[::-1], 13),
        ]
    )
    expected = RoomSnapshot(
        room_id="room",
        devices={"dev-a": 1, "dev-b": 2},
        next_client_no=3,
        write_seq=6,
        globals={"mode": ("race", 2, 2), "score": ("11", 2, 6)},
        client_vars={"dev-a": {"hp": ("100", 2, 3), "team": ("red", 1, 5)}},
        objects={3: 2, 7: 1},
        members={"dev-a": (b"\x00id-a2", True), "dev-b": (None, True)},
        object_poses={7: (POSE[::-1], 13)},
    )
    assert store.load_room("room") == expected
    again = reopen(store, tmp_path)
    try:
        again.acquire("room")
        assert again.load_room("room") == expected
    finally:
        again.close()


def test_expiry_clear_and_delete(store: RoomStore) -> None:
    store.acquire("r")
    store.apply(
        [
            ("device", "r", "a", 1, 2),
            ("device", "r", "b", 2, 3),
            ("client_var", "r", "a", "x", "1", 0, 1),
            ("client_var", "r", "b", "y", "2", 0, 2),
            ("member", "r", "a", b"ia", False),
            ("member", "r", "b", b"ib", False),
        ]
    )
    store.apply([("device_expire", "r", "a"), ("client_var_del", "r", "b", None), ("member_remove", "r", "b")])
    snap = store.load_room("r")
    assert snap is not None
    assert snap.devices == {"b": 2}
    assert snap.client_vars == {}
    assert snap.members == {"a": (b"ia", False)}
    assert snap.next_client_no == 3  # the counter never goes back
    store.apply([("room_delete", "r")])
    assert store.load_room("r") is None
    assert "r" not in store.room_ids()


def test_reused_number_goes_to_the_end_of_assignment_order(store: RoomStore) -> None:
    store.acquire("r")
    store.apply([("device", "r", "a", 1, 2), ("device", "r", "b", 2, 3)])
    store.apply([("device_expire", "r", "a"), ("device", "r", "c", 1, 3)])
    snap = store.load_room("r")
    assert snap is not None
    assert list(snap.devices.items()) == [("b", 2), ("c", 1)]


def test_values_are_binary_and_unicode_safe(store: RoomStore) -> None:
    store.acquire("räum\x00")
    name, value = "名前\U0001f600", "\x00\xff値" * 10
    store.apply([("global", "räum\x00", name, value, 3, 1), ("member", "räum\x00", "d", bytes(range(256)), False),
                 ("device", "räum\x00", "d", 1, 2)])
    snap = store.load_room("räum\x00")
    assert snap is not None
    assert snap.globals == {name: (value, 3, 1)}
    assert snap.members == {"d": (bytes(range(256)), False)}
