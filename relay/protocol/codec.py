"""Strict structural codec for NetSync protocol v8 (PROTOCOL.md §5-§7).

``decode`` accepts the payload of any message type with a layout (3, 6..19,
both directions) and turns every malformation into ProtocolError. Strictness
follows the SHOULD rows of §7: string length prefixes running past the end,
bytes after a pose body and virtualCount > 50 are rejected, not tolerated.

Trailing bytes after messages that do not end in a pose body are ignored
(§7 "MAY ignore"; §6.10 says so explicitly for object poses): a later client
release may append fields, and the relay forwards only what it parsed.
MSG_CLIENT_POSE and MSG_ROOM_POSE end in pose bodies, whose end is the only
framing a receiver has, so extra bytes there mean a misframed body and are
rejected.

``encode`` is the exact inverse and refuses anything ``decode`` would reject,
so ``decode(encode(m)) == m`` holds for every message it accepts.

One file (~770 lines) on purpose: it is one job, the byte layouts of the 19
message types, and each type's decoder and encoder sit side by side with the
shared primitives (strings, pose bodies) they must agree on.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from typing import Any

from . import errors as E
from .errors import ProtocolError
from .messages import (
    CONTROL_LANE_TYPES,
    MAX_VIRTUALS,
    PROTOCOL_VERSION,
    TRANSFORM_LANE_TYPES,
    ClientHello,
    ClientPose,
    ClientVarClear,
    ClientVars,
    ClientVarSet,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSet,
    GlobalVarSync,
    Lane,
    MappingEntry,
    Message,
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

__all__ = [
    "check_room_frame",
    "decode",
    "decode_client_frames",
    "decode_client_payload",
    "decode_pose_body",
    "encode",
    "encode_pose_body",
]

_FLAG_PHYSICAL = 0x02
_FLAG_HEAD = 0x04
_FLAG_RIGHT = 0x08
_FLAG_LEFT = 0x10
_FLAG_MOVING_FLOOR = 0x40
_ENC_DELTA = 0x10

# i24 is read/written as (u16 low, i8 high): value = low + (high << 16). This
# keeps the whole head block in one precompiled struct call.
_BODY_HDR = struct.Struct("<HBB")
_PHYSICAL = struct.Struct("<4h")
_HEAD = struct.Struct("<HbHbHbI")
_REL = struct.Struct("<3hI")  # hand / virtual entry
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_ROOM_ENTRY = struct.Struct("<Hd")
_ROOM_TAIL = struct.Struct("<dH")
_OBJ_POSE = struct.Struct("<IHHbHbHbI")  # objectId, poseSeq, x, y, z, rot
_ROOM_OBJECT = struct.Struct("<IHHdHbHbHbI")
_MAPPING_HDR = struct.Struct("<BBBH")
_MAPPING_ENTRY = struct.Struct("<HB")
_U8X3 = struct.Struct("<BBB")
_OWNERSHIP_CHANGED = struct.Struct("<IHH")
_OWNERSHIP_REJECTED = struct.Struct("<IHB")
_TYPE_U16 = struct.Struct("<BH")
_TYPE_VER = struct.Struct("<BB")

_REL_SIZE = _REL.size


def _fast_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that skips its __init__.

    A frozen dataclass __init__ assigns each field through object.__setattr__,
    which dominates decode time for small control messages. Writing the slot
    descriptors directly builds an identical instance about twice as fast.
    Falls back to the class itself if it ever grows __post_init__, non-init
    fields or loses __slots__, so a change to messages.py degrades to the
    normal constructor instead of producing half-initialised instances.
    """
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(not f.init for f in fields):
        return cls
    setters = {}
    for i, f in enumerate(fields):
        descriptor = cls.__dict__.get(f.name)
        if type(descriptor).__name__ != "member_descriptor":
            return cls
        setters[f"_set{i}"] = descriptor.__set__
    names = [f.name for f in fields]
    lines = [f"def make({', '.join(names)}):", "    o = _new(_cls)"]
    lines += [f"    _set{i}(o, {name})" for i, name in enumerate(names)]
    lines.append("    return o")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec("\n".join(lines), namespace)  # same technique dataclasses uses for __init__
    make = namespace["make"]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    return make


