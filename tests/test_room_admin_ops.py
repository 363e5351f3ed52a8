"""Shard admin ops for the operator console (shard_worker/shard.py, room_view.py):
rooms_list, room_detail, evict (Room.evict_member) and must_exist. Pure state,
no sockets; the HTTP side is tests/test_console_api.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import shard_worker.room_view as room_view
from relay.protocol.messages import DeviceIdMapping, Lane, OwnershipChanged
from tests.test_shard_state import cset, gset, hello, new_state, obj_pose, of_type, own, pose

pytestmark = pytest.mark.timeout(30)

CTRL = Lane.CONTROL
XFM = Lane.TRANSFORM


def test_rooms_list_searches_any_case_and_returns_the_first_in_id_order() -> None:
    state = new_state()
    for i, room in enumerate(["Alpha", "alphabet", "beta", "gamma", "ALPS"]):
        state.handle(CTRL, b"c%d" % i, room.encode(), hello(f"dev-{i}"), 0.0)
    reply, out = state.admin({"op": "rooms_list", "search": "alp", "limit": 2}, 1.0)
    assert out == []
    assert reply["outcome"] == "ok"
    assert reply["body"]["total"] == 3
    assert [r["roomId"] for r in reply["body"]["rooms"]] == ["ALPS", "Alpha"]
    assert reply["body"]["rooms"][0] == {
        "roomId": "ALPS", "members": 1, "visible": 1, "stealth": 0, "objects": 0, "globals": 0,
    }
    everything = state.admin({"op": "rooms_list", "search": "", "limit": 100}, 1.0)[0]["body"]
    assert everything["total"] == 5 and len(everything["rooms"]) == 5
    for bad in ({"limit": "2"}, {"limit": -1}, {"limit": True}, {"limit": 2, "search": 5}, {}):
        assert state.admin({"op": "rooms_list", **bad}, 1.0)[0]["outcome"] == "bad_request", bad


def test_room_detail_shows_members_variables_and_objects_and_creates_nothing() -> None:
    state = new_state()
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    state.handle(XFM, b"ta", b"r", pose("A"), 0.5)
    state.handle(CTRL, b"b", b"r", hello("B", stealth=True), 0.5)
    state.handle(CTRL, b"b", b"r", gset("B", "scene", "forest"), 0.6)
    state.handle(CTRL, b"a", b"r", cset("A", 1, "hp", "10"), 0.6)
    state.tick(0.7)  # NV flush
    state.handle(CTRL, b"a", b"r", own("A", 5), 0.8)
    state.handle(XFM, b"ta", b"r", obj_pose("A", 5), 0.9)
    state.admin({"op": "client_vars_set", "room": "r", "device": "Q", "variables": {"seat": "7"}}, 1.0)

    reply, out = state.admin({"op": "room_detail", "room": "r"}, 2.0)

    assert reply["outcome"] == "ok" and out == []
    body = reply["body"]
    assert body["roomId"] == "r"
    assert (body["members"], body["visible"], body["stealth"], body["objects"], body["globals"]) == (2, 1, 1, 1, 1)
    assert body["devices"] == 2 and body["emptyForS"] is None
    assert body["memberList"] == [
        {"clientNo": 1, "deviceId": "A", "stealth": False, "poseAgeS": 1.5, "lastSeenAgeS": 1.2, "controlConnected": True},
        {"clientNo": 2, "deviceId": "B", "stealth": True, "poseAgeS": None, "lastSeenAgeS": 1.4, "controlConnected": True},
    ]
    assert body["globalVariables"] == [{"name": "scene", "value": "forest", "lastWriterClientNo": 2}]
    assert body["clientVariables"] == [
        {"deviceId": "A", "clientNo": 1, "variables": [{"name": "hp", "value": "10", "lastWriterClientNo": 1}]},
        # REST-written for a device that has no number yet (queued, BEHAVIOR §12).
        {"deviceId": "Q", "clientNo": None, "variables": [{"name": "seat", "value": "7", "lastWriterClientNo": 0}]},
    ]
    assert body["clientVariableDevices"] == 2
    assert body["objectList"] == [{"objectId": 5, "ownerClientNo": 1, "poseAgeS": 1.1}]

    missing = state.admin({"op": "room_detail", "room": "ghost"}, 2.0)
    assert missing == ({"outcome": "not_found", "detail": "Room 'ghost' not found"}, [])
    assert "ghost" not in state.rooms


def test_room_detail_lists_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_view, "DETAIL_LIST_CAP", 2)
    state = new_state()
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    for object_id in (3, 1, 2):
        state.handle(CTRL, b"a", b"r", own("A", object_id), 0.1)
    body = state.admin({"op": "room_detail", "room": "r"}, 1.0)[0]["body"]
    assert body["objects"] == 3
    assert [o["objectId"] for o in body["objectList"]] == [1, 2]


def test_evict_is_a_timeout_of_one_member() -> None:
    state = new_state()
    for device, ident in (("A", b"a"), ("B", b"b"), ("C", b"c")):
        state.handle(CTRL, ident, b"r", hello(device), 0.0)
    state.handle(CTRL, b"a", b"r", own("A", 5), 0.1)
    state.handle(CTRL, b"a", b"r", cset("A", 1, "hp", "3"), 0.1)
    state.tick(0.2)
    state.drain_changes()

    reply, out = state.admin({"op": "evict", "room": "r", "device": "A"}, 1.0)

    assert reply == {"outcome": "ok", "body": {"roomId": "r", "deviceId": "A", "clientNo": 1}}
    # Its object is released to the remaining members...
    assert (b"r", frozenset({b"b", b"c"}), OwnershipChanged(5, 0, 1)) in of_type(out, OwnershipChanged)
    # ...and they get a mapping without it in the same turn (leading edge).
    mappings = of_type(out, DeviceIdMapping)
    assert mappings and [e.device_id for e in mappings[-1][2].mappings] == ["B", "C"]
    assert mappings[-1][1] == frozenset({b"b", b"c"})
    room = state.rooms["r"]
    assert "A" not in room.members
    # Like a timeout, the number and the client variables stay (BEHAVIOR §6).
    assert room.devices["A"].client_no == 1 and room.client_vars["A"]["hp"].value == "3"
    assert ("member_remove", "r", "A") in state.drain_changes()
    assert room.pose_dirty

    again = state.admin({"op": "evict", "room": "r", "device": "A"}, 1.1)[0]
    assert again == {"outcome": "not_found", "detail": "Device 'A' is not a member of room 'r'"}
    nowhere = state.admin({"op": "evict", "room": "ghost", "device": "A"}, 1.1)[0]
    assert nowhere["outcome"] == "not_found" and "ghost" not in state.rooms
    assert state.admin({"op": "evict", "room": "r"}, 1.1)[0]["outcome"] == "bad_request"


def test_evicting_the_last_member_starts_the_empty_room_countdown() -> None:
    state = new_state(empty_room_expiry_time=10.0)
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    state.admin({"op": "evict", "room": "r", "device": "A"}, 1.0)
    assert state.rooms["r"].empty_since == 1.0
    state.tick(5.0)
    assert "r" in state.rooms
    state.tick(12.0)
    assert "r" not in state.rooms


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "globals_set", "variables": {"k": "v"}},
        {"op": "client_vars_set", "device": "D", "variables": {"k": "v"}},
        {"op": "client_vars_delete", "device": "D", "name": "k"},
    ],
)
def test_must_exist_never_creates_a_room(request_: dict[str, Any]) -> None:
    state = new_state()
    reply, out = state.admin({**request_, "room": "ghost", "must_exist": True}, 0.0)
    assert reply == {"outcome": "not_found", "detail": "Room 'ghost' not found"} and out == []
    assert state.rooms == {}
    # Without the flag, the reference's rule (REST writes create the room) holds.
    assert state.admin({**request_, "room": "ghost"}, 0.0)[0]["outcome"] == "ok"
