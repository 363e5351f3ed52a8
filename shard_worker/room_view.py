"""Read-only views of rooms for operators (room list and room page of the console).

Kept out of ``room.py`` on purpose: the room is the protocol's state machine,
and what an operator wants to see of it changes for other reasons. Views only
read a room; they never change it. Times are ages in seconds from ``now``, the
shard's monotonic clock, which is the clock every room timestamp uses.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any

from shard_worker.room import Room, Var

__all__ = ["DETAIL_LIST_CAP", "list_rooms", "room_detail", "room_summary"]

# A room page lists at most this many members, objects and devices with
# client variables (each list says how many there are in all): a pathological
# room (10 000 objects) must not turn a 1 s poll into megabytes.
DETAIL_LIST_CAP = 1000


def room_summary(room: Room) -> dict[str, Any]:
    """One line of the room list."""
    stealth = sum(1 for m in room.members.values() if m.stealth)
    return {
        "roomId": room.room_id,
        "members": len(room.members),
        "visible": len(room.members) - stealth,
        "stealth": stealth,
        "objects": len(room.objects),
        "globals": len(room.globals),
    }


def list_rooms(rooms: Mapping[str, Room], search: str, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Rooms whose id contains ``search`` (case-insensitive): how many, and the
    first ``limit`` of them in room-id order (the order every shard uses, so the
    bridge can merge shards' answers into one page)."""
    needle = search.casefold()
    matching = [room_id for room_id in rooms if needle in room_id.casefold()]
    first = heapq.nsmallest(max(0, limit), matching)
    return len(matching), [room_summary(rooms[room_id]) for room_id in first]


def _age(now: float, at: float) -> float:
    return round(max(0.0, now - at), 3)


def _vars(variables: Mapping[str, Var]) -> list[dict[str, Any]]:
    return [
        {"name": name, "value": var.value, "lastWriterClientNo": var.last_writer}
        for name, var in variables.items()
    ]


def room_detail(
    room: Room, now: float, node_of: Callable[[bytes | None], str | None] | None = None
) -> dict[str, Any]:
    """Everything the room page shows: members, variables, objects.

    ``node_of`` names the node whose ingress holds a member's control
    connection (cluster mode: from the identity's node tag).
    """
    members = sorted(room.members.values(), key=lambda m: m.client_no)
    member_rows = [
        {
            "clientNo": m.client_no,
            "deviceId": m.device_id,
            "stealth": m.stealth,
            "poseAgeS": _age(now, m.pose_time) if m.pose_body is not None else None,
            "lastSeenAgeS": _age(now, m.last_update),
            "controlConnected": m.control_identity is not None,
            **({"node": node_of(m.control_identity)} if node_of is not None else {}),
        }
        for m in members[:DETAIL_LIST_CAP]
    ]
    with_vars = sorted(
        (device_id for device_id, variables in room.client_vars.items() if variables),
        key=lambda d: (room.devices[d].client_no if d in room.devices else 1 << 30, d),
    )
    client_rows = [
        {
            "deviceId": device_id,
            "clientNo": room.devices[device_id].client_no if device_id in room.devices else None,
            "variables": _vars(room.client_vars[device_id]),
        }
        for device_id in with_vars[:DETAIL_LIST_CAP]
    ]
    object_ids = sorted(room.objects)
    object_rows = [
        {
            "objectId": object_id,
            "ownerClientNo": room.objects[object_id].owner,
            "poseAgeS": (
                _age(now, room.objects[object_id].pose_time)
                if room.objects[object_id].pose_bytes is not None
                else None
            ),
        }
        for object_id in object_ids[:DETAIL_LIST_CAP]
    ]
    return {
        **room_summary(room),
        "devices": len(room.devices),
        "emptyForS": _age(now, room.empty_since) if room.empty_since is not None else None,
        "memberList": member_rows,
        "globalVariables": _vars(room.globals),
        "clientVariables": client_rows,
        "clientVariableDevices": len(with_vars),
        "objectList": object_rows,
    }