_new_Rpc = _fast_constructor(Rpc)
_new_MappingEntry = _fast_constructor(MappingEntry)
_new_DeviceIdMapping = _fast_constructor(DeviceIdMapping)
_new_GlobalVarSet = _fast_constructor(GlobalVarSet)
_new_VarEntry = _fast_constructor(VarEntry)
_new_GlobalVarSync = _fast_constructor(GlobalVarSync)
_new_ClientVarSet = _fast_constructor(ClientVarSet)
_new_ClientVars = _fast_constructor(ClientVars)
_new_ClientVarSync = _fast_constructor(ClientVarSync)
_new_ClientPose = _fast_constructor(ClientPose)
_new_RoomPoseEntry = _fast_constructor(RoomPoseEntry)
_new_RoomPose = _fast_constructor(RoomPose)
_new_ObjectPose = _fast_constructor(ObjectPose)
_new_RoomObject = _fast_constructor(RoomObject)
_new_RoomObjects = _fast_constructor(RoomObjects)
_new_OwnershipRequest = _fast_constructor(OwnershipRequest)
_new_OwnershipChanged = _fast_constructor(OwnershipChanged)
_new_OwnershipRejected = _fast_constructor(OwnershipRejected)
_new_ClientVarClear = _fast_constructor(ClientVarClear)
_new_ClientHello = _fast_constructor(ClientHello)
_new_PoseBody = _fast_constructor(PoseBody)
_new_Physical = _fast_constructor(Physical)
_new_PlacedRotation = _fast_constructor(PlacedRotation)


def _truncated(need: int, offset: int) -> ProtocolError:
    return ProtocolError(E.TRUNCATED, f"need {need} bytes at offset {offset}")


# --------------------------------------------------------------- decoding


def _str8(d: bytes, o: int) -> tuple[str, int]:
    n = d[o]
    o += 1
    e = o + n
    if e > len(d):
        raise _truncated(n, o)
    return d[o:e].decode("utf-8"), e


def _str16(d: bytes, o: int) -> tuple[str, int]:
    (n,) = _U16.unpack_from(d, o)
    o += 2
    e = o + n
    if e > len(d):
        raise _truncated(n, o)
    return d[o:e].decode("utf-8"), e


def _check_version(v: int) -> None:
    if v != PROTOCOL_VERSION:
        raise ProtocolError(E.VERSION, f"protocol version {v}, expected {PROTOCOL_VERSION}")


def _read_body(d: bytes, o: int) -> tuple[PoseBody, int]:
    seq, flags, enc = _BODY_HDR.unpack_from(d, o)
    o += 4
    physical = head = right = left = None
    if flags & _FLAG_PHYSICAL:
        if not flags & _FLAG_MOVING_FLOOR and not enc & _ENC_DELTA:
            raise ProtocolError(
                E.PHYSICAL_WITHOUT_DELTA_FLAG,
                f"flags 0x{flags:02x}, encodingFlags 0x{enc:02x}",
            )
        physical = _new_Physical(*_PHYSICAL.unpack_from(d, o))
        o += 8
    if flags & _FLAG_HEAD:
        xl, xh, yl, yh, zl, zh, rot = _HEAD.unpack_from(d, o)
        head = _new_PlacedRotation(xl + (xh << 16), yl + (yh << 16), zl + (zh << 16), rot)
        o += 13
        if flags & _FLAG_RIGHT:
            right = _new_PlacedRotation(*_REL.unpack_from(d, o))
            o += _REL_SIZE
        if flags & _FLAG_LEFT:
            left = _new_PlacedRotation(*_REL.unpack_from(d, o))
            o += _REL_SIZE
    count = d[o]
    o += 1
    if count > MAX_VIRTUALS:
        raise ProtocolError(E.TOO_MANY_VIRTUALS, f"virtualCount {count} > {MAX_VIRTUALS}")
    virtuals: tuple[PlacedRotation, ...] = ()
    if count:
        e = o + count * _REL_SIZE
        if e > len(d):
            raise _truncated(count * _REL_SIZE, o)
        virtuals = tuple(_new_PlacedRotation(*v) for v in _REL.iter_unpack(d[o:e]))
        o = e
    return _new_PoseBody(seq, flags, enc, physical, head, right, left, virtuals), o


