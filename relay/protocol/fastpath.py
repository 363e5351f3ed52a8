"""Hot path of the relay: validate pose payloads and splice snapshots as bytes.

The relay never interprets poses (PROTOCOL §5.4: bodies are relayed byte for
byte), so it does not need floats or dataclasses. These functions check the
same structure ``codec.decode`` checks, using only the flag byte and the
virtual count to compute where the body must end, and build MSG_ROOM_POSE /
MSG_ROOM_OBJECTS by concatenating already-validated bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import errors as E
from .errors import ProtocolError
from .messages import MAX_VIRTUALS, PROTOCOL_VERSION, MsgType

__all__ = [
    "assemble_room_objects",
    "assemble_room_pose",
    "body_size",
    "check_pose_body",
    "room_pose_header",
    "split_client_pose",
    "split_object_pose",
]

_CLIENT_POSE = int(MsgType.CLIENT_POSE)
_OBJECT_POSE = int(MsgType.OBJECT_POSE)


def _fixed_size(flags: int) -> int:
    # seq + flags + encodingFlags (4) + physical (8) + head (13) + hands (10
    # each, only under HeadValid), up to but excluding the virtualCount byte.
    size = 4
    if flags & 0x02:
        size += 8
    if flags & 0x04:
        size += 13
        if flags & 0x08:
            size += 10
        if flags & 0x10:
            size += 10
    return size


# Offset of virtualCount within a body, per flags byte.
_VCOUNT_OFFSET = tuple(_fixed_size(f) for f in range(256))
# Flag bytes for which the physical block requires encodingFlags bit 4:
# PhysicalValid set and MovingFloorLocal clear (§5.2).
_NEEDS_DELTA_BIT = tuple((f & 0x42) == 0x02 for f in range(256))

_OBJ_HEAD = struct.Struct("<IH")
_ROOM_TAIL = struct.Struct("<dH")
_ROOM_ENTRY = struct.Struct("<Hd")
_ROOM_OBJECT = struct.Struct("<IHHd")
_ROOM_OBJECTS_HEAD = b"\x0e\x08"


def body_size(flags: int, virtual_count: int) -> int:
    """Exact POSE_BODY size: 5 + 8P + 13H + 10(R + L + virtualCount), R/L only under H."""
    return _VCOUNT_OFFSET[flags] + 1 + 10 * virtual_count


def _device_header(payload: bytes, expected_type: int, what: str) -> tuple[bytes, str, int]:
    """Common head of the versioned transform messages: type, version, deviceId.

    Returns (payload as bytes, device_id, offset after the device id). Checks
    run in the same order as codec.decode so both report the same reason for
    the same payload (the reason is a metrics label).
    """
    if type(payload) is not bytes:
        payload = bytes(payload)  # e.g. a zmq.Frame or memoryview
    size = len(payload)
    if size < 3:
        if not size:
            raise ProtocolError(E.TRUNCATED, "empty payload")
        if payload[0] != expected_type:
            raise ProtocolError(E.UNEXPECTED_TYPE, f"type {payload[0]}, expected {expected_type}")
        if size == 2 and payload[1] != PROTOCOL_VERSION:
            raise ProtocolError(E.VERSION, f"protocol version {payload[1]}")
        raise ProtocolError(E.TRUNCATED, f"{what} header")
    if payload[0] != expected_type:
        raise ProtocolError(E.UNEXPECTED_TYPE, f"type {payload[0]}, expected {expected_type}")
    if payload[1] != PROTOCOL_VERSION:
        raise ProtocolError(E.VERSION, f"protocol version {payload[1]}")
    start = 3 + payload[2]
    if size < start:
        raise ProtocolError(E.TRUNCATED, "device id")
    try:
        device_id = payload[3:start].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(E.BAD_UTF8, str(exc)) from None
    return payload, device_id, start


def split_client_pose(payload: bytes, max_virtuals: int = MAX_VIRTUALS) -> tuple[str, int, bytes]:
    """Return (device_id, flags, POSE_BODY bytes) of a MSG_CLIENT_POSE, or raise ProtocolError.

    An empty device id is structurally valid here; rejecting it is the caller's policy.
    """
    payload, device_id, start = _device_header(payload, _CLIENT_POSE, "client pose")
    flags = check_pose_body(payload, start, max_virtuals)
    return device_id, flags, payload[start:]


def check_pose_body(payload: bytes, start: int, max_virtuals: int = MAX_VIRTUALS) -> int:
    """Check the POSE_BODY of a MSG_CLIENT_POSE that starts at ``start``; return its flags.

    Raises ProtocolError. The shard's repeat-pose path calls this alone: it
    has already matched the device header bytes of the same sender.
    """
    size = len(payload)
    # Body header (4 bytes) must be complete to read flags and encodingFlags.
    if size < start + 4:
        raise ProtocolError(E.TRUNCATED, "pose body header")
    flags = payload[start + 2]
    if _NEEDS_DELTA_BIT[flags] and not payload[start + 3] & 0x10:
        raise ProtocolError(E.PHYSICAL_WITHOUT_DELTA_FLAG, f"flags 0x{flags:02x}")
    vc_at = start + _VCOUNT_OFFSET[flags]
    if size <= vc_at:
        raise ProtocolError(E.TRUNCATED, "pose body blocks")
    count = payload[vc_at]
    if count > max_virtuals:
        raise ProtocolError(E.TOO_MANY_VIRTUALS, f"virtualCount {count} > {max_virtuals}")
    end = vc_at + 1 + 10 * count
    if size != end:
        if size < end:
            raise ProtocolError(E.TRUNCATED, "virtual entries")
        raise ProtocolError(E.TRAILING_BYTES, f"{size - end} trailing bytes")
    return flags


def split_object_pose(payload: bytes) -> tuple[str, int, int, bytes]:
    """Return (device_id, object_id, pose_seq, 13 pose bytes) of a MSG_OBJECT_POSE.

    Bytes after the 13 pose bytes are ignored (§6.10).
    """
    payload, device_id, start = _device_header(payload, _OBJECT_POSE, "object pose")
    if len(payload) < start + 19:
        raise ProtocolError(E.TRUNCATED, "object pose")
    object_id, seq = _OBJ_HEAD.unpack_from(payload, start)
    return device_id, object_id, seq, payload[start + 6 : start + 19]


def room_pose_header(room_id: str) -> bytes:
    """Constant prefix of a room's MSG_ROOM_POSE (type, version, roomId); cache it per room."""
    try:
        raw = room_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(E.BAD_UTF8, str(exc)) from None
    if len(raw) > 255:
        raise ProtocolError(E.ROOM_TOO_LONG, f"room id of {len(raw)} bytes")
    return b"\x0c\x08" + bytes((len(raw),)) + raw


