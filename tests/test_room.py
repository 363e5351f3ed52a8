"""Room state machine (shard_worker/room.py): BEHAVIOR.md §1–§11 without sockets.

Every handler returns control unicasts ``(identities, payload)``; the tests
decode each payload with the real codec and compare whole messages, so a test
fails on any wrong field, recipient or order.

One file although long: it is the executable form of BEHAVIOR §1–§11 for the
``Room`` contract (what each input sends to whom), sections in the spec's
order, and the cases cross sections (a join sends numbers, variables and
objects). The rules of the room's parts are unit-tested on their own in
tests/test_numbering.py, tests/test_network_variables.py and
tests/test_objects.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.protocol import decode, encode, encode_pose_body, split_object_pose
from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    FLAG_STEALTH,
    OWNERSHIP_OP_RELEASE,
    OWNERSHIP_OP_REQUEST,
    OWNERSHIP_REJECT_NOT_OWNER,
    PROTOCOL_VERSION,
    ClientVars,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSync,
    MappingEntry,
    ObjectPose,
    OwnershipChanged,
    OwnershipRejected,
    PlacedRotation,
    PoseBody,
    RoomObject,
    RoomObjects,
    RoomPose,
    Rpc,
    VarEntry,
)
from shard_worker.room import MAX_CLIENT_NO, NvLimitError, Room, RoomSettings
from shard_worker.store.sqlite_store import RoomSnapshot, SqliteRoomStore

pytestmark = pytest.mark.timeout(30)

ROOM = "room"
VERSION = (0, 17, 5)
IDENTITY_QUAT = 0xE0080200
ROCKET = "\U0001f680"  # 4 bytes in UTF-8


# ------------------------------------------------------------------ helpers


def make_room(room_id: str = ROOM, now: float = 0.0, **settings: object) -> Room:
    return Room(room_id, RoomSettings(**settings), now)  # type: ignore[arg-type]


def body(seq: int, x: int = 0) -> bytes:
    """A visible pose body with a head block; ``x`` makes bodies distinguishable."""
    return encode_pose_body(
        PoseBody(
            pose_seq=seq,
            flags=FLAG_HEAD_VALID,
            encoding_flags=0x1F,
            head=PlacedRotation(x, 100, -100, IDENTITY_QUAT),
        )
    )


def stealth_body(seq: int) -> bytes:
    return encode_pose_body(PoseBody(pose_seq=seq, flags=FLAG_STEALTH, encoding_flags=0x1F))


def pose13(x: int, y: int = 0, z: int = 0, rot: int = IDENTITY_QUAT, seq: int = 0) -> bytes:
    """The 13 object pose bytes as they arrive inside a MSG_OBJECT_POSE."""
    return split_object_pose(encode(ObjectPose(PROTOCOL_VERSION, "x", 1, seq, x, y, z, rot)))[3]


def msgs(unicasts: list) -> list[tuple[tuple[bytes, ...], object]]:
    return [(tuple(ids), decode(payload)) for ids, payload in unicasts]


def sets(unicasts: list) -> list[tuple[frozenset[bytes], object]]:
    """Like msgs, with recipients as a set (their order is not a contract); no duplicates."""
    out = []
    for ids, payload in unicasts:
        assert len(set(ids)) == len(ids), f"duplicate recipient in {ids}"
        out.append((frozenset(ids), decode(payload)))
    return out


def mapping(*entries: tuple[int, bool, str]) -> DeviceIdMapping:
    return DeviceIdMapping(VERSION, tuple(MappingEntry(*e) for e in entries))


def rpc(device: str, targets: tuple[int, ...] = (), sender_no: int = 999) -> Rpc:
    return Rpc(sender_no, device, targets, "Fire", '["1","2"]')


def room_pose(room: Room, now: float) -> RoomPose:
    msg = decode(room.build_room_pose(now))
    assert isinstance(msg, RoomPose)
    return msg


def pose_entries(room: Room, now: float) -> list[tuple[int, float, bytes]]:
    return [
        (e.client_no, e.pose_time, encode_pose_body(e.body)) for e in room_pose(room, now).clients
    ]


# --------------------------------------------------------- join sequences (§4)


def test_hello_new_member_gets_mapping_full_nv_and_object_snapshot_only_to_joiner() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_global_var_set(b"a", "A", "mode", "race", 0.0)
    room.on_client_var_set(b"a", "A", 1, "hp", "10", 0.0)
    room.on_client_var_set(b"b", "B", 2, "team", "red", 0.0)
    room.flush_nv(0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    room.on_ownership_request(b"a", "A", 3, 6, 0.0)  # other op: created unowned
    # B departs (times out) but its number and variables stay mapped.
    room.on_hello(b"a", "A", False, 5.5)
    room.sweep(6.0)
    assert "B" not in room.members and room.devices["B"].client_no == 2
    room.broadcast_mapping(6.0)

    out = msgs(room.on_hello(b"c", "C", False, 6.1))

    # §4 row 1; the full snapshot goes to the joiner only (W7 allows it).
    assert out == [
        ((b"c",), mapping((1, False, "A"), (3, False, "C"))),
        ((b"c",), GlobalVarSync((VarEntry("mode", "race", 1),))),
        (
            (b"c",),
            ClientVarSync(
                (
                    ClientVars(1, (VarEntry("hp", "10", 1),)),
                    ClientVars(2, (VarEntry("team", "red", 2),)),
                    ClientVars(3, ()),
                )
            ),
        ),
        ((b"c",), OwnershipChanged(5, 1, 0)),
        ((b"c",), OwnershipChanged(6, 0, 0)),
    ]
    assert room.mapping_dirty


def test_hello_in_a_room_without_globals_sends_no_global_sync() -> None:
    room = make_room()
    out = msgs(room.on_hello(b"a", "A", False, 0.0))
    assert out == [
        ((b"a",), mapping((1, False, "A"))),
        ((b"a",), ClientVarSync((ClientVars(1, ()),))),
    ]


def test_mapping_broadcast_goes_to_all_members_leading_edge_then_throttled() -> None:
    room = make_room()
    assert not room.mapping_due(0.0)  # no members: nothing to send
    room.on_hello(b"a", "A", False, 0.0)
    assert room.mapping_due(0.0)  # first change after a quiet period: at once
    assert msgs(room.broadcast_mapping(0.0)) == [((b"a",), mapping((1, False, "A")))]
    assert not room.mapping_dirty

    room.on_hello(b"b", "B", True, 0.1)
    assert not room.mapping_due(0.1)
    assert not room.mapping_due(0.49)
    assert room.mapping_due(0.5)
    assert sets(room.broadcast_mapping(0.5)) == [
        (frozenset({b"a", b"b"}), mapping((1, False, "A"), (2, True, "B")))
    ]


def test_mapping_bursts_collapse_to_at_most_two_per_second() -> None:
    room = make_room()
    sent_at: list[float] = []
    last_content = None
    for step in range(150):  # 3 s of 20 ms loop turns
        now = step * 0.02
        if step < 100 and step % 3 == 0:  # a join every 60 ms for 2 s
            room.on_hello(b"id%d" % step, f"dev{step}", False, now)
        if room.mapping_due(now):
            out = msgs(room.broadcast_mapping(now))
            sent_at.append(now)
            last_content = out[0][1]
    assert sent_at[0] == 0.0  # leading edge
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert all(g >= 0.5 - 1e-9 for g in gaps), gaps
    assert len(sent_at) <= 1 + 2 * 2  # leading edge + at most 2/s over the 2 s burst
    # The final broadcast carries the complete list, in assignment order.
    assert isinstance(last_content, DeviceIdMapping)
    assert [e.device_id for e in last_content.mappings] == [f"dev{s}" for s in range(0, 100, 3)]


def test_reconnect_with_new_control_identity_resends_mapping_and_nv_to_new_identity() -> None:
    room = make_room()
    room.on_hello(b"a1", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_global_var_set(b"a1", "A", "g", "1", 0.0)
    room.flush_nv(0.0)
    room.on_ownership_request(b"a1", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    room.broadcast_mapping(0.0)

    out = msgs(room.on_hello(b"a2", "A", False, 1.0))

    # §4 row 2: no object snapshot, the member already had a control identity.
    assert out == [
        ((b"a2",), mapping((1, False, "A"), (2, False, "B"))),
        ((b"a2",), GlobalVarSync((VarEntry("g", "1", 1),))),
        ((b"a2",), ClientVarSync((ClientVars(1, ()), ClientVars(2, ())))),
    ]
    assert room.mapping_dirty
    assert room.devices["A"].client_no == 1
    # The old identity is no longer addressed.
    ((recipients, _),) = room.on_rpc(b"b", rpc("B"), 1.1)
    assert set(recipients) == {b"a2", b"b"}


def test_hello_after_pose_only_membership_also_sends_object_snapshot() -> None:
    room = make_room()
    room.on_hello(b"b", "B", False, 0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 9, 0.0)
    room.on_client_pose(b"xa", "A", 0, body(1), 0.1)
    assert room.members["A"].control_identity is None

    out = msgs(room.on_hello(b"a", "A", False, 0.2))

    assert out == [
        ((b"a",), mapping((1, False, "B"), (2, False, "A"))),
        ((b"a",), ClientVarSync((ClientVars(1, ()), ClientVars(2, ())))),
        ((b"a",), OwnershipChanged(9, 1, 0)),
    ]


@pytest.mark.parametrize("before, after", [(True, False), (False, True)])
def test_reconnect_hello_reply_carries_the_hellos_own_stealth_flag(
    before: bool, after: bool
) -> None:
    room = make_room()
    room.on_hello(b"a1", "A", before, 0.0)
    out = msgs(room.on_hello(b"a2", "A", after, 1.0))
    assert out[0] == ((b"a2",), mapping((1, after, "A")))


def test_hello_with_same_identity_is_a_refresh_only() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.broadcast_mapping(0.0)

    assert room.on_hello(b"a", "A", False, 3.0) == []
    assert not room.mapping_dirty
    room.sweep(7.0)  # 4 s after the refresh: still alive
    assert "A" in room.members
    room.sweep(8.01)
    assert "A" not in room.members


def test_hello_with_same_identity_and_stealth_change_marks_mapping_dirty() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.broadcast_mapping(0.0)

    assert room.on_hello(b"a", "A", True, 1.0) == []
    assert room.mapping_dirty
    assert msgs(room.broadcast_mapping(1.0)) == [((b"a",), mapping((1, True, "A")))]


def test_stealth_members_are_in_the_mapping_but_never_in_room_pose() -> None:
    room = make_room()
    room.on_hello(b"v", "V", False, 0.0)
    room.on_client_pose(b"xv", "V", FLAG_HEAD_VALID, body(1, x=11), 0.0)
    room.on_hello(b"s", "S", True, 0.0)
    room.on_client_pose(b"xs2", "S2", FLAG_STEALTH, stealth_body(1), 0.0)  # older Unity builds

    assert room.mapping_payload() == encode(
        mapping((1, False, "V"), (2, True, "S"), (3, True, "S2"))
    )
    assert [e[0] for e in pose_entries(room, 0.0)] == [1]

    # A stealth hello marks the room pose dirty (§4): due again at the next
    # tick (a gap of 1/rate, give or take a tick's jitter: over half of it).
    room.on_hello(b"s", "S", True, 0.04)
    assert not room.room_pose_due(0.04)
    assert room.room_pose_due(0.1)
    assert [e[0] for e in pose_entries(room, 0.1)] == [1]

    # The most recent pose decides: S2 turning visible appears.
    room.on_client_pose(b"xs2", "S2", FLAG_HEAD_VALID, body(2, x=22), 0.2)
    assert [e[0] for e in pose_entries(room, 0.2)] == [1, 3]
    assert room.mapping_payload() == encode(
        mapping((1, False, "V"), (2, True, "S"), (3, False, "S2"))
    )


def test_stealth_hello_stealth_member_pose_body_is_not_broadcast() -> None:
    room = make_room()
    room.on_client_pose(b"xa", "A", FLAG_HEAD_VALID, body(1, x=5), 0.0)
    room.on_hello(b"a", "A", True, 0.1)  # the hello decides now: stealth
    msg = room_pose(room, 0.2)
    assert msg.clients == ()
    assert body(1, x=5) not in room.build_room_pose(0.3)


# --------------------------------------------------------- client numbers (§2)


def test_client_numbers_start_at_one_in_arrival_order_for_every_kind_of_first_message() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_client_pose(b"xb", "B", 0, body(0), 0.1)
    room.on_rpc(b"c", rpc("C"), 0.2)
    room.on_global_var_set(b"d", "D", "g", "v", 0.3)
    room.on_client_var_set(b"e", "E", 1, "k", "v", 0.4)
    room.on_client_var_clear(b"f", "F", 0.5)
    room.on_ownership_request(b"g", "G", OWNERSHIP_OP_REQUEST, 3, 0.6)
    # Object poses need membership (not W5): no number for a stranger.
    room.on_object_pose("H", 3, 0, pose13(1), 0.7)

    assert {d: dev.client_no for d, dev in room.devices.items()} == {
        "A": 1,
        "B": 2,
        "C": 3,
        "D": 4,
        "E": 5,
        "F": 6,
        "G": 7,
    }
    entries = decode(room.mapping_payload()).mappings  # type: ignore[union-attr]
    assert [(e.client_no, e.device_id) for e in entries] == [
        (1, "A"),
        (2, "B"),
        (3, "C"),
        (4, "D"),
        (5, "E"),
        (6, "F"),
        (7, "G"),
    ]


def test_number_is_stable_across_timeout_and_a_returning_member_goes_last_in_room_pose() -> None:
    room = make_room()
    room.on_client_pose(b"xa", "A", 0, body(1, x=1), 0.0)
    room.on_client_pose(b"xb", "B", 0, body(1, x=2), 0.0)
    room.on_client_pose(b"xc", "C", 0, body(1, x=3), 0.0)
    room.on_client_pose(b"xb", "B", 0, body(2, x=2), 4.0)
    room.on_client_pose(b"xc", "C", 0, body(2, x=3), 4.0)
    room.sweep(5.5)
    assert list(room.members) == ["B", "C"]
    assert [e[0] for e in pose_entries(room, 5.5)] == [2, 3]

    room.on_client_pose(b"xa2", "A", 0, body(7, x=1), 6.0)

    assert room.members["A"].client_no == 1
    assert pose_entries(room, 6.0) == [
        (2, 4.0, body(2, x=2)),
        (3, 4.0, body(2, x=3)),
        (1, 6.0, body(7, x=1)),
    ]
    # The mapping stays in assignment order.
    entries = decode(room.mapping_payload()).mappings  # type: ignore[union-attr]
    assert [e.client_no for e in entries] == [1, 2, 3]


def test_numbers_are_not_reused_while_the_counter_has_room() -> None:
    room = make_room(device_id_expiry_time=10.0)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_hello(b"b", "B", False, 5.5)
    room.sweep(6.0)
    room.on_hello(b"b", "B", False, 19.0)
    room.sweep(20.0)  # A unseen for 20 s > 10 s: its number is gone
    assert "A" not in room.devices and 1 not in room.numbers

    room.on_hello(b"d", "D", False, 20.0)

    assert room.devices["D"].client_no == 3


def test_after_65535_assignments_a_new_device_takes_an_expired_number_without_its_body() -> None:
    room = make_room(device_id_expiry_time=10.0)
    a_body = body(1, x=1111)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_client_pose(b"xa", "A", FLAG_HEAD_VALID, a_body, 0.0)
    room.on_client_var_set(b"a", "A", 1, "hp", "3", 0.0)
    room.flush_nv(0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.next_client_no = MAX_CLIENT_NO + 1  # the counter is exhausted
    room.on_hello(b"b", "B", False, 5.5)
    room.sweep(6.0)  # A times out
    room.on_client_pose(b"xb", "B", FLAG_HEAD_VALID, body(1, x=2), 19.0)
    room.sweep(20.0)  # A's device expires
    assert "A" not in room.devices

    out = msgs(room.on_hello(b"d", "D", False, 20.0))

    assert room.devices["D"].client_no == 1
    # D does not inherit A's variables ...
    assert ((b"d",), ClientVarSync((ClientVars(2, ()), ClientVars(1, ())))) in out
    # ... nor A's body: client 1 has no pose until D sends one.
    for now in (20.0, 20.1):
        payload = room.build_room_pose(now)
        assert a_body not in payload
        assert [e.client_no for e in decode(payload).clients] == [2]  # type: ignore[union-attr]
    room.on_client_pose(b"xd", "D", FLAG_HEAD_VALID, body(1, x=4), 20.2)
    assert pose_entries(room, 20.3) == [(2, 19.0, body(1, x=2)), (1, 20.2, body(1, x=4))]


def test_no_free_number_means_the_device_cannot_join() -> None:
    room = make_room()
    room.numbers = {no: f"d{no}" for no in range(1, MAX_CLIENT_NO + 1)}
    room.next_client_no = MAX_CLIENT_NO + 1

    assert room.on_hello(b"z", "Z", False, 0.0) == []  # W13: logged, not joined
    assert "Z" not in room.members and "Z" not in room.devices


def test_two_rooms_with_the_same_client_numbers_never_exchange_bodies() -> None:
    one, two = make_room("one"), make_room("two")
    one.on_client_pose(b"x1", "A", 0, body(1, x=100), 0.0)
    two.on_client_pose(b"x2", "Z", 0, body(1, x=200), 0.0)

    p1, p2 = room_pose(one, 0.1), room_pose(two, 0.1)

    assert p1.room_id == "one" and p2.room_id == "two"
    assert [(e.client_no, encode_pose_body(e.body)) for e in p1.clients] == [(1, body(1, x=100))]
    assert [(e.client_no, encode_pose_body(e.body)) for e in p2.clients] == [(1, body(1, x=200))]


# ------------------------------------------------------------ timeouts (§6)


def test_timeout_removes_member_releases_its_objects_and_keeps_number_and_variables() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_client_pose(b"xa", "A", 0, body(1), 0.0)
    room.on_client_var_set(b"a", "A", 1, "hp", "7", 0.0)
    room.flush_nv(0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 7, 0.0)
    room.on_object_pose("A", 7, 1, pose13(5), 0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 8, 0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 9, 0.0)
    room.build_room_pose(0.0)
    room.build_room_objects(0.0)
    room.broadcast_mapping(0.0)
    room.on_hello(b"b", "B", False, 4.0)

    assert room.sweep(5.0) == []  # exactly client_timeout: not yet
    out = msgs(room.sweep(5.01))

    assert out == [((b"b",), OwnershipChanged(7, 0, 1)), ((b"b",), OwnershipChanged(8, 0, 1))]
    assert "A" not in room.members
    assert room.objects[7].owner == 0 and room.objects[7].pose_bytes == pose13(5)
    assert room.objects[9].owner == 2
    assert room.mapping_dirty and room.pose_dirty and room.objects_dirty
    assert msgs(room.broadcast_mapping(5.01)) == [((b"b",), mapping((2, False, "B")))]
    assert room_pose(room, 5.01).clients == ()
    # Number, mapping and variables are kept (§6 "on removal").
    assert room.devices["A"].client_no == 1
    assert room.rest_get_client_vars("A") == {"clientNo": 1, "variables": {"hp": "7"}}


def test_object_poses_do_not_keep_a_member_alive() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 7, 0.0)
    for i in range(49):
        room.on_object_pose("A", 7, i, pose13(i), 0.1 * (i + 1))
    room.sweep(5.01)
    assert "A" not in room.members


def test_device_expiry_deletes_number_and_client_variables() -> None:
    room = make_room(device_id_expiry_time=100.0)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_client_var_set(b"a", "A", 1, "hp", "1", 0.0)
    room.flush_nv(0.0)
    room.sweep(6.0)
    assert "A" not in room.members and "B" not in room.members

    room.sweep(100.0)  # unseen for exactly the expiry: kept
    room.sweep(150.0, expire_devices=False)  # not a device sweep turn
    assert room.devices["A"].client_no == 1

    room.sweep(150.0)

    assert room.devices == {} and room.numbers == {} and room.client_vars == {}
    assert ("device_expire", ROOM, "A") in room.changes
    assert room.rest_get_client_vars("A") == {"clientNo": None, "variables": {}}
    # A returning device is a new device: the counter moves on.
    room.on_hello(b"a", "A", False, 151.0)
    assert room.devices["A"].client_no == 3


def test_empty_room_expiry_countdown() -> None:
    room = make_room(empty_room_expiry_time=100.0)
    assert not room.expired(100.0)
    assert room.expired(100.01)  # never had a member: empty since creation

    room = make_room(empty_room_expiry_time=100.0)
    room.on_hello(b"a", "A", False, 10.0)
    assert not room.expired(500.0)  # a member cancels the countdown
    room.sweep(16.0)
    assert not room.members
    assert not room.expired(116.0)
    assert room.expired(116.01)


# ------------------------------------------------------------------ RPC (§9)


def _rpc_room() -> Room:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)  # 1
    room.on_hello(b"s", "S", True, 0.0)  # 2, stealth
    room.on_client_pose(b"xp", "P", 0, body(1), 0.0)  # 3, no control identity
    room.on_hello(b"b", "B", False, 0.0)  # 4
    return room


def test_broadcast_rpc_reaches_every_member_with_a_control_identity_including_sender() -> None:
    room = _rpc_room()
    out = sets(room.on_rpc(b"a", rpc("A", sender_no=999), 1.0))
    assert out == [(frozenset({b"a", b"s", b"b"}), Rpc(1, "A", (), "Fire", '["1","2"]'))]


def test_targeted_rpc_dedupes_ignores_unknown_numbers_and_skips_unlisted_sender() -> None:
    room = _rpc_room()
    out = sets(room.on_rpc(b"a", rpc("A", targets=(4, 4, 99, 2)), 1.0))
    assert out == [(frozenset({b"b", b"s"}), Rpc(1, "A", (4, 4, 99, 2), "Fire", '["1","2"]'))]

    out = sets(room.on_rpc(b"a", rpc("A", targets=(1,)), 1.0))
    assert out == [(frozenset({b"a"}), Rpc(1, "A", (1,), "Fire", '["1","2"]'))]


def test_targeted_rpc_to_members_without_control_identity_sends_nothing() -> None:
    room = _rpc_room()
    assert room.on_rpc(b"a", rpc("A", targets=(3, 77)), 1.0) == []


def test_rpc_from_unknown_device_registers_a_visible_member_and_uses_its_number() -> None:
    room = _rpc_room()
    out = sets(room.on_rpc(b"n", rpc("N", sender_no=1), 1.0))
    assert out == [(frozenset({b"a", b"s", b"b", b"n"}), Rpc(5, "N", (), "Fire", '["1","2"]'))]
    member = room.members["N"]
    assert (member.client_no, member.stealth, member.control_identity) == (5, False, b"n")
    assert room.mapping_dirty


# ------------------------------------------------------ network variables (§10)


def _nv_room(**settings: object) -> Room:
    room = make_room(**settings)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    return room


def test_names_and_values_are_truncated_in_characters() -> None:
    room = _nv_room()
    room.on_global_var_set(b"a", "A", "n" * 70, "v" * 1100, 0.0)
    room.on_client_var_set(b"a", "A", 2, "é" * 65, "ü" * 1025, 0.0)
    out = sets(room.flush_nv(0.0))
    assert out == [
        (frozenset({b"a", b"b"}), GlobalVarSync((VarEntry("n" * 64, "v" * 1024, 1),))),
        (
            frozenset({b"a", b"b"}),
            ClientVarSync((ClientVars(2, (VarEntry("é" * 64, "ü" * 1024, 1),)),)),
        ),
    ]


def test_101st_global_is_refused_while_updates_of_existing_ones_apply() -> None:
    room = _nv_room()
    for i in range(100):
        room.on_global_var_set(b"a", "A", f"g{i}", "0", 0.0)
    room.flush_nv(0.0)
    assert len(room.globals) == 100

    room.on_global_var_set(b"a", "A", "g100", "new", 1.0)
    room.on_global_var_set(b"b", "B", "g0", "changed", 1.0)
    out = msgs(room.flush_nv(1.0))

    assert [m for _, m in out] == [GlobalVarSync((VarEntry("g0", "changed", 2),))]
    assert "g100" not in room.globals and len(room.globals) == 100
    assert room.counters.nv_writes_refused == 1


def test_global_limit_counts_names_pending_in_the_flush_window() -> None:
    room = _nv_room(max_global_vars=2)
    room.on_global_var_set(b"a", "A", "x", "1", 0.0)
    room.flush_nv(0.0)
    room.on_global_var_set(b"a", "A", "y", "1", 0.01)
    room.on_global_var_set(b"a", "A", "z", "1", 0.02)  # would be the 3rd name
    room.on_global_var_set(b"a", "A", "y", "2", 0.03)  # pending name: still fine
    room.flush_nv(0.05)
    assert {n: v.value for n, v in room.globals.items()} == {"x": "1", "y": "2"}


def test_100_client_variables_per_target_device() -> None:
    room = _nv_room()
    for i in range(100):
        room.on_client_var_set(b"b", "B", 1, f"c{i}", "0", 0.0)
    room.flush_nv(0.0)

    room.on_client_var_set(b"b", "B", 1, "c100", "x", 1.0)  # 101st for A: refused
    room.on_client_var_set(b"b", "B", 1, "c5", "x", 1.0)  # update: applies
    room.on_client_var_set(b"b", "B", 2, "c100", "x", 1.0)  # other device: own budget
    out = msgs(room.flush_nv(1.0))

    assert len(room.client_vars["A"]) == 100 and "c100" not in room.client_vars["A"]
    assert room.client_vars["A"]["c5"].value == "x"
    assert room.client_vars["B"]["c100"].value == "x"
    ((_, sync),) = out
    assert isinstance(sync, ClientVarSync)
    assert [c.client_no for c in sync.clients] == [1, 2]
    assert len(sync.clients[0].variables) == 100


def test_rest_globals_and_buffered_live_globals_together_never_exceed_the_limit() -> None:
    room = _nv_room()
    for i in range(99):
        room.on_global_var_set(b"a", "A", f"g{i}", "0", 0.0)
    room.flush_nv(0.0)
    room.on_global_var_set(b"a", "A", "live", "v", 0.01)  # buffered: 100th name
    try:
        room.rest_set_globals({"rest": "v"})  # would be the 101st
    except NvLimitError:
        pass
    room.flush_nv(0.05)
    assert len(room.globals) <= 100


def test_rest_client_vars_and_buffered_live_writes_together_never_exceed_the_limit() -> None:
    room = _nv_room()
    for i in range(99):
        room.on_client_var_set(b"a", "A", 1, f"c{i}", "0", 0.0)
    room.flush_nv(0.0)
    room.on_client_var_set(b"b", "B", 1, "live", "v", 0.01)  # buffered: 100th name
    try:
        room.rest_set_client_vars("A", {"rest": "v"}, 0.02)  # would be the 101st
    except NvLimitError:
        pass
    room.flush_nv(0.05)
    assert len(room.client_vars["A"]) <= 100


def test_empty_name_is_ignored_but_the_sender_is_registered() -> None:
    room = _nv_room()
    assert room.on_global_var_set(b"e", "E", "", "v", 0.0) == []
    assert room.on_client_var_set(b"f", "F", 1, "", "v", 0.0) == []
    assert room.members["E"].client_no == 3 and room.members["F"].client_no == 4
    assert not room.pending_globals and not room.pending_client
    assert room.flush_nv(0.1) == []


def test_name_of_64_four_byte_characters_is_refused_and_later_syncs_still_encode() -> None:
    room = _nv_room()
    too_long = ROCKET * 64  # 64 characters, 256 bytes: cannot be a str8
    fits = ROCKET * 63 + "abc"  # 66 characters -> truncated to 64 = 253 bytes
    room.on_global_var_set(b"a", "A", too_long, "v", 0.0)
    room.on_client_var_set(b"a", "A", 2, too_long, "v", 0.0)
    room.on_global_var_set(b"a", "A", fits, "v", 0.0)
    out = msgs(room.flush_nv(0.0))

    assert [m for _, m in out] == [GlobalVarSync((VarEntry(ROCKET * 63 + "a", "v", 1),))]
    assert too_long not in room.globals and room.client_vars.get("B", {}) == {}
    assert room.counters.nv_writes_refused == 2
    # A joiner's full snapshot and later deltas still encode.
    joined = msgs(room.on_hello(b"c", "C", False, 1.0))
    assert [type(m) for _, m in joined] == [DeviceIdMapping, GlobalVarSync, ClientVarSync]
    room.on_client_var_set(b"c", "C", 2, "ok", "1", 1.0)
    assert [type(m) for _, m in msgs(room.flush_nv(1.0))] == [ClientVarSync]


def test_writes_within_a_flush_window_are_latest_wins_per_key() -> None:
    room = _nv_room()
    room.on_global_var_set(b"a", "A", "g", "1", 0.0)
    room.on_global_var_set(b"b", "B", "g", "2", 0.01)
    room.on_client_var_set(b"a", "A", 1, "k", "x", 0.02)
    room.on_client_var_set(b"b", "B", 1, "k", "y", 0.03)
    assert msgs(room.flush_nv(0.05)) == [
        ((b"a", b"b"), GlobalVarSync((VarEntry("g", "2", 2),))),
        ((b"a", b"b"), ClientVarSync((ClientVars(1, (VarEntry("k", "y", 2),)),))),
    ]


def test_globals_are_applied_before_client_variables_in_first_write_order() -> None:
    room = _nv_room()
    room.on_client_var_set(b"a", "A", 2, "k", "x", 0.0)
    room.on_global_var_set(b"a", "A", "b", "1", 0.01)
    room.on_global_var_set(b"a", "A", "a", "1", 0.02)
    room.on_global_var_set(b"a", "A", "b", "2", 0.03)
    out = msgs(room.flush_nv(0.05))
    assert [m for _, m in out] == [
        GlobalVarSync((VarEntry("b", "2", 1), VarEntry("a", "1", 1))),
        ClientVarSync((ClientVars(2, (VarEntry("k", "x", 1),)),)),
    ]
    assert room.globals["b"].seq < room.globals["a"].seq < room.client_vars["B"]["k"].seq


def test_no_op_writes_send_nothing() -> None:
    room = _nv_room()
    room.on_global_var_set(b"a", "A", "g", "1", 0.0)
    room.on_client_var_set(b"a", "A", 1, "k", "x", 0.0)
    room.flush_nv(0.0)
    seq = room.write_seq

    room.on_global_var_set(b"b", "B", "g", "1", 1.0)
    room.on_client_var_set(b"b", "B", 1, "k", "x", 1.0)
    assert room.flush_nv(1.0) == []
    assert room.globals["g"].last_writer == 1 and room.write_seq == seq


def test_global_sync_carries_only_the_changed_globals() -> None:
    room = _nv_room()
    room.on_global_var_set(b"a", "A", "g1", "1", 0.0)
    room.on_global_var_set(b"a", "A", "g2", "1", 0.0)
    room.flush_nv(0.0)
    room.on_global_var_set(b"b", "B", "g2", "2", 1.0)
    room.on_global_var_set(b"b", "B", "g1", "1", 1.0)  # no-op
    assert [m for _, m in msgs(room.flush_nv(1.0))] == [GlobalVarSync((VarEntry("g2", "2", 2),))]


def test_client_sync_carries_the_complete_set_of_each_changed_client_only() -> None:
    room = _nv_room()
    room.on_client_var_set(b"a", "A", 1, "x", "1", 0.0)
    room.on_client_var_set(b"a", "A", 1, "y", "1", 0.0)
    room.on_client_var_set(b"a", "A", 2, "z", "1", 0.0)
    room.flush_nv(0.0)
    room.on_client_var_set(b"b", "B", 1, "y", "2", 1.0)
    assert [m for _, m in msgs(room.flush_nv(1.0))] == [
        ClientVarSync((ClientVars(1, (VarEntry("x", "1", 1), VarEntry("y", "2", 2))),))
    ]


def test_client_variable_for_an_unmapped_target_is_dropped() -> None:
    room = _nv_room()
    assert room.on_client_var_set(b"a", "A", 99, "k", "v", 0.0) == []
    assert room.on_client_var_set(b"a", "A", 0, "k", "v", 0.0) == []
    assert room.flush_nv(0.0) == []
    assert room.client_vars == {} and room.counters.nv_writes_refused == 2


def test_client_variable_for_a_departed_but_mapped_target_applies() -> None:
    room = _nv_room()
    room.on_hello(b"a", "A", False, 4.0)
    room.sweep(5.5)  # B times out, number 2 stays mapped
    room.on_client_var_set(b"a", "A", 2, "k", "v", 6.0)
    assert msgs(room.flush_nv(6.0)) == [
        ((b"a",), ClientVarSync((ClientVars(2, (VarEntry("k", "v", 1),)),)))
    ]
    assert room.client_vars["B"]["k"].value == "v"


def test_client_var_clear_deletes_vars_and_buffered_writes_and_always_syncs_an_empty_list() -> None:
    room = _nv_room()
    room.on_client_var_set(b"a", "A", 1, "k", "v", 0.0)
    room.flush_nv(0.0)
    room.on_client_var_set(b"b", "B", 1, "late", "v", 0.01)  # buffered, target A
    room.on_client_var_set(b"b", "B", 2, "mine", "v", 0.01)  # buffered, target B

    out = sets(room.on_client_var_clear(b"a", "A", 0.02))

    assert out == [(frozenset({b"a", b"b"}), ClientVarSync((ClientVars(1, ()),)))]
    assert "A" not in room.client_vars
    assert [m for _, m in msgs(room.flush_nv(0.05))] == [
        ClientVarSync((ClientVars(2, (VarEntry("mine", "v", 2),)),))
    ]
    # Clearing with nothing stored still tells the room.
    assert sets(room.on_client_var_clear(b"a", "A", 1.0)) == [
        (frozenset({b"a", b"b"}), ClientVarSync((ClientVars(1, ()),)))
    ]


def test_nv_flush_due_honours_the_interval_and_only_with_pending_writes() -> None:
    room = _nv_room()
    assert not room.nv_flush_due(0.0)  # nothing pending
    room.on_global_var_set(b"a", "A", "g", "1", 0.0)
    assert room.nv_flush_due(0.0)  # leading edge
    room.flush_nv(0.0)
    room.on_global_var_set(b"a", "A", "g", "2", 0.01)
    assert not room.nv_flush_due(0.049)
    assert room.next_nv_flush_at() == pytest.approx(0.05)
    assert room.nv_flush_due(0.05)


# ------------------------------------------------------------ ownership (§11)


def _owner_room() -> Room:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_client_pose(b"xc", "C", 0, body(1), 0.0)  # member without control identity
    return room


def test_ownership_request_is_always_granted_and_announced_to_the_room() -> None:
    room = _owner_room()
    everyone = frozenset({b"a", b"b"})
    assert sets(room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)) == [
        (everyone, OwnershipChanged(5, 1, 0))
    ]
    # Take-over.
    assert sets(room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 5, 0.1)) == [
        (everyone, OwnershipChanged(5, 2, 1))
    ]
    # Already the owner: granted again.
    assert sets(room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 5, 0.2)) == [
        (everyone, OwnershipChanged(5, 2, 2))
    ]
    assert room.objects[5].owner == 2


def test_release_by_owner_and_rejection_of_others() -> None:
    room = _owner_room()
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)

    assert msgs(room.on_ownership_request(b"b", "B", OWNERSHIP_OP_RELEASE, 5, 0.1)) == [
        ((b"b",), OwnershipRejected(5, 1, OWNERSHIP_REJECT_NOT_OWNER))
    ]
    assert room.objects[5].owner == 1
    assert sets(room.on_ownership_request(b"a", "A", OWNERSHIP_OP_RELEASE, 5, 0.2)) == [
        (frozenset({b"a", b"b"}), OwnershipChanged(5, 0, 1))
    ]
    # Releasing an unowned (or unknown) object is refused too.
    assert msgs(room.on_ownership_request(b"a", "A", OWNERSHIP_OP_RELEASE, 5, 0.3)) == [
        ((b"a",), OwnershipRejected(5, 0, OWNERSHIP_REJECT_NOT_OWNER))
    ]
    assert msgs(room.on_ownership_request(b"a", "A", OWNERSHIP_OP_RELEASE, 6, 0.3)) == [
        ((b"a",), OwnershipRejected(6, 0, OWNERSHIP_REJECT_NOT_OWNER))
    ]
    assert room.objects[6].owner == 0


def test_other_operations_create_the_object_silently_and_object_id_0_is_ignored() -> None:
    room = _owner_room()
    for op in (0, 3, 255):
        assert room.on_ownership_request(b"a", "A", op, 40 + op, 0.0) == []
        assert room.objects[40 + op].owner == 0
    assert room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 0, 0.0) == []
    assert 0 not in room.objects


def test_ownership_change_marks_objects_dirty_only_when_the_object_has_a_pose() -> None:
    room = _owner_room()
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    assert not room.objects_dirty
    room.on_object_pose("A", 5, 1, pose13(1), 0.0)
    room.build_room_objects(0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 5, 1.0)
    assert room.objects_dirty


# ----------------------------------------------------------- object poses (§11)


def test_object_pose_from_the_owner_is_stored_verbatim_and_listed() -> None:
    room = _owner_room()
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    pose = pose13(-8_388_608, 8_388_607, 3, rot=0x12345678)
    assert room.on_object_pose("A", 5, 42, pose, 1.0) == []
    assert room.objects[5].pose_bytes == pose

    assert decode(room.build_room_objects(1.25)) == RoomObjects(
        PROTOCOL_VERSION,
        1.25,
        (RoomObject(5, 1, 42, 1.0, -8_388_608, 8_388_607, 3, 0x12345678),),
    )


def test_object_pose_from_a_non_owner_or_for_an_unowned_object_is_ignored() -> None:
    room = _owner_room()
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    room.on_object_pose("A", 5, 1, pose13(1), 0.0)
    assert room.on_object_pose("B", 5, 2, pose13(2), 0.1) == []
    assert (room.objects[5].pose_seq, room.objects[5].pose_bytes) == (1, pose13(1))

    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_RELEASE, 5, 0.2)
    assert room.on_object_pose("A", 5, 3, pose13(3), 0.3) == []
    assert room.objects[5].pose_bytes == pose13(1) and room.objects[5].owner == 0


def test_object_pose_for_an_unknown_object_is_claimed_by_the_member() -> None:
    room = _owner_room()
    out = sets(room.on_object_pose("C", 9, 4, pose13(9), 0.5))
    assert out == [(frozenset({b"a", b"b"}), OwnershipChanged(9, 3, 0))]
    assert room.objects[9].owner == 3 and room.objects[9].pose_bytes == pose13(9)
    assert room.objects_dirty


def test_object_pose_from_a_non_member_is_refused_without_a_number() -> None:
    # Not W5: object poses need membership (room.py docstring; BEHAVIOR §16 W5
    # "SHOULD require membership").
    room = _owner_room()
    assert room.on_object_pose("X", 9, 1, pose13(1), 0.0) == []
    assert "X" not in room.devices and 9 not in room.objects
    assert room.on_object_pose("A", 0, 1, pose13(1), 0.0) == []  # objectId 0
    assert 0 not in room.objects
    assert room.counters.object_poses_refused == 2


def test_room_objects_list_only_objects_with_a_pose_and_nothing_without() -> None:
    room = _owner_room()
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 1, 0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 2, 0.0)
    assert room.build_room_objects(0.0) is None  # objects, but none with a pose

    room.on_object_pose("B", 2, 7, pose13(2), 0.1)
    msg = decode(room.build_room_objects(0.2))
    assert isinstance(msg, RoomObjects)
    assert [(o.object_id, o.owner_client_no, o.pose_seq) for o in msg.objects] == [(2, 2, 7)]
    # Released objects keep their pose and stay listed, unowned.
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_RELEASE, 2, 0.3)
    msg = decode(room.build_room_objects(0.4))
    assert [(o.object_id, o.owner_client_no) for o in msg.objects] == [(2, 0)]  # type: ignore[union-attr]


def test_room_objects_due_rules() -> None:
    room = _owner_room()
    assert not room.room_objects_due(0.0)  # no objects at all
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 1, 0.0)
    room.on_object_pose("A", 1, 1, pose13(1), 1.0)
    assert room.room_objects_due(1.0)
    room.build_room_objects(1.0)
    room.on_object_pose("A", 1, 2, pose13(2), 1.04)
    assert not room.room_objects_due(1.04)  # dirty, but well within 1/rate
    assert room.room_objects_due(1.1)
    room.build_room_objects(1.1)
    assert not room.room_objects_due(3.09)  # clean: idle interval
    assert room.room_objects_due(3.1)
    # Runs whether or not the room has members.
    room.build_room_objects(3.1)
    room.sweep(10.0)
    assert not room.members
    assert room.room_objects_due(10.0)  # the release made it dirty
    assert decode(room.build_room_objects(10.0)).objects[0].owner_client_no == 0  # type: ignore[union-attr]


# -------------------------------------------------------------- room pose (§8)


def test_room_pose_due_rules() -> None:
    room = make_room()
    assert not room.room_pose_due(0.0)  # dirty since creation but no members
    assert not room.room_pose_due(100.0)
    room.on_client_pose(b"xa", "A", 0, body(1), 0.0)
    assert room.room_pose_due(0.0)
    room.build_room_pose(0.0)
    room.on_client_pose(b"xa", "A", 0, body(2), 0.05)
    assert not room.room_pose_due(0.04)  # well within 1/rate
    assert room.room_pose_due(0.095)  # a tick a hair early still finds it due
    room.build_room_pose(0.1)
    assert not room.room_pose_due(0.5)  # clean
    assert not room.room_pose_due(2.09)
    assert room.room_pose_due(2.1)  # idle interval


def test_room_pose_content_broadcast_time_and_pose_receive_time() -> None:
    room = make_room()
    room.on_client_pose(b"xa", "A", 0, body(1, x=1), 1.0)
    room.on_client_pose(b"xb", "B", 0, body(1, x=2), 1.2)
    room.on_hello(b"a", "A", False, 1.5)  # W15: the relay keeps the pose receive time
    msg = room_pose(room, 1.7)
    assert (msg.protocol_version, msg.room_id, msg.broadcast_time) == (8, ROOM, 1.7)
    assert [(e.client_no, e.pose_time, encode_pose_body(e.body)) for e in msg.clients] == [
        (1, 1.0, body(1, x=1)),
        (2, 1.2, body(1, x=2)),
    ]


def test_room_pose_with_members_but_no_visible_pose_is_sent_empty() -> None:
    room = make_room()
    room.on_hello(b"a", "A", False, 0.0)  # visible, no pose yet
    room.on_hello(b"s", "S", True, 0.0)
    assert room.room_pose_due(0.0)
    assert room_pose(room, 0.0).clients == ()


def test_member_removal_marks_room_pose_dirty_and_drops_its_entry() -> None:
    room = make_room()
    room.on_client_pose(b"xa", "A", 0, body(1, x=1), 0.0)
    room.on_client_pose(b"xb", "B", 0, body(1, x=2), 0.0)
    room.build_room_pose(0.0)
    room.on_client_pose(b"xb", "B", 0, body(2, x=2), 4.0)
    room.build_room_pose(4.0)
    room.sweep(5.5)
    assert room.room_pose_due(5.5)
    assert [e[0] for e in pose_entries(room, 5.5)] == [2]


# ------------------------------------------------------------ durable changes


def test_durable_changes_are_recorded_for_devices_variables_and_objects() -> None:
    room = make_room(device_id_expiry_time=10.0)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_global_var_set(b"a", "A", "g", "v", 0.0)
    room.on_client_var_set(b"a", "A", 1, "k", "x", 0.0)
    room.flush_nv(0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    room.on_client_var_clear(b"a", "A", 0.0)
    room.sweep(6.0)
    room.sweep(20.0)

    changes = room.changes
    expected_in_order = [
        ("device", ROOM, "A", 1, 2),
        ("global", ROOM, "g", "v", 1, 1),
        ("client_var", ROOM, "A", "k", "x", 1, 2),
        ("object", ROOM, 5, 1),
        ("client_var_del", ROOM, "A", None),
        ("object", ROOM, 5, 0),  # released on timeout
        ("device_expire", ROOM, "A"),
    ]
    # A subsequence: each expected record appears after the previous one.
    at = 0
    for record in expected_in_order:
        assert record in changes[at:], (record, changes)
        at = changes.index(record, at) + 1


def test_no_op_and_refused_writes_record_nothing() -> None:
    room = _nv_room(max_global_vars=1)
    room.on_global_var_set(b"a", "A", "g", "v", 0.0)
    room.flush_nv(0.0)
    before = list(room.changes)
    room.on_global_var_set(b"a", "A", "g", "v", 1.0)  # no-op
    room.on_global_var_set(b"a", "A", "h", "v", 1.0)  # over the limit
    room.on_client_var_clear(b"a", "A", 1.0)  # nothing stored to delete
    room.flush_nv(1.0)
    assert room.changes == before


# ----------------------------------------------------------------- restore


def _populated_room() -> Room:
    room = make_room(device_id_expiry_time=10.0)
    room.on_hello(b"a", "A", False, 0.0)
    room.on_hello(b"b", "B", False, 0.0)
    room.on_hello(b"c", "C", False, 0.0)
    room.on_global_var_set(b"a", "A", "mode", "race", 0.0)
    room.on_global_var_set(b"b", "B", "lap", "3", 0.0)
    room.on_client_var_set(b"a", "A", 2, "hp", "9", 0.0)
    room.on_client_var_set(b"b", "B", 1, "team", "red", 0.0)
    room.flush_nv(0.0)
    room.on_ownership_request(b"a", "A", OWNERSHIP_OP_REQUEST, 5, 0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_REQUEST, 6, 0.0)
    room.on_ownership_request(b"b", "B", OWNERSHIP_OP_RELEASE, 6, 0.0)
    room.on_global_var_set(b"a", "A", "mode", "battle", 1.0)
    room.flush_nv(1.0)
    # C leaves and expires; A and B stay.
    for now in (5.5, 11.0, 16.5, 19.0):
        room.on_hello(b"a", "A", False, now)
        room.on_hello(b"b", "B", False, now)
        room.sweep(now + 0.5)
    room.sweep(20.0)
    assert "C" not in room.devices
    return room


def _durable(room: Room) -> dict:
    return {
        "devices": {d: dev.client_no for d, dev in room.devices.items()},
        "numbers": dict(room.numbers),
        "next": room.next_client_no,
        "write_seq": room.write_seq,
        "globals": {n: (v.value, v.last_writer, v.seq) for n, v in room.globals.items()},
        "client_vars": {
            d: {n: (v.value, v.last_writer, v.seq) for n, v in vs.items()}
            for d, vs in room.client_vars.items()
            if vs
        },
        "objects": {i: o.owner for i, o in room.objects.items()},
    }


def _snapshot_of(room: Room) -> RoomSnapshot:
    state = _durable(room)
    return RoomSnapshot(
        room_id=room.room_id,
        devices=state["devices"],
        next_client_no=state["next"],
        write_seq=state["write_seq"],
        globals=state["globals"],
        client_vars=state["client_vars"],
        objects=state["objects"],
        members={d: (m.control_identity, m.stealth) for d, m in room.members.items()},
    )


def _members(room: Room) -> dict[str, tuple[int, bytes | None, bool]]:
    return {d: (m.client_no, m.control_identity, m.stealth) for d, m in room.members.items()}


def _check_restored(original: Room, restored: Room) -> None:
    assert _durable(restored) == _durable(original)
    # Members come back as they were, without poses (clients resend them).
    assert _members(restored) == _members(original)
    assert all(m.pose_body is None for m in restored.members.values())
    assert room_pose(restored, 100.0).clients == ()
    # Known devices get their numbers back; new devices continue the counter.
    restored.on_hello(b"b2", "B", False, 100.0)
    assert restored.members["B"].client_no == 2
    restored.on_hello(b"n", "N", False, 100.0)
    assert restored.members["N"].client_no == 4
    # The write sequence continues instead of restarting.
    restored.on_global_var_set(b"n", "N", "lap", "4", 100.0)
    restored.flush_nv(100.0)
    assert restored.globals["lap"].seq == original.write_seq + 1


def test_restore_round_trip_through_a_room_snapshot() -> None:
    original = _populated_room()
    restored = make_room(now=100.0, device_id_expiry_time=10.0)
    restored.restore(_snapshot_of(original), 100.0)
    _check_restored(original, restored)


def test_restore_round_trip_through_the_journal_of_room_changes(tmp_path: Path) -> None:
    original = _populated_room()
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        store.apply(original.changes)
        snapshot = store.load_room(ROOM)
    assert snapshot is not None
    restored = make_room(now=100.0, device_id_expiry_time=10.0)
    restored.restore(snapshot, 100.0)
    _check_restored(original, restored)


def test_restored_joiner_receives_the_restored_state() -> None:
    original = _populated_room()
    restored = make_room(now=100.0)
    restored.restore(_snapshot_of(original), 100.0)
    out = msgs(restored.on_hello(b"n", "N", False, 100.0))
    assert out[0] == ((b"n",), mapping((1, False, "A"), (2, False, "B"), (4, False, "N")))
    kinds = [type(m) for _, m in out]
    assert kinds == [
        DeviceIdMapping,
        GlobalVarSync,
        ClientVarSync,
        OwnershipChanged,
        OwnershipChanged,
    ]
    globals_sync = out[1][1]
    assert {(v.name, v.value, v.last_writer_client_no) for v in globals_sync.variables} == {  # type: ignore[union-attr]
        ("mode", "battle", 1),
        ("lap", "3", 2),
    }
    clients = {c.client_no: c.variables for c in out[2][1].clients}  # type: ignore[union-attr]
    assert clients == {1: (VarEntry("team", "red", 2),), 2: (VarEntry("hp", "9", 1),), 4: ()}
    assert [m for _, m in out[3:]] == [OwnershipChanged(5, 1, 0), OwnershipChanged(6, 0, 0)]
