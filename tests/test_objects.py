"""Objects and ownership of one room (shard_worker/objects.py): BEHAVIOR §11 in isolation.

Membership is the room's concern; here requesters are bare client numbers.
"""

from __future__ import annotations

from relay.protocol import decode
from relay.protocol.messages import (
    OWNERSHIP_OP_RELEASE,
    OWNERSHIP_OP_REQUEST,
    OWNERSHIP_REJECT_NOT_OWNER,
    OwnershipChanged,
    OwnershipRejected,
    RoomObjects,
)
from shard_worker.objects import ObjectTable
from shard_worker.room_settings import RoomCounters, RoomSettings

ROOM = "room"
POSE = bytes(range(13))


def table(**settings: object) -> ObjectTable:
    return ObjectTable(ROOM, RoomSettings(**settings), [], RoomCounters())  # type: ignore[arg-type]


def request(t: ObjectTable, op: int, object_id: int, requester: int) -> tuple[object, object]:
    to_room, to_requester = t.ownership_request(op, object_id, requester)
    return (
        None if to_room is None else decode(to_room),
        None if to_requester is None else decode(to_requester),
    )


def test_a_request_is_always_granted_take_over_included() -> None:
    t = table()
    assert request(t, OWNERSHIP_OP_REQUEST, 5, 1) == (OwnershipChanged(5, 1, 0), None)
    assert request(t, OWNERSHIP_OP_REQUEST, 5, 2) == (OwnershipChanged(5, 2, 1), None)
    assert request(t, OWNERSHIP_OP_REQUEST, 5, 2) == (OwnershipChanged(5, 2, 2), None)
    assert t.objects[5].owner == 2
    assert t.changes == [
        ("object", ROOM, 5, 0),  # created unowned, then granted
        ("object", ROOM, 5, 1),
        ("object", ROOM, 5, 2),
        ("object", ROOM, 5, 2),
    ]


def test_only_the_owner_releases_anyone_else_is_rejected_alone() -> None:
    t = table()
    request(t, OWNERSHIP_OP_REQUEST, 5, 1)
    assert request(t, OWNERSHIP_OP_RELEASE, 5, 2) == (
        None,
        OwnershipRejected(5, 1, OWNERSHIP_REJECT_NOT_OWNER),
    )
    assert t.objects[5].owner == 1
    assert request(t, OWNERSHIP_OP_RELEASE, 5, 1) == (OwnershipChanged(5, 0, 1), None)
    # Releasing an unowned (here: unknown) object is rejected too; it is created unowned.
    assert request(t, OWNERSHIP_OP_RELEASE, 6, 1) == (None, OwnershipRejected(6, 0, 1))
    assert t.objects[6].owner == 0


def test_other_operations_create_the_object_unowned_and_answer_nothing() -> None:
    t = table()
    assert request(t, 0, 7, 1) == (None, None)
    assert request(t, 3, 7, 1) == (None, None)
    assert t.objects[7].owner == 0 and t.changes == [("object", ROOM, 7, 0)]


def test_object_limit_refuses_new_objects_only() -> None:
    t = table(max_objects_per_room=1)
    request(t, OWNERSHIP_OP_REQUEST, 1, 1)
    assert request(t, OWNERSHIP_OP_REQUEST, 2, 1) == (None, None)
    assert t.pose(3, 1, 0, POSE, 0.0) is None
    assert list(t.objects) == [1] and t.counters.objects_refused == 2
    assert request(t, OWNERSHIP_OP_REQUEST, 1, 2) == (OwnershipChanged(1, 2, 1), None)


def test_poses_from_the_owner_are_stored_and_mark_the_objects_dirty() -> None:
    t = table()
    request(t, OWNERSHIP_OP_REQUEST, 5, 1)
    assert not t.dirty  # no pose yet: nothing to broadcast
    assert t.pose(5, 1, 9, POSE, 3.0) is None
    obj = t.objects[5]
    assert (obj.pose_bytes, obj.pose_seq, obj.pose_time) == (POSE, 9, 3.0) and t.dirty


def test_a_pose_for_an_unknown_object_claims_it() -> None:
    t = table()
    assert decode(t.pose(8, 3, 1, POSE, 0.0)) == OwnershipChanged(8, 3, 0)  # type: ignore[arg-type]
    assert t.objects[8].owner == 3 and t.objects[8].pose_bytes == POSE
    assert t.changes == [("object", ROOM, 8, 3)]