def _no_trailing(d: bytes, o: int) -> None:
    if o != len(d):
        raise ProtocolError(E.TRAILING_BYTES, f"{len(d) - o} trailing bytes")


# The client->server control decoders below inline their string reads: they run
# once per control message and function calls are a large share of their cost.


def _dec_rpc(d: bytes) -> Rpc:
    sender = d[1] | d[2] << 8
    n = d[3]
    o = 4 + n
    if o > len(d):
        raise _truncated(n, 4)
    device_id = d[4:o].decode()
    count = d[o]
    o += 1
    e = o + 2 * count
    if e > len(d):
        raise _truncated(2 * count, o)
    targets = struct.unpack_from(f"<{count}H", d, o) if count else ()
    n = d[e]
    o = e + 1 + n
    if o > len(d):
        raise _truncated(n, e + 1)
    function_name = d[e + 1 : o].decode()
    arguments, _ = _str16(d, o)
    return _new_Rpc(sender, device_id, targets, function_name, arguments)


def _dec_mapping(d: bytes) -> DeviceIdMapping:
    major, minor, patch, count = _MAPPING_HDR.unpack_from(d, 1)
    o = 6
    entries = []
    for _ in range(count):
        client_no, stealth = _MAPPING_ENTRY.unpack_from(d, o)
        device_id, o = _str8(d, o + 3)
        # §6.4: only 0x01 means stealth.
        entries.append(_new_MappingEntry(client_no, stealth == 1, device_id))
    return _new_DeviceIdMapping((major, minor, patch), tuple(entries))


def _dec_global_set(d: bytes) -> GlobalVarSet:
    sender = d[1] | d[2] << 8
    n = d[3]
    o = 4 + n
    if o > len(d):
        raise _truncated(n, 4)
    device_id = d[4:o].decode()
    name, o = _str8(d, o)
    value, _ = _str16(d, o)
    return _new_GlobalVarSet(sender, device_id, name, value)


def _read_vars(d: bytes, o: int, count: int) -> tuple[tuple[VarEntry, ...], int]:
    out = []
    for _ in range(count):
        name, o = _str8(d, o)
        value, o = _str16(d, o)
        (writer,) = _U16.unpack_from(d, o)
        o += 2
        out.append(_new_VarEntry(name, value, writer))
    return tuple(out), o


def _dec_global_sync(d: bytes) -> GlobalVarSync:
    (count,) = _U16.unpack_from(d, 1)
    variables, _ = _read_vars(d, 3, count)
    return _new_GlobalVarSync(variables)


def _dec_client_set(d: bytes) -> ClientVarSet:
    sender = d[1] | d[2] << 8
    n = d[3]
    o = 4 + n
    if o > len(d):
        raise _truncated(n, 4)
    device_id = d[4:o].decode()
    target = d[o] | d[o + 1] << 8
    name, o = _str8(d, o + 2)
    value, _ = _str16(d, o)
    return _new_ClientVarSet(sender, device_id, target, name, value)


def _dec_client_sync(d: bytes) -> ClientVarSync:
    (count,) = _U16.unpack_from(d, 1)
    o = 3
    clients = []
    for _ in range(count):
        client_no, var_count = struct.unpack_from("<HH", d, o)
        variables, o = _read_vars(d, o + 4, var_count)
        clients.append(_new_ClientVars(client_no, variables))
    return _new_ClientVarSync(tuple(clients))


def _dec_client_pose(d: bytes) -> ClientPose:
    _check_version(d[1])
    device_id, o = _str8(d, 2)
    body, o = _read_body(d, o)
    _no_trailing(d, o)
    return _new_ClientPose(PROTOCOL_VERSION, device_id, body)


def _dec_room_pose(d: bytes) -> RoomPose:
    _check_version(d[1])
    room_id, o = _str8(d, 2)
    broadcast_time, count = _ROOM_TAIL.unpack_from(d, o)
    o += 10
    clients = []
    for _ in range(count):
        client_no, pose_time = _ROOM_ENTRY.unpack_from(d, o)
        body, o = _read_body(d, o + 10)
        clients.append(_new_RoomPoseEntry(client_no, pose_time, body))
    _no_trailing(d, o)
    return _new_RoomPose(PROTOCOL_VERSION, room_id, broadcast_time, tuple(clients))