def assemble_room_pose(
    header: bytes,
    broadcast_time: float,
    entries: Sequence[tuple[int, float, bytes]],
) -> bytes:
    """MSG_ROOM_POSE from a cached header and (client_no, pose_time, body) entries.

    Bodies are not re-validated: they come from split_client_pose.
    """
    pack = _ROOM_ENTRY.pack
    try:
        parts = [header, _ROOM_TAIL.pack(broadcast_time, len(entries))]
        append = parts.append
        for client_no, pose_time, body in entries:
            append(pack(client_no, pose_time))
            append(body)
    except struct.error as exc:
        raise ProtocolError(E.INVALID_FIELD, f"room pose entry: {exc}") from None
    return b"".join(parts)


def assemble_room_objects(
    broadcast_time: float,
    objects: Sequence[tuple[int, int, int, float, bytes]],
) -> bytes:
    """MSG_ROOM_OBJECTS from (object_id, owner_client_no, pose_seq, pose_time, pose13) tuples."""
    pack = _ROOM_OBJECT.pack
    try:
        parts = [_ROOM_OBJECTS_HEAD, _ROOM_TAIL.pack(broadcast_time, len(objects))]
        append = parts.append
        for object_id, owner, seq, pose_time, pose13 in objects:
            if len(pose13) != 13:
                raise ProtocolError(E.INVALID_FIELD, f"object pose of {len(pose13)} bytes")
            append(pack(object_id, owner, seq, pose_time))
            append(pose13)
    except struct.error as exc:
        raise ProtocolError(E.INVALID_FIELD, f"room object: {exc}") from None
    return b"".join(parts)
