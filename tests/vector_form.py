"""Conversion between message dataclasses and the golden vectors' JSON ``fields``.

The vectors use the camelCase names of PROTOCOL.md and plain JSON values (lists
for sequences, null for absent pose blocks). These helpers let the tests
compare decoded messages with vector records and build messages from them.
The relay never needs this rendering, so it lives with the tests and is not
installed (tests/test_packaging.py checks that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.protocol import errors as E
from relay.protocol.errors import ProtocolError
from relay.protocol.messages import (
    ClientHello,
    ClientPose,
    ClientVarClear,
    ClientVars,
    ClientVarSet,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSet,
    GlobalVarSync,
    MappingEntry,
    Message,
    MsgType,
    ObjectPose,
    OwnershipChanged,
    OwnershipRejected,
    OwnershipRequest,
    Physical,
    PlacedRotation,
    PoseBody,
    RoomObject,
    RoomObjects,
    RoomPose,
    RoomPoseEntry,
    Rpc,
    VarEntry,
)

__all__ = ["body_from_fields", "body_to_fields", "from_fields", "msg_type_of", "to_fields"]

Fields = dict[str, Any]


# ------------------------------------------------------------- pose bodies


def _placed_to(p: PlacedRotation | None) -> Fields | None:
    return None if p is None else {"x": p.x, "y": p.y, "z": p.z, "rot": p.rot}


def _placed_from(f: Fields | None) -> PlacedRotation | None:
    return None if f is None else PlacedRotation(f["x"], f["y"], f["z"], f["rot"])


def body_to_fields(b: PoseBody) -> Fields:
    return {
        "poseSeq": b.pose_seq,
        "flags": b.flags,
        "encodingFlags": b.encoding_flags,
        "physical": None
        if b.physical is None
        else {"x": b.physical.x, "y": b.physical.y, "z": b.physical.z, "yaw": b.physical.yaw},
        "head": _placed_to(b.head),
        "rightHand": _placed_to(b.right_hand),
        "leftHand": _placed_to(b.left_hand),
        "virtuals": [_placed_to(v) for v in b.virtuals],
    }


def body_from_fields(f: Fields) -> PoseBody:
    p = f.get("physical")
    return PoseBody(
        pose_seq=f["poseSeq"],
        flags=f["flags"],
        encoding_flags=f["encodingFlags"],
        physical=None if p is None else Physical(p["x"], p["y"], p["z"], p["yaw"]),
        head=_placed_from(f.get("head")),
        right_hand=_placed_from(f.get("rightHand")),
        left_hand=_placed_from(f.get("leftHand")),
        virtuals=tuple(_placed_from(v) for v in f.get("virtuals", ())),  # type: ignore[misc]
    )


def _vars_to(vs: tuple[VarEntry, ...]) -> list[Fields]:
    return [
        {"name": v.name, "value": v.value, "lastWriterClientNo": v.last_writer_client_no}
        for v in vs
    ]


def _vars_from(vs: list[Fields]) -> tuple[VarEntry, ...]:
    return tuple(VarEntry(v["name"], v["value"], v["lastWriterClientNo"]) for v in vs)


# ---------------------------------------------------------------- to_fields


def _to_rpc(m: Rpc) -> Fields:
    return {
        "senderClientNo": m.sender_client_no,
        "deviceId": m.device_id,
        "targetClientNos": list(m.target_client_nos),
        "functionName": m.function_name,
        "argumentsJson": m.arguments_json,
    }


def _to_mapping(m: DeviceIdMapping) -> Fields:
    return {
        "serverVersion": list(m.server_version),
        "mappings": [
            {"clientNo": e.client_no, "isStealthMode": e.is_stealth, "deviceId": e.device_id}
            for e in m.mappings
        ],
    }


def _to_global_set(m: GlobalVarSet) -> Fields:
    return {
        "senderClientNo": m.sender_client_no,
        "deviceId": m.device_id,
        "variableName": m.variable_name,
        "variableValue": m.variable_value,
    }


def _to_client_set(m: ClientVarSet) -> Fields:
    return {
        "senderClientNo": m.sender_client_no,
        "deviceId": m.device_id,
        "targetClientNo": m.target_client_no,
        "variableName": m.variable_name,
        "variableValue": m.variable_value,
    }


def _to_room_pose(m: RoomPose) -> Fields:
    return {
        "protocolVersion": m.protocol_version,
        "roomId": m.room_id,
        "broadcastTime": m.broadcast_time,
        "clients": [
            {"clientNo": c.client_no, "poseTime": c.pose_time, "body": body_to_fields(c.body)}
            for c in m.clients
        ],
    }


def _to_object_pose(m: ObjectPose) -> Fields:
    return {
        "protocolVersion": m.protocol_version,
        "deviceId": m.device_id,
        "objectId": m.object_id,
        "poseSeq": m.pose_seq,
        "x": m.x,
        "y": m.y,
        "z": m.z,
        "rot": m.rot,
    }


def _to_room_objects(m: RoomObjects) -> Fields:
    return {
        "protocolVersion": m.protocol_version,
        "broadcastTime": m.broadcast_time,
        "objects": [
            {
                "objectId": o.object_id,
                "ownerClientNo": o.owner_client_no,
                "poseSeq": o.pose_seq,
                "poseTime": o.pose_time,
                "x": o.x,
                "y": o.y,
                "z": o.z,
                "rot": o.rot,
            }
            for o in m.objects
        ],
    }


_TO: dict[type, Callable[[Any], Fields]] = {
    Rpc: _to_rpc,
    DeviceIdMapping: _to_mapping,
    GlobalVarSet: _to_global_set,
    GlobalVarSync: lambda m: {"variables": _vars_to(m.variables)},
    ClientVarSet: _to_client_set,
    ClientVarSync: lambda m: {
        "clients": [
            {"clientNo": c.client_no, "variables": _vars_to(c.variables)} for c in m.clients
        ]
    },
    ClientPose: lambda m: {
        "protocolVersion": m.protocol_version,
        "deviceId": m.device_id,
        "body": body_to_fields(m.body),
    },
    RoomPose: _to_room_pose,
    ObjectPose: _to_object_pose,
    RoomObjects: _to_room_objects,
    OwnershipRequest: lambda m: {
        "protocolVersion": m.protocol_version,
        "deviceId": m.device_id,
        "operationType": m.operation_type,
        "objectId": m.object_id,
    },
    OwnershipChanged: lambda m: {
        "objectId": m.object_id,
        "newOwnerClientNo": m.new_owner_client_no,
        "previousOwnerClientNo": m.previous_owner_client_no,
    },
    OwnershipRejected: lambda m: {
        "objectId": m.object_id,
        "currentOwnerClientNo": m.current_owner_client_no,
        "reasonCode": m.reason_code,
    },
    ClientVarClear: lambda m: {"senderClientNo": m.sender_client_no, "deviceId": m.device_id},
    ClientHello: lambda m: {
        "protocolVersion": m.protocol_version,
        "flags": m.flags,
        "deviceId": m.device_id,
    },
}

_TYPE_OF: dict[type, MsgType] = {
    Rpc: MsgType.RPC,
    DeviceIdMapping: MsgType.DEVICE_ID_MAPPING,
    GlobalVarSet: MsgType.GLOBAL_VAR_SET,
    GlobalVarSync: MsgType.GLOBAL_VAR_SYNC,
    ClientVarSet: MsgType.CLIENT_VAR_SET,
    ClientVarSync: MsgType.CLIENT_VAR_SYNC,
    ClientPose: MsgType.CLIENT_POSE,
    RoomPose: MsgType.ROOM_POSE,
    ObjectPose: MsgType.OBJECT_POSE,
    RoomObjects: MsgType.ROOM_OBJECTS,
    OwnershipRequest: MsgType.OBJECT_OWNERSHIP_REQUEST,
    OwnershipChanged: MsgType.OBJECT_OWNERSHIP_CHANGED,
    OwnershipRejected: MsgType.OBJECT_OWNERSHIP_REJECTED,
    ClientVarClear: MsgType.CLIENT_VAR_CLEAR,
    ClientHello: MsgType.CLIENT_HELLO,
}


def msg_type_of(msg: Message) -> MsgType:
    """Wire type id of a message dataclass."""
    try:
        return _TYPE_OF[type(msg)]
    except KeyError:
        raise ProtocolError(E.UNKNOWN_TYPE, f"not a message: {type(msg).__name__}") from None


def to_fields(msg: Message) -> Fields:
    """The vectors' ``fields`` dict for a message (JSON-compatible values only)."""
    fn = _TO.get(type(msg))
    if fn is None:
        raise ProtocolError(E.UNKNOWN_TYPE, f"not a message: {type(msg).__name__}")
    return fn(msg)