def _dec_object_pose(d: bytes) -> ObjectPose:
    _check_version(d[1])
    device_id, o = _str8(d, 2)
    object_id, seq, xl, xh, yl, yh, zl, zh, rot = _OBJ_POSE.unpack_from(d, o)
    return _new_ObjectPose(
        PROTOCOL_VERSION,
        device_id,
        object_id,
        seq,
        xl + (xh << 16),
        yl + (yh << 16),
        zl + (zh << 16),
        rot,
    )


def _dec_room_objects(d: bytes) -> RoomObjects:
    _check_version(d[1])
    broadcast_time, count = _ROOM_TAIL.unpack_from(d, 2)
    o = 12
    objects = []
    unpack = _ROOM_OBJECT.unpack_from
    for _ in range(count):
        oid, owner, seq, pose_time, xl, xh, yl, yh, zl, zh, rot = unpack(d, o)
        o += 29
        objects.append(
            _new_RoomObject(
                oid, owner, seq, pose_time, xl + (xh << 16), yl + (yh << 16), zl + (zh << 16), rot
            )
        )
    return _new_RoomObjects(PROTOCOL_VERSION, broadcast_time, tuple(objects))


def _dec_ownership_request(d: bytes) -> OwnershipRequest:
    if d[1] != PROTOCOL_VERSION:
        _check_version(d[1])
    n = d[2]
    o = 3 + n
    if o > len(d):
        raise _truncated(n, 3)
    device_id = d[3:o].decode()
    op = d[o]
    (object_id,) = _U32.unpack_from(d, o + 1)
    return _new_OwnershipRequest(PROTOCOL_VERSION, device_id, op, object_id)


def _dec_ownership_changed(d: bytes) -> OwnershipChanged:
    return _new_OwnershipChanged(*_OWNERSHIP_CHANGED.unpack_from(d, 1))


def _dec_ownership_rejected(d: bytes) -> OwnershipRejected:
    return _new_OwnershipRejected(*_OWNERSHIP_REJECTED.unpack_from(d, 1))


def _dec_client_var_clear(d: bytes) -> ClientVarClear:
    sender = d[1] | d[2] << 8
    n = d[3]
    e = 4 + n
    if e > len(d):
        raise _truncated(n, 4)
    return _new_ClientVarClear(sender, d[4:e].decode())


def _dec_hello(d: bytes) -> ClientHello:
    if d[1] != PROTOCOL_VERSION:
        _check_version(d[1])
    n = d[3]
    e = 4 + n
    if e > len(d):
        raise _truncated(n, 4)
    return _new_ClientHello(PROTOCOL_VERSION, d[2], d[4:e].decode())


_DECODERS: list[Callable[[bytes], Message] | None] = [None] * 256
_DECODERS[3] = _dec_rpc
_DECODERS[6] = _dec_mapping
_DECODERS[7] = _dec_global_set
_DECODERS[8] = _dec_global_sync
_DECODERS[9] = _dec_client_set
_DECODERS[10] = _dec_client_sync
_DECODERS[11] = _dec_client_pose
_DECODERS[12] = _dec_room_pose
_DECODERS[13] = _dec_object_pose
_DECODERS[14] = _dec_room_objects
_DECODERS[15] = _dec_ownership_request
_DECODERS[16] = _dec_ownership_changed
_DECODERS[17] = _dec_ownership_rejected
_DECODERS[18] = _dec_client_var_clear
_DECODERS[19] = _dec_hello


