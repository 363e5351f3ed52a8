"""Hot-loop hygiene (issue #15): status writes cost what changed, a locked
journal fails fast instead of hanging past the heartbeat, and a node can run
purely in memory."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import RelayConfig
from shard_worker.room import Room
from shard_worker.shard import ShardState
from shard_worker.store import sqlite_store as journal
from tests.support import RawClient, RelayNode, wait_for
from tests.test_shard_state import CTRL, XFM, hello, new_state, obj_pose, own, pose

pytestmark = pytest.mark.timeout(120)


def full_recount(state: ShardState) -> dict[str, int]:
    totals = {"members": 0, "stealth": 0, "devices": 0, "objects": 0}
    for room in state.rooms.values():
        for key, value in room.stats().items():
            if key in totals:
                totals[key] += value
    return {
        "clients": totals["members"],
        "visible": totals["members"] - totals["stealth"],
        "stealth": totals["stealth"],
        "devices": totals["devices"],
        "objects": totals["objects"],
    }


def shown(stats: dict) -> dict[str, int]:
    return {k: stats[k] for k in ("clients", "visible", "stealth", "devices", "objects")}


def test_status_recounts_only_the_rooms_touched_since_the_last_write(monkeypatch) -> None:
    state = new_state()
    for n in range(3000):
        state.handle(CTRL, b"id%d" % n, b"room-%d" % n, hello(f"dev-{n}"), 0.0)
    assert shown(state.stats()) == full_recount(state)
    assert state.stats()["clients"] == 3000

    counted: list[str] = []
    original = Room.stats

    def spy(self: Room) -> dict[str, int]:
        counted.append(self.room_id)
        return original(self)

    monkeypatch.setattr(Room, "stats", spy)
    state.handle(CTRL, b"late", b"room-7", hello("late-dev", stealth=True), 0.1)
    stats = state.stats()
    assert counted == ["room-7"]  # not 3000 rooms
    assert (stats["clients"], stats["stealth"], stats["rooms"]) == (3001, 1, 3000)
    counted.clear()
    state.stats()
    assert counted == []


@settings(max_examples=min(settings.default.max_examples, 200), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hello", "stealth", "pose", "own", "objpose", "tick"]),
            st.integers(0, 3),  # room
            st.integers(0, 4),  # device
            st.floats(0.0, 4.0),  # time step
        ),
        max_size=40,
    )
)
def test_running_totals_equal_a_full_recount(script: list) -> None:
    # Short timeouts and expiry so members leave and rooms vanish in the script.
    state = new_state(client_timeout=2.0, empty_room_expiry_time=3.0, device_id_expiry_time=5.0,
                      shard={"cleanup_interval": 1.0, "device_sweep_interval": 2.0})
    now = 0.0
    for kind, room, device, step in script:
        now += step
        room_frame, dev = f"r{room}".encode(), f"d{device}"
        if kind == "hello":
            state.handle(CTRL, dev.encode(), room_frame, hello(dev), now)
        elif kind == "stealth":
            state.handle(CTRL, dev.encode(), room_frame, hello(dev, stealth=True), now)
        elif kind == "pose":
            state.handle(XFM, b"x" + dev.encode(), room_frame, pose(dev), now)
        elif kind == "own":
            state.handle(CTRL, dev.encode(), room_frame, own(dev, 1 + device), now)
        elif kind == "objpose":
            state.handle(XFM, b"x" + dev.encode(), room_frame, obj_pose(dev, 10 + device), now)
        state.tick(now)
        if device % 2:
            assert shown(state.stats()) == full_recount(state)
    assert shown(state.stats()) == full_recount(state)


def test_journal_lock_wait_is_shorter_than_the_heartbeat_timeout() -> None:
    assert journal._BUSY_TIMEOUT_S < RelayConfig().heartbeat_timeout / 2


@pytest.mark.integration
def test_a_locked_journal_fails_fast_instead_of_hanging_past_the_heartbeat(tmp_path: Path) -> None:
    """An operator's sqlite3 shell holding the write lock: the shard must not
    sit in SQLite's busy wait until the supervisor kills it as hung."""
    data_dir = tmp_path / "data"
    with RelayNode(shards=1, data_dir=str(data_dir)) as node:
        first = RawClient(node, "locked", "dev-first", subscribe=False)
        try:
            assert first.join() == 1
            lock = sqlite3.connect(journal.shard_store_path(str(data_dir), 0), isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # holds the write lock
            try:
                pid = node.child_pid("shard-0")
                second = RawClient(node, "locked", "dev-second", subscribe=False)
                second.hello()  # a new device: must be journaled before it is answered
                wait_for(lambda: "journal unusable" in node.log_text(), 10, interval=0.1,
                         what="the shard giving up on the lock")
                assert "database is locked" in node.log_text()
                assert "silent for" not in node.log_text(), "killed as hung instead of failing fast"
                assert second.recv_control(0.2) is None, "answered without the journal"
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            # Released: a restarted shard serves again, with the first device's number kept.
            wait_for(lambda: node.child_pid("shard-0") not in (None, pid), 15, what="shard restarted")
            again = RawClient(node, "locked", "dev-first", subscribe=False)
            try:
                assert wait_for(lambda: _join(again), 15, interval=0.5, what="serving again") == 1
            finally:
                again.close()
                second.close()
        finally:
            first.close()


def _join(client: RawClient) -> int | None:
    try:
        return client.join(timeout=1.0)
    except AssertionError:
        return None


@pytest.mark.integration
def test_a_node_without_data_dir_keeps_state_in_memory_only() -> None:
    # --no-data-dir comes after RelayNode's own --data-dir <tmp>/data and wins.
    node = RelayNode(shards=1, extra_args=["--no-data-dir"])
    with node:
        assert (node.supervisor_state() or {})["data_dir"] == ""
        client = RawClient(node, "mem-room", "mem-dev", subscribe=False)
        try:
            client.join()
            url = f"http://127.0.0.1:{node.rest_port}/v1/rooms/mem-room/global-variables"
            assert httpx.post(url, json={"variables": {"k": "v"}}, timeout=5).status_code == 200
            assert httpx.get(url, timeout=5).json() == {"variables": {"k": "v"}}
            # Nothing on disk anywhere under the node's directories.
            files = [f for _, _, names in os.walk(node._tmp) for f in names]
            assert not [f for f in files if "sqlite" in f], files
            pid = node.child_pid("shard-0")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: node.child_pid("shard-0") not in (None, pid), 10, what="shard restarted")
            # In memory only: a restarted shard starts empty.
            wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, 10, interval=0.2, what="REST back")
            assert httpx.get(url, timeout=5).json() == {"variables": {}}
        finally:
            client.close()
    assert "in memory only" in node.log_text()
