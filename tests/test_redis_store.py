"""The shared store's cluster duties against a real valkey-server:
leases and fencing, outage and recovery, membership and its expiry."""

from __future__ import annotations

import time

import pytest
import redis

from relay.cluster.membership import Membership, NodeIdConflict
from relay.cluster.view import NodeInfo
from shard_worker.store.base import LeaseBusy, StoreUnavailable
from shard_worker.store.redis_store import LeaseOwner, RedisRoomStore

pytestmark = pytest.mark.timeout(90)


def shard(url: str, node: str = "a", shard_index: int = 0, *, epoch: int = 1, pid: int = 100,
          lease_ttl: float = 2.0, **kw: object) -> RedisRoomStore:
    return RedisRoomStore(url, LeaseOwner(node, epoch, shard_index, pid), lease_ttl=lease_ttl,
                          retry_interval=0.1, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------- leases


def test_second_owner_waits_until_release_and_gets_a_higher_token(valkey) -> None:
    url = valkey.fresh_db_url()
    a, b = shard(url, "a"), shard(url, "b")
    token_a = a.acquire("room")
    with pytest.raises(LeaseBusy) as busy:
        b.acquire("room")
    assert busy.value.holder.startswith("a/")
    assert 0 < busy.value.retry_after <= 2.0
    a.apply([("global", "room", "k", "from-a", 1, 1)])
    a.release(["room"])
    token_b = b.acquire("room")
    assert token_b > token_a
    snap = b.load_room("room")
    assert snap is not None and snap.globals == {"k": ("from-a", 1, 1)}


def test_write_of_a_deposed_owner_is_refused_and_counted(valkey) -> None:
    url = valkey.fresh_db_url()
    a = shard(url, "a", lease_ttl=1.0)
    b = shard(url, "b", lease_ttl=1.0)
    a.acquire("room")
    a.apply([("global", "room", "k", "v1", 1, 1)])
    # a pauses (no renewal) past its TTL; b takes the room over.
    time.sleep(1.2)
    b.acquire("room")
    b.apply([("global", "room", "k", "v2", 2, 2)])
    assert a.apply([("global", "room", "k", "stale", 1, 3)]) == ["room"]
    assert a.health().rejected_writes == 1
    assert "room" not in a.tokens
    snap = b.load_room("room")
    assert snap is not None and snap.globals == {"k": ("v2", 2, 2)}
    assert a.renew(["room"]) == []  # no longer its room: nothing to renew


def test_renew_reports_lost_leases(valkey) -> None:
    url = valkey.fresh_db_url()
    a = shard(url, "a", lease_ttl=1.0)
    b = shard(url, "b", lease_ttl=1.0)
    a.acquire("r1")
    a.acquire("r2")
    time.sleep(1.2)
    b.acquire("r2")
    assert a.renew(["r1", "r2"]) == ["r2"]
    with pytest.raises(LeaseBusy):
        b.acquire("r1")  # r1 renewed by a


def test_a_dead_predecessor_of_the_same_slot_is_taken_over_at_once(valkey) -> None:
    url = valkey.fresh_db_url()
    old = shard(url, "a", 0, epoch=1, pid=100)
    t1 = old.acquire("room")
    # The supervisor restarted shard 0 (new pid, same node incarnation).
    t2 = shard(url, "a", 0, epoch=1, pid=200).acquire("room")
    assert t2 > t1
    # The node restarted (new epoch): any shard of the old epoch is dead.
    t3 = shard(url, "a", 1, epoch=2, pid=300).acquire("room")
    assert t3 > t2
    # A live sibling shard of the same incarnation is not dead: it must hand over.
    with pytest.raises(LeaseBusy):
        shard(url, "a", 0, epoch=2, pid=400).acquire("room")


def test_a_new_incarnation_of_a_slot_waits_for_the_live_old_one(valkey) -> None:
    url = valkey.fresh_db_url()

    def slot0(pid: int, incarnation: int) -> RedisRoomStore:
        return RedisRoomStore(url, LeaseOwner("a", 1, 0, pid, incarnation=incarnation), lease_ttl=2.0,
                              retry_interval=0.1)

    old = slot0(100, 0)
    t1 = old.acquire("room")
    old.apply([("global", "room", "k", "old", 1, 1)])
    # A reload started incarnation 1 of slot 0 while incarnation 0 still serves.
    new = slot0(200, 1)
    with pytest.raises(LeaseBusy) as busy:
        new.acquire("room")
    assert busy.value.holder == "a/1/0.0/100"
    # Incarnation 0 crashed and the supervisor restarted it (same slot and
    # incarnation, new pid): a dead predecessor, taken over at once.
    restarted = slot0(300, 0)
    t2 = restarted.acquire("room")
    assert t2 > t1
    with pytest.raises(LeaseBusy):
        new.acquire("room")
    restarted.release(["room"])  # the hand-over
    t3 = new.acquire("room")
    assert t3 > t2
    snap = new.load_room("room")
    assert snap is not None and snap.globals == {"k": ("old", 1, 1)}


def test_members_of_a_dead_node_incarnation_are_not_loaded(valkey) -> None:
    url = valkey.fresh_db_url()
    old = shard(url, "a", epoch=1)
    old.acquire("room")
    old.apply([("device", "room", "d", 1, 2), ("member", "room", "d", b"id", False)])
    restarted_node = shard(url, "a", epoch=2, pid=101)
    restarted_node.acquire("room")
    snap = restarted_node.load_room("room")
    assert snap is not None and snap.devices == {"d": 1} and snap.members == {}
    restarted_shard = shard(url, "a", epoch=1, pid=102)
    restarted_shard.acquire("room")
    snap = restarted_shard.load_room("room")
    assert snap is not None and snap.members == {"d": (b"id", False)}


# ------------------------------------------------------------------- outage


def test_outage_buffers_writes_and_flushes_them_when_the_store_is_back(valkey_private) -> None:
    server = valkey_private
    a = shard(server.url, "a", lease_ttl=30.0)
    a.acquire("room")
    a.apply([("device", "room", "d", 1, 2), ("global", "room", "k", "0", 1, 1)])
    server.stop_keeping_data()
    # Writes during the outage: buffered, counted as announced-but-unpersisted.
    for i in range(1, 50):
        assert a.apply([("global", "room", "k", str(i), 1, i + 1)]) == []
    health = a.health()
    assert health.degraded and health.buffered_records == 49 and health.unpersisted_announced == 49
    with pytest.raises(StoreUnavailable):
        a.load_room("other")
    with pytest.raises(StoreUnavailable):
        a.acquire("other")
    a.maintain(time.monotonic() + 1)  # still down: stays degraded, no exception
    assert a.degraded
    server.start()
    assert a.maintain(time.monotonic() + 1) == []
    health = a.health()
    assert not health.degraded and health.buffered_records == 0 and health.outages == 1
    b = shard(server.url, "a", pid=999)  # a fresh reader (same slot: takes over)
    b.acquire("room")
    snap = b.load_room("room")
    assert snap is not None and snap.globals == {"k": ("49", 1, 50)} and snap.write_seq == 50


def test_buffer_is_bounded_and_overflow_counted(valkey_private) -> None:
    server = valkey_private
    a = shard(server.url, "a", buffer_max_records=10)
    a.acquire("room")
    server.stop()
    a.apply([("global", "room", f"k{i}", "v", 1, i + 1) for i in range(25)])
    health = a.health()
    assert health.buffered_records == 10 and health.dropped_records == 15


@pytest.fixture
def valkey_private():
    """A server of the test's own, which it may stop and start."""
    from tests.valkey_server import ValkeyServer

    server = ValkeyServer().start()
    yield server
    server.close()


# --------------------------------------------------------------- membership


def test_membership_join_leave_expiry_and_generation(valkey) -> None:
    client = redis.Redis.from_url(valkey.fresh_db_url())
    a = Membership(client, NodeInfo("a", 2, 1, 1, {"inlet": "tcp://127.0.0.2:1"}), ttl=1.0)
    b = Membership(client, NodeInfo("b", 4, 1), ttl=1.0)
    v1 = a.refresh()
    assert [n.node_id for n in v1.nodes] == ["a"]
    v2 = b.refresh()
    assert [(n.node_id, n.shards) for n in v2.nodes] == [("a", 2), ("b", 4)]
    assert v2.generation > v1.generation
    assert v2.node("a").endpoints == {"inlet": "tcp://127.0.0.2:1"}
    assert a.refresh().generation == v2.generation  # a refresh is not a change
    # b stops refreshing (dies): it leaves a's view after the TTL.
    time.sleep(1.2)
    v3 = a.refresh()
    assert [n.node_id for n in v3.nodes] == ["a"] and v3.generation > v2.generation
    # b comes back, then leaves gracefully: at once, no TTL wait.
    b.refresh()
    b.leave()
    assert [n.node_id for n in a.refresh().nodes] == ["a"]


def test_a_live_node_id_cannot_be_taken_by_another_incarnation(valkey) -> None:
    client = redis.Redis.from_url(valkey.fresh_db_url())
    Membership(client, NodeInfo("a", 2, epoch=1), ttl=1.0).refresh()
    twin = Membership(client, NodeInfo("a", 2, epoch=2), ttl=1.0)
    with pytest.raises(NodeIdConflict, match="held by a live node"):
        twin.refresh()
    time.sleep(1.2)  # the first incarnation stopped refreshing: its id is free
    assert [n.epoch for n in twin.refresh().nodes] == [2]