def test_poses_from_non_owners_are_ignored_also_when_unowned() -> None:
    t = table()
    request(t, OWNERSHIP_OP_REQUEST, 5, 1)
    request(t, 0, 6, 1)  # exists, unowned
    assert t.pose(5, 2, 1, POSE, 0.0) is None and t.pose(6, 2, 1, POSE, 0.0) is None
    assert t.objects[5].pose_bytes is None and t.objects[6].pose_bytes is None and not t.dirty


def test_release_all_frees_only_the_leavers_objects_and_keeps_poses() -> None:
    t = table()
    t.pose(1, 1, 0, POSE, 0.0)
    t.pose(2, 2, 0, POSE, 0.0)
    request(t, OWNERSHIP_OP_REQUEST, 3, 1)
    t.dirty = False
    released = [decode(p) for p in t.release_all(1)]
    assert released == [OwnershipChanged(1, 0, 1), OwnershipChanged(3, 0, 1)]
    assert t.objects[1].pose_bytes == POSE and t.objects[2].owner == 2
    assert t.dirty  # object 1 has a pose, so the broadcast must show its new owner


def test_joiner_snapshot_is_one_ownership_changed_per_object() -> None:
    t = table()
    request(t, OWNERSHIP_OP_REQUEST, 4, 2)
    request(t, 0, 9, 2)
    assert [decode(p) for p in t.snapshot_payloads()] == [
        OwnershipChanged(4, 2, 0),
        OwnershipChanged(9, 0, 0),
    ]


def test_broadcast_timing_dirty_at_the_rate_otherwise_idle_interval() -> None:
    t = table(transform_broadcast_rate=10.0, object_idle_broadcast_interval=2.0)
    assert not t.broadcast_due(0.0)  # no objects at all
    t.pose(1, 1, 0, POSE, 0.0)
    assert t.broadcast_due(0.0)
    t.build_broadcast(0.0)
    # The shard's tick paces dirty broadcasts; the table only refuses to run
    # more than half a period ahead (a tick may come a little early).
    t.pose(1, 1, 1, POSE, 0.04)
    assert not t.broadcast_due(0.04) and t.broadcast_due(0.095)
    t.build_broadcast(0.1)
    assert not t.broadcast_due(2.0) and t.broadcast_due(2.1)


def test_broadcast_lists_only_objects_with_a_pose() -> None:
    t = table()
    request(t, OWNERSHIP_OP_REQUEST, 1, 1)
    assert t.build_broadcast(0.0) is None
    t.pose(1, 1, 4, POSE, 0.5)
    t.pose(2, 1, 5, POSE, 0.6)
    request(t, 0, 3, 1)
    msg = decode(t.build_broadcast(1.0))  # type: ignore[arg-type]
    assert isinstance(msg, RoomObjects) and msg.broadcast_time == 1.0
    assert [(o.object_id, o.owner_client_no, o.pose_seq, o.pose_time) for o in msg.objects] == [
        (1, 1, 4, 0.5),
        (2, 1, 5, 0.6),
    ]
    assert not t.dirty


def test_restore_brings_back_owners_without_poses() -> None:
    t = table()
    t.restore({5: 1, 6: 0}, {}, 0.0)
    assert {i: (o.owner, o.pose_bytes) for i, o in t.objects.items()} == {5: (1, None), 6: (0, None)}
    assert t.changes == [] and t.build_broadcast(0.0) is None


def test_restore_brings_back_last_poses_and_journals_new_ones_once_per_broadcast() -> None:
    t = table()
    pose = bytes(range(13))
    t.restore({5: 1}, {5: (pose, 7)}, 10.0)
    assert (t.objects[5].pose_bytes, t.objects[5].pose_seq) == (pose, 7) and t.dirty
    assert t.build_broadcast(10.0) is not None  # a late joiner sees the stored pose
    assert t.changes == []  # what was loaded is not written back
    for seq in (8, 9, 10):
        t.pose(5, 1, seq, pose[::-1], 11.0)
    t.build_broadcast(11.1)
    assert t.changes == [("object_pose", t.room_id, 5, pose[::-1], 10)]
