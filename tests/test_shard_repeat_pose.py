"""The shard's repeat-pose path (ShardState._repeat_pose, Room.repeat_pose).

A connection's next pose for the same room and device skips the lookups of
the full handler. Each test here sends a pose that this path must *not*
take, or must take without changing what the room broadcasts, and checks
what the room then sends: the outcome has to equal the full handler's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from relay.protocol import encode
from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    FLAG_STEALTH,
    PROTOCOL_VERSION,
    ClientPose,
    DeviceIdMapping,
    PlacedRotation,
    PoseBody,
    RoomPose,
)
from shard_worker.shard import ShardState
from tests.test_shard_state import (
    CTRL,
    XFM,
    broadcasts_by_topic,
    hello,
    mapping,
    new_state,
    of_type,
    pose,
    pose_body,
)

pytestmark = pytest.mark.timeout(30)


def room_pose(state: ShardState, now: float) -> list[tuple[int, PoseBody]]:
    """(client number, body) of every client in the room pose of this tick."""
    by_topic = broadcasts_by_topic(state.tick(now)[1])
    message, _ = by_topic[b"r"]
    assert isinstance(message, RoomPose)
    return [(e.client_no, e.body) for e in message.clients]


def stealth_pose(device: str, seq: int) -> bytes:
    body = PoseBody(seq, FLAG_HEAD_VALID | FLAG_STEALTH, 0x1F, head=PlacedRotation(0, 0, 0, 0xE0080200))
    return encode(ClientPose(PROTOCOL_VERSION, device, body))


def test_every_repeat_pose_replaces_the_body_and_is_counted() -> None:
    state = new_state()
    for seq in range(1, 6):
        assert state.handle(XFM, b"xa", b"r", pose("A", seq, seq * 10), seq * 0.01) == []

    assert room_pose(state, 0.1) == [(1, pose_body(5, 50))]
    assert state.messages_in["client_pose"] == 5
    assert state.drops.counts == {}


def test_a_malformed_pose_from_a_known_sender_is_dropped_with_its_reason() -> None:
    state = new_state()
    state.handle(XFM, b"xa", b"r", pose("A", 1, 11), 0.0)
    room_pose(state, 0.0)

    assert state.handle(XFM, b"xa", b"r", pose("A", 2, 22) + b"\x00", 0.05) == []
    assert state.handle(XFM, b"xa", b"r", pose("A", 3, 33)[:-3], 0.06) == []

    assert dict(state.drops.counts) == {"trailing_bytes": 1, "truncated": 1}
    assert state.messages_in["client_pose"] == 1
    # Nothing new since the last tick: the malformed poses changed nothing.
    assert state.tick(0.1)[1] == []


def test_a_pose_that_turns_stealth_on_leaves_the_room_pose_and_is_mapped() -> None:
    state = new_state()
    state.handle(CTRL, b"b", b"r", hello("B"), 0.0)
    state.handle(XFM, b"xa", b"r", pose("A", 1), 0.0)
    state.handle(XFM, b"xb", b"r", pose("B", 1), 0.0)
    state.tick(0.0)

    state.handle(XFM, b"xa", b"r", stealth_pose("A", 2), 1.0)
    unicasts, broadcasts = state.tick(1.1)

    maps = [m[2] for m in of_type(unicasts, DeviceIdMapping)]
    assert maps and maps[-1] == mapping((1, False, "B"), (2, True, "A"))
    clients = broadcasts_by_topic(broadcasts)[b"r"][0].clients  # type: ignore[union-attr]
    assert [e.client_no for e in clients] == [1]


def test_the_same_device_on_a_new_connection_takes_the_full_path() -> None:
    state = new_state()
    state.handle(XFM, b"old", b"r", pose("A", 1), 0.0)
    state.handle(XFM, b"new", b"r", pose("A", 2, 5), 0.05)
    assert state.rooms["r"].members["A"].transform_identity == b"new"

    # The old connection's remembered sender no longer matches the member.
    state.handle(XFM, b"old", b"r", pose("A", 3, 7), 0.06)
    assert state.rooms["r"].members["A"].transform_identity == b"old"
    assert room_pose(state, 0.1) == [(1, pose_body(3, 7))]


def test_another_device_on_a_known_connection_is_a_new_member() -> None:
    state = new_state()
    state.handle(XFM, b"x", b"r", pose("A", 1, 1), 0.0)
    state.handle(XFM, b"x", b"r", pose("B", 1, 2), 0.05)

    assert sorted(state.rooms["r"].members) == ["A", "B"]
    assert room_pose(state, 0.1) == [(1, pose_body(1, 1)), (2, pose_body(1, 2))]


def test_a_pose_for_another_room_on_a_known_connection_goes_to_that_room() -> None:
    state = new_state()
    state.handle(XFM, b"x", b"r", pose("A", 1, 1), 0.0)
    state.handle(XFM, b"x", b"other", pose("A", 2, 2), 0.05)

    by_topic = broadcasts_by_topic(state.tick(0.1)[1])
    assert [e.body for e in by_topic[b"other"][0].clients] == [pose_body(2, 2)]  # type: ignore[union-attr]


def _time_out_a(state: ShardState) -> float:
    """A stops sending while B stays: the cleanup sweep removes A (and its sender)."""
    for step in range(1, 31):
        now = step * 0.1
        state.handle(CTRL, b"b", b"r", hello("B"), now)
        state.tick(now)
    return 3.05


def _evict_a(state: ShardState) -> float:
    """A is evicted over the admin API: no cleanup runs before its next pose."""
    reply, _ = state.admin({"op": "evict", "room": "r", "device": "A"}, 0.01)
    assert reply["outcome"] == "ok", reply
    return 0.02


@pytest.mark.parametrize("remove_a", [_time_out_a, _evict_a], ids=["timed_out", "evicted_before_cleanup"])
def test_a_member_that_left_rejoins_with_its_next_pose(remove_a: Callable[[ShardState], float]) -> None:
    state = new_state(client_timeout=1.0)
    state.handle(CTRL, b"b", b"r", hello("B"), 0.0)
    state.handle(XFM, b"xa", b"r", pose("A", 1), 0.0)
    now = remove_a(state)
    assert "A" not in state.rooms["r"].members

    # Same connection, same header: the remembered member is gone.
    state.handle(XFM, b"xa", b"r", pose("A", 2, 9), now)

    assert "A" in state.rooms["r"].members
    assert (2, pose_body(2, 9)) in room_pose(state, now + 0.05)


def test_a_room_forgotten_by_the_shard_is_not_written_through_a_remembered_sender() -> None:
    state = new_state()
    state.handle(XFM, b"xa", b"r", pose("A", 1, 1), 0.0)
    old_room = state.rooms["r"]

    state.forget_rooms(["r"])
    state.handle(XFM, b"xa", b"r", pose("A", 2, 2), 0.05)

    assert state.rooms["r"] is not old_room
    assert old_room.members["A"].pose_body is not None
    assert room_pose(state, 0.1) == [(1, pose_body(2, 2))]


def test_cleanup_forgets_senders_of_members_that_left() -> None:
    state = new_state(client_timeout=1.0)
    for i in range(5):
        state.handle(XFM, b"x%d" % i, b"r", pose(f"D{i}", 1), 0.0)
    assert len(state._pose_senders) == 5
    state.handle(CTRL, b"k", b"keep", hello("K"), 0.0)
    for step in range(1, 31):
        now = step * 0.1
        state.handle(XFM, b"x0", b"r", pose("D0", step + 1), now)
        state.tick(now)

    assert list(state._pose_senders) == [b"x0"]