def decode(payload: bytes) -> Message:
    """Decode one payload frame of any type with a layout; raise ProtocolError otherwise."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    if not payload:
        raise _truncated(1, 0)
    fn = _DECODERS[payload[0]]
    if fn is None:
        raise ProtocolError(E.UNKNOWN_TYPE, f"no layout for type {payload[0]}")
    # Fixed-size reads are not bounds-checked one by one: struct.error and
    # IndexError both mean a field ran past the end of the frame.
    try:
        return fn(payload)
    except (struct.error, IndexError):
        raise ProtocolError(E.TRUNCATED, "a fixed-size field runs past the end") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(E.BAD_UTF8, str(exc)) from None


def decode_pose_body(body: bytes) -> PoseBody:
    """Decode a standalone POSE_BODY that must span exactly ``body``."""
    if type(body) is not bytes:
        body = bytes(body)
    try:
        result, o = _read_body(body, 0)
    except (struct.error, IndexError):
        raise ProtocolError(E.TRUNCATED, "pose body runs past the end") from None
    _no_trailing(body, o)
    return result


def check_room_frame(room: bytes) -> str:
    """Validate the room-id frame: UTF-8 and short enough to fit MSG_ROOM_POSE's str8."""
    if len(room) > 255:
        raise ProtocolError(E.ROOM_TOO_LONG, f"room id of {len(room)} bytes")
    try:
        return bytes(room).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(E.BAD_UTF8, f"room frame: {exc}") from None


# Plain-int sets keyed by lane: membership tests on the hot control path avoid
# enum attribute lookups.
_LANE_TYPES = {
    Lane.CONTROL: frozenset(int(t) for t in CONTROL_LANE_TYPES),
    Lane.TRANSFORM: frozenset(int(t) for t in TRANSFORM_LANE_TYPES),
}
_LANE_NAMES = {Lane.CONTROL: "control", Lane.TRANSFORM: "transform"}


def decode_client_payload(lane: Lane, payload: bytes) -> Message:
    """Decode a client->server payload and apply the relay's per-lane admission policy."""
    allowed = _LANE_TYPES.get(lane)
    if allowed is None:
        raise ValueError(f"not a lane: {lane!r}")  # caller bug, not peer input
    if type(payload) is not bytes:
        payload = bytes(payload)  # frames may arrive as zmq.Frame / memoryview
    msg = decode(payload)
    t = payload[0]
    if t not in allowed:
        raise ProtocolError(E.WRONG_LANE, f"type {t} on the {_LANE_NAMES[lane]} lane")
    # Every client type carries a device id; the relay keys membership on it,
    # so an empty one can only create anonymous ghosts (BEHAVIOR W4).
    if not msg.device_id:  # type: ignore[union-attr]
        raise ProtocolError(E.EMPTY_DEVICE_ID, f"type {t} with empty deviceId")
    return msg


def decode_client_frames(lane: Lane, frames: Sequence[bytes]) -> tuple[str, Message]:
    """Validate the frames that follow the ROUTER identity: exactly [room, payload]."""
    if len(frames) != 2:
        raise ProtocolError(E.FRAME_COUNT, f"{len(frames)} frames, expected 2")
    room, payload = frames
    return check_room_frame(room), decode_client_payload(lane, payload)


# --------------------------------------------------------------- encoding


def _e_str8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ProtocolError(E.STR_TOO_LONG, f"str8 of {len(b)} bytes")
    return bytes((len(b),)) + b


def _e_str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ProtocolError(E.STR_TOO_LONG, f"str16 of {len(b)} bytes")
    return _U16.pack(len(b)) + b


def _e_count16(n: int, what: str) -> bytes:
    if n > 0xFFFF:
        raise ProtocolError(E.COUNT_TOO_LARGE, f"{n} {what}")
    return _U16.pack(n)


def _e_version(v: int) -> None:
    if v != PROTOCOL_VERSION:
        raise ProtocolError(E.VERSION, f"protocol version {v!r}, expected {PROTOCOL_VERSION}")


def _e_i24x3(x: int, y: int, z: int) -> tuple[int, int, int, int, int, int]:
    # The high byte must fit i8 exactly when the value fits i24, so struct's
    # own range check on 'b' doubles as the i24 range check.
    return x & 0xFFFF, x >> 16, y & 0xFFFF, y >> 16, z & 0xFFFF, z >> 16


def encode_pose_body(body: PoseBody) -> bytes:
    """Encode a POSE_BODY; the optional blocks must match the flag bits exactly."""
    return _guarded(_enc_body, body)


