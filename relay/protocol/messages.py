"""Message types of NetSync protocol version 8 as plain immutable values.

Field names are the snake_case forms of the names used in PROTOCOL.md and in
the golden vectors. Integers are raw wire values (quantised positions, packed
quaternions), never floats: the relay relays poses, it does not interpret them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

PROTOCOL_VERSION = 8
MAX_VIRTUALS = 50


class MsgType(IntEnum):
    CLIENT_TRANSFORM = 1  # obsolete
    ROOM_TRANSFORM = 2  # obsolete
    RPC = 3
    RPC_SERVER = 4  # reserved
    RPC_CLIENT = 5  # reserved
    DEVICE_ID_MAPPING = 6
    GLOBAL_VAR_SET = 7
    GLOBAL_VAR_SYNC = 8
    CLIENT_VAR_SET = 9
    CLIENT_VAR_SYNC = 10
    CLIENT_POSE = 11
    ROOM_POSE = 12
    OBJECT_POSE = 13
    ROOM_OBJECTS = 14
    OBJECT_OWNERSHIP_REQUEST = 15
    OBJECT_OWNERSHIP_CHANGED = 16
    OBJECT_OWNERSHIP_REJECTED = 17
    CLIENT_VAR_CLEAR = 18
    CLIENT_HELLO = 19


class Lane(IntEnum):
    CONTROL = 0
    TRANSFORM = 1


# Types a client may send, per lane (PROTOCOL §3, "Lane enforcement").
CONTROL_LANE_TYPES = frozenset(
    {
        MsgType.CLIENT_HELLO,
        MsgType.RPC,
        MsgType.GLOBAL_VAR_SET,
        MsgType.CLIENT_VAR_SET,
        MsgType.CLIENT_VAR_CLEAR,
        MsgType.OBJECT_OWNERSHIP_REQUEST,
    }
)
TRANSFORM_LANE_TYPES = frozenset({MsgType.CLIENT_POSE, MsgType.OBJECT_POSE})

# Pose flags (PROTOCOL §5.1).
FLAG_STEALTH = 0x01
FLAG_PHYSICAL_VALID = 0x02
FLAG_HEAD_VALID = 0x04
FLAG_RIGHT_VALID = 0x08
FLAG_LEFT_VALID = 0x10
FLAG_VIRTUALS_VALID = 0x20
FLAG_MOVING_FLOOR_LOCAL = 0x40
ENCODING_PHYSICAL_IS_DELTA = 0x10

HELLO_FLAG_STEALTH = 0x01

OWNERSHIP_OP_RELEASE = 1
OWNERSHIP_OP_REQUEST = 2
OWNERSHIP_REJECT_NOT_OWNER = 1

OBJECT_TOPIC_SUFFIX = b"\x00obj"


# ---------------------------------------------------------------- pose body


@dataclass(frozen=True, slots=True)
class Physical:
    x: int
    y: int
    z: int
    yaw: int


@dataclass(frozen=True, slots=True)
class PlacedRotation:
    """Head (i24 position) or hand/virtual (i16 offset) block with a quat32."""

    x: int
    y: int
    z: int
    rot: int


@dataclass(frozen=True, slots=True)
class PoseBody:
    pose_seq: int
    flags: int
    encoding_flags: int
    physical: Physical | None = None
    head: PlacedRotation | None = None
    right_hand: PlacedRotation | None = None
    left_hand: PlacedRotation | None = None
    virtuals: tuple[PlacedRotation, ...] = ()


# ------------------------------------------------------ client -> server


@dataclass(frozen=True, slots=True)
class ClientHello:
    protocol_version: int
    flags: int
    device_id: str

    @property
    def is_stealth(self) -> bool:
        return bool(self.flags & HELLO_FLAG_STEALTH)


@dataclass(frozen=True, slots=True)
class Rpc:
    sender_client_no: int
    device_id: str
    target_client_nos: tuple[int, ...]
    function_name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class GlobalVarSet:
    sender_client_no: int
    device_id: str
    variable_name: str
    variable_value: str


@dataclass(frozen=True, slots=True)
class ClientVarSet:
    sender_client_no: int
    device_id: str
    target_client_no: int
    variable_name: str
    variable_value: str


@dataclass(frozen=True, slots=True)
class ClientVarClear:
    sender_client_no: int
    device_id: str


@dataclass(frozen=True, slots=True)
class ClientPose:
    protocol_version: int
    device_id: str
    body: PoseBody


@dataclass(frozen=True, slots=True)
class ObjectPose:
    protocol_version: int
    device_id: str
    object_id: int
    pose_seq: int
    x: int
    y: int
    z: int
    rot: int


@dataclass(frozen=True, slots=True)
class OwnershipRequest:
    protocol_version: int
    device_id: str
    operation_type: int
    object_id: int


# ------------------------------------------------------ server -> client


@dataclass(frozen=True, slots=True)
class MappingEntry:
    client_no: int
    is_stealth: bool
    device_id: str


@dataclass(frozen=True, slots=True)
class DeviceIdMapping:
    server_version: tuple[int, int, int]
    mappings: tuple[MappingEntry, ...]


@dataclass(frozen=True, slots=True)
class VarEntry:
    name: str
    value: str
    last_writer_client_no: int


@dataclass(frozen=True, slots=True)
class GlobalVarSync:
    variables: tuple[VarEntry, ...]


@dataclass(frozen=True, slots=True)
class ClientVars:
    client_no: int
    variables: tuple[VarEntry, ...]


@dataclass(frozen=True, slots=True)
class ClientVarSync:
    clients: tuple[ClientVars, ...]


@dataclass(frozen=True, slots=True)
class RoomPoseEntry:
    client_no: int
    pose_time: float
    body: PoseBody


@dataclass(frozen=True, slots=True)
class RoomPose:
    protocol_version: int
    room_id: str
    broadcast_time: float
    clients: tuple[RoomPoseEntry, ...]


@dataclass(frozen=True, slots=True)
class RoomObject:
    object_id: int
    owner_client_no: int
    pose_seq: int
    pose_time: float
    x: int
    y: int
    z: int
    rot: int


@dataclass(frozen=True, slots=True)
class RoomObjects:
    protocol_version: int
    broadcast_time: float
    objects: tuple[RoomObject, ...]


@dataclass(frozen=True, slots=True)
class OwnershipChanged:
    object_id: int
    new_owner_client_no: int
    previous_owner_client_no: int


@dataclass(frozen=True, slots=True)
class OwnershipRejected:
    object_id: int
    current_owner_client_no: int
    reason_code: int


Message = (
    ClientHello
    | Rpc
    | GlobalVarSet
    | ClientVarSet
    | ClientVarClear
    | ClientPose
    | ObjectPose
    | OwnershipRequest
    | DeviceIdMapping
    | GlobalVarSync
    | ClientVarSync
    | RoomPose
    | RoomObjects
    | OwnershipChanged
    | OwnershipRejected
)