# -------------------------------------------------------------- from_fields


def _from_room_pose(f: Fields) -> RoomPose:
    return RoomPose(
        f["protocolVersion"],
        f["roomId"],
        f["broadcastTime"],
        tuple(
            RoomPoseEntry(c["clientNo"], c["poseTime"], body_from_fields(c["body"]))
            for c in f["clients"]
        ),
    )


def _from_room_objects(f: Fields) -> RoomObjects:
    return RoomObjects(
        f["protocolVersion"],
        f["broadcastTime"],
        tuple(
            RoomObject(
                o["objectId"],
                o["ownerClientNo"],
                o["poseSeq"],
                o["poseTime"],
                o["x"],
                o["y"],
                o["z"],
                o["rot"],
            )
            for o in f["objects"]
        ),
    )


_FROM: dict[int, Callable[[Fields], Message]] = {
    MsgType.RPC: lambda f: Rpc(
        f["senderClientNo"],
        f["deviceId"],
        tuple(f["targetClientNos"]),
        f["functionName"],
        f["argumentsJson"],
    ),
    MsgType.DEVICE_ID_MAPPING: lambda f: DeviceIdMapping(
        tuple(f["serverVersion"]),  # type: ignore[arg-type]
        tuple(
            MappingEntry(e["clientNo"], bool(e["isStealthMode"]), e["deviceId"])
            for e in f["mappings"]
        ),
    ),
    MsgType.GLOBAL_VAR_SET: lambda f: GlobalVarSet(
        f["senderClientNo"], f["deviceId"], f["variableName"], f["variableValue"]
    ),
    MsgType.GLOBAL_VAR_SYNC: lambda f: GlobalVarSync(_vars_from(f["variables"])),
    MsgType.CLIENT_VAR_SET: lambda f: ClientVarSet(
        f["senderClientNo"],
        f["deviceId"],
        f["targetClientNo"],
        f["variableName"],
        f["variableValue"],
    ),
    MsgType.CLIENT_VAR_SYNC: lambda f: ClientVarSync(
        tuple(ClientVars(c["clientNo"], _vars_from(c["variables"])) for c in f["clients"])
    ),
    MsgType.CLIENT_POSE: lambda f: ClientPose(
        f["protocolVersion"], f["deviceId"], body_from_fields(f["body"])
    ),
    MsgType.ROOM_POSE: _from_room_pose,
    MsgType.OBJECT_POSE: lambda f: ObjectPose(
        f["protocolVersion"],
        f["deviceId"],
        f["objectId"],
        f["poseSeq"],
        f["x"],
        f["y"],
        f["z"],
        f["rot"],
    ),
    MsgType.ROOM_OBJECTS: _from_room_objects,
    MsgType.OBJECT_OWNERSHIP_REQUEST: lambda f: OwnershipRequest(
        f["protocolVersion"], f["deviceId"], f["operationType"], f["objectId"]
    ),
    MsgType.OBJECT_OWNERSHIP_CHANGED: lambda f: OwnershipChanged(
        f["objectId"], f["newOwnerClientNo"], f["previousOwnerClientNo"]
    ),
    MsgType.OBJECT_OWNERSHIP_REJECTED: lambda f: OwnershipRejected(
        f["objectId"], f["currentOwnerClientNo"], f["reasonCode"]
    ),
    MsgType.CLIENT_VAR_CLEAR: lambda f: ClientVarClear(f["senderClientNo"], f["deviceId"]),
    MsgType.CLIENT_HELLO: lambda f: ClientHello(f["protocolVersion"], f["flags"], f["deviceId"]),
}


def from_fields(msg_type: int, fields: Fields) -> Message:
    """Build the message dataclass of ``msg_type`` from a vectors-style ``fields`` dict."""
    fn = _FROM.get(msg_type)
    if fn is None:
        raise ProtocolError(E.UNKNOWN_TYPE, f"no layout for type {msg_type}")
    try:
        return fn(fields)
    except (KeyError, TypeError) as exc:
        raise ProtocolError(E.INVALID_FIELD, f"fields for type {msg_type}: {exc!r}") from None