def _enc_body(body: PoseBody) -> bytes:
    flags = body.flags
    enc = body.encoding_flags
    parts = [_BODY_HDR.pack(body.pose_seq, flags, enc)]
    has_head = bool(flags & _FLAG_HEAD)
    expect = (
        bool(flags & _FLAG_PHYSICAL),
        has_head,
        has_head and bool(flags & _FLAG_RIGHT),
        has_head and bool(flags & _FLAG_LEFT),
    )
    have = (
        body.physical is not None,
        body.head is not None,
        body.right_hand is not None,
        body.left_hand is not None,
    )
    if expect != have:
        raise ProtocolError(
            E.INVALID_BODY, f"blocks present {have} do not match flags 0x{flags:02x}"
        )
    if body.physical is not None:
        if not flags & _FLAG_MOVING_FLOOR and not enc & _ENC_DELTA:
            raise ProtocolError(
                E.PHYSICAL_WITHOUT_DELTA_FLAG,
                f"flags 0x{flags:02x}, encodingFlags 0x{enc:02x}",
            )
        p = body.physical
        parts.append(_PHYSICAL.pack(p.x, p.y, p.z, p.yaw))
    if body.head is not None:
        h = body.head
        parts.append(_HEAD.pack(*_e_i24x3(h.x, h.y, h.z), h.rot))
    for hand in (body.right_hand, body.left_hand):
        if hand is not None:
            parts.append(_REL.pack(hand.x, hand.y, hand.z, hand.rot))
    virtuals = body.virtuals
    if len(virtuals) > MAX_VIRTUALS:
        raise ProtocolError(E.TOO_MANY_VIRTUALS, f"{len(virtuals)} virtuals > {MAX_VIRTUALS}")
    parts.append(bytes((len(virtuals),)))
    for v in virtuals:
        parts.append(_REL.pack(v.x, v.y, v.z, v.rot))
    return b"".join(parts)


def _enc_rpc(m: Rpc) -> bytes:
    targets = m.target_client_nos
    if len(targets) > 255:
        raise ProtocolError(E.COUNT_TOO_LARGE, f"{len(targets)} RPC targets > 255")
    return b"".join(
        (
            _TYPE_U16.pack(3, m.sender_client_no),
            _e_str8(m.device_id),
            bytes((len(targets),)),
            struct.pack(f"<{len(targets)}H", *targets),
            _e_str8(m.function_name),
            _e_str16(m.arguments_json),
        )
    )


def _enc_mapping(m: DeviceIdMapping) -> bytes:
    major, minor, patch = m.server_version
    parts = [
        b"\x06",
        _U8X3.pack(major, minor, patch),
        _e_count16(len(m.mappings), "mapping entries"),
    ]
    for entry in m.mappings:
        parts.append(_MAPPING_ENTRY.pack(entry.client_no, 1 if entry.is_stealth else 0))
        parts.append(_e_str8(entry.device_id))
    return b"".join(parts)


def _enc_global_set(m: GlobalVarSet) -> bytes:
    return b"".join(
        (
            _TYPE_U16.pack(7, m.sender_client_no),
            _e_str8(m.device_id),
            _e_str8(m.variable_name),
            _e_str16(m.variable_value),
        )
    )


def _e_vars(parts: list[bytes], variables: Sequence[VarEntry]) -> None:
    for v in variables:
        parts.append(_e_str8(v.name))
        parts.append(_e_str16(v.value))
        parts.append(_U16.pack(v.last_writer_client_no))


def _enc_global_sync(m: GlobalVarSync) -> bytes:
    parts = [b"\x08", _e_count16(len(m.variables), "global variables")]
    _e_vars(parts, m.variables)
    return b"".join(parts)


def _enc_client_set(m: ClientVarSet) -> bytes:
    return b"".join(
        (
            _TYPE_U16.pack(9, m.sender_client_no),
            _e_str8(m.device_id),
            _U16.pack(m.target_client_no),
            _e_str8(m.variable_name),
            _e_str16(m.variable_value),
        )
    )


def _enc_client_sync(m: ClientVarSync) -> bytes:
    parts = [b"\x0a", _e_count16(len(m.clients), "clients")]
    for c in m.clients:
        parts.append(_U16.pack(c.client_no))
        parts.append(_e_count16(len(c.variables), "client variables"))
        _e_vars(parts, c.variables)
    return b"".join(parts)


def _enc_client_pose(m: ClientPose) -> bytes:
    _e_version(m.protocol_version)
    return b"\x0b\x08" + _e_str8(m.device_id) + _enc_body(m.body)


def _enc_room_pose(m: RoomPose) -> bytes:
    _e_version(m.protocol_version)
    parts = [
        b"\x0c\x08",
        _e_str8(m.room_id),
        _F64.pack(m.broadcast_time),
        _e_count16(len(m.clients), "room pose entries"),
    ]
    for c in m.clients:
        parts.append(_ROOM_ENTRY.pack(c.client_no, c.pose_time))
        parts.append(_enc_body(c.body))
    return b"".join(parts)


def _enc_object_pose(m: ObjectPose) -> bytes:
    _e_version(m.protocol_version)
    return (
        b"\x0d\x08"
        + _e_str8(m.device_id)
        + _OBJ_POSE.pack(m.object_id, m.pose_seq, *_e_i24x3(m.x, m.y, m.z), m.rot)
    )


def _enc_room_objects(m: RoomObjects) -> bytes:
    _e_version(m.protocol_version)
    parts = [
        b"\x0e\x08",
        _F64.pack(m.broadcast_time),
        _e_count16(len(m.objects), "objects"),
    ]
    pack = _ROOM_OBJECT.pack
    for o in m.objects:
        parts.append(
            pack(
                o.object_id,
                o.owner_client_no,
                o.pose_seq,
                o.pose_time,
                *_e_i24x3(o.x, o.y, o.z),
                o.rot,
            )
        )
    return b"".join(parts)


def _enc_ownership_request(m: OwnershipRequest) -> bytes:
    _e_version(m.protocol_version)
    return b"\x0f\x08" + _e_str8(m.device_id) + struct.pack("<BI", m.operation_type, m.object_id)


def _enc_ownership_changed(m: OwnershipChanged) -> bytes:
    return b"\x10" + _OWNERSHIP_CHANGED.pack(
        m.object_id, m.new_owner_client_no, m.previous_owner_client_no
    )


def _enc_ownership_rejected(m: OwnershipRejected) -> bytes:
    return b"\x11" + _OWNERSHIP_REJECTED.pack(m.object_id, m.current_owner_client_no, m.reason_code)


def _enc_client_var_clear(m: ClientVarClear) -> bytes:
    return _TYPE_U16.pack(18, m.sender_client_no) + _e_str8(m.device_id)


def _enc_hello(m: ClientHello) -> bytes:
    _e_version(m.protocol_version)
    return _TYPE_VER.pack(19, PROTOCOL_VERSION) + bytes((m.flags,)) + _e_str8(m.device_id)


_ENCODERS: dict[type, Callable[..., bytes]] = {
    Rpc: _enc_rpc,
    DeviceIdMapping: _enc_mapping,
    GlobalVarSet: _enc_global_set,
    GlobalVarSync: _enc_global_sync,
    ClientVarSet: _enc_client_set,
    ClientVarSync: _enc_client_sync,
    ClientPose: _enc_client_pose,
    RoomPose: _enc_room_pose,
    ObjectPose: _enc_object_pose,
    RoomObjects: _enc_room_objects,
    OwnershipRequest: _enc_ownership_request,
    OwnershipChanged: _enc_ownership_changed,
    OwnershipRejected: _enc_ownership_rejected,
    ClientVarClear: _enc_client_var_clear,
    ClientHello: _enc_hello,
}


def encode(msg: Message) -> bytes:
    """Encode a message; raise ProtocolError if any field cannot be represented."""
    fn = _ENCODERS.get(type(msg))
    if fn is None:
        raise ProtocolError(E.UNKNOWN_TYPE, f"cannot encode {type(msg).__name__}")
    return _guarded(fn, msg)


def _guarded(fn: Callable[[Any], bytes], msg: Any) -> bytes:
    try:
        return fn(msg)
    except UnicodeEncodeError as exc:
        raise ProtocolError(E.BAD_UTF8, str(exc)) from None
    # struct.error covers out-of-range and non-integer values; the others come
    # from fields of the wrong Python type (None, float for int, bytes for str).
    except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ProtocolError(E.INVALID_FIELD, f"{type(msg).__name__}: {exc}") from None
