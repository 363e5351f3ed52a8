"""Hand-written protocol v8 encoders/decoders for the load generator.

Only what a simulated client needs, written with ``struct`` straight from
PROTOCOL.md (sections 5.4 and 6) so the load generator does not depend on the
relay's own codec (it must be able to catch bugs in it). Everything that is
sent repeatedly is pre-encoded once; the hot path only patches a few bytes.
"""

from __future__ import annotations

import struct

PROTOCOL_VERSION = 8

MSG_RPC = 3
MSG_DEVICE_ID_MAPPING = 6
MSG_GLOBAL_VAR_SET = 7
MSG_GLOBAL_VAR_SYNC = 8
MSG_CLIENT_VAR_SYNC = 10
MSG_CLIENT_POSE = 11
MSG_ROOM_POSE = 12
MSG_CLIENT_HELLO = 19

# Pose flags (PROTOCOL 5.1): head + right hand + left hand, no physical block.
FLAG_PHYSICAL = 0x02
FLAG_HEAD = 0x04
FLAG_RIGHT = 0x08
FLAG_LEFT = 0x10
POSE_FLAGS = FLAG_HEAD | FLAG_RIGHT | FLAG_LEFT
ENCODING_FLAGS = 0x1F
IDENTITY_QUAT = 0xE0080200

# Offsets inside a POSE_BODY (PROTOCOL 5.4) for the flags used here.
BODY_SEQ_OFFSET = 0
# head.rot sits after seq(2) flags(1) encFlags(1) head xyz(9). The load
# generator stores its send time (microseconds, mod 2**32) there: every u32
# decodes to some valid quaternion, so the body stays protocol-true while any
# receiver can compute the pose's end-to-end age.
BODY_TS_OFFSET = 4 + 9

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I16x3 = struct.Struct("<hhh")


def str8(text: bytes) -> bytes:
    if len(text) > 255:
        raise ValueError("str8 longer than 255 bytes")
    return bytes((len(text),)) + text


def str16(text: bytes) -> bytes:
    return _U16.pack(len(text)) + text


def i24(value: int) -> bytes:
    return (value & 0xFFFFFF).to_bytes(3, "little")


def encode_hello(device_id: bytes, stealth: bool = False) -> bytes:
    """MSG_CLIENT_HELLO (PROTOCOL 6.1)."""
    return bytes((MSG_CLIENT_HELLO, PROTOCOL_VERSION, 1 if stealth else 0)) + str8(device_id)


def encode_pose_body(seq: int, head: tuple[int, int, int], ts: int = 0) -> bytes:
    """POSE_BODY with head and both hands (38 bytes), virtualCount 0.

    ``head`` is the quantised head position (i24 units of 1 cm); the hands sit
    at fixed offsets from it. ``ts`` goes into head.rot (see BODY_TS_OFFSET).
    """
    out = bytearray(_U16.pack(seq & 0xFFFF))
    out += bytes((POSE_FLAGS, ENCODING_FLAGS))
    out += i24(head[0]) + i24(head[1]) + i24(head[2]) + _U32.pack(ts & 0xFFFFFFFF)
    out += _I16x3.pack(40, -64, 40) + _U32.pack(IDENTITY_QUAT)  # right hand
    out += _I16x3.pack(-40, -64, 40) + _U32.pack(IDENTITY_QUAT)  # left hand
    out.append(0)  # virtualCount
    return bytes(out)


def encode_client_pose(device_id: bytes, body: bytes) -> bytes:
    """MSG_CLIENT_POSE (PROTOCOL 6.2)."""
    return bytes((MSG_CLIENT_POSE, PROTOCOL_VERSION)) + str8(device_id) + body


def client_pose_offsets(device_id: bytes) -> tuple[int, int]:
    """Byte offsets of poseSeq and of the timestamp field in a client pose."""
    body = 3 + len(device_id)
    return body + BODY_SEQ_OFFSET, body + BODY_TS_OFFSET


def encode_rpc(
    sender_no: int, device_id: bytes, function: bytes, args_json: bytes, targets: tuple[int, ...] = ()
) -> bytes:
    """MSG_RPC (PROTOCOL 6.3); empty ``targets`` = whole room."""
    out = bytes((MSG_RPC,)) + _U16.pack(sender_no & 0xFFFF) + str8(device_id)
    out += bytes((len(targets),)) + b"".join(_U16.pack(t) for t in targets)
    return out + str8(function) + str16(args_json)


def encode_global_var_set(sender_no: int, device_id: bytes, name: bytes, value: bytes) -> bytes:
    """MSG_GLOBAL_VAR_SET (PROTOCOL 6.5)."""
    return (
        bytes((MSG_GLOBAL_VAR_SET,))
        + _U16.pack(sender_no & 0xFFFF)
        + str8(device_id)
        + str8(name)
        + str16(value)
    )


def encode_device_id_mapping(
    entries: list[tuple[int, bool, bytes]], version: tuple[int, int, int] = (0, 17, 5)
) -> bytes:
    """MSG_DEVICE_ID_MAPPING (PROTOCOL 6.4); used by the bare forwarder."""
    out = bytes((MSG_DEVICE_ID_MAPPING, *version)) + _U16.pack(len(entries))
    for no, stealth, dev in entries:
        out += _U16.pack(no) + bytes((1 if stealth else 0,)) + str8(dev)
    return out


def find_client_no(payload: bytes, device_id: bytes) -> int | None:
    """Client number of ``device_id`` in a DEVICE_ID_MAPPING, or None."""
    if len(payload) < 6 or payload[0] != MSG_DEVICE_ID_MAPPING:
        return None
    (count,) = _U16.unpack_from(payload, 4)
    off = 6
    end = len(payload)
    for _ in range(count):
        if off + 4 > end:
            return None
        no = payload[off] | (payload[off + 1] << 8)
        n = payload[off + 3]
        if payload[off + 4 : off + 4 + n] == device_id:
            return no
        off += 4 + n
    return None


def parse_rpc(payload: bytes) -> tuple[bytes, bytes] | None:
    """(functionName, argumentsJson) of a MSG_RPC, or None if truncated."""
    try:
        off = 4 + payload[3]
        off += 1 + 2 * payload[off]
        fl = payload[off]
        func = payload[off + 1 : off + 1 + fl]
        off += 1 + fl
        al = payload[off] | (payload[off + 1] << 8)
        return func, payload[off + 2 : off + 2 + al]
    except IndexError:
        return None


def iter_global_vars(payload: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a GLOBAL_VAR_SYNC (type 8) or GLOBAL_VAR_SET (type 7)."""
    out: list[tuple[bytes, bytes]] = []
    try:
        if payload[0] == MSG_GLOBAL_VAR_SET:
            off = 4 + payload[3]
            nl = payload[off]
            name = payload[off + 1 : off + 1 + nl]
            off += 1 + nl
            vl = payload[off] | (payload[off + 1] << 8)
            out.append((name, payload[off + 2 : off + 2 + vl]))
            return out
        count = payload[1] | (payload[2] << 8)
        off = 3
        for _ in range(count):
            nl = payload[off]
            name = payload[off + 1 : off + 1 + nl]
            off += 1 + nl
            vl = payload[off] | (payload[off + 1] << 8)
            out.append((name, payload[off + 2 : off + 2 + vl]))
            off += 4 + vl
    except IndexError:
        pass
    return out


def room_pose_header(payload: bytes) -> tuple[bytes, float, int, int]:
    """(roomId, broadcastTime, clientCount, offset of first entry) of a MSG_ROOM_POSE."""
    n = payload[2]
    bt, count = struct.unpack_from("<dH", payload, 3 + n)
    return payload[3 : 3 + n], bt, count, 13 + n


def room_pose_timestamps(payload: bytes, off: int, count: int) -> list[int]:
    """The load generator's send timestamps (head.rot u32) of every entry.

    Walks the entries using the flags of each POSE_BODY to find its length
    (PROTOCOL 5.4). Entries without a head block are skipped.
    """
    out: list[int] = []
    end = len(payload)
    for _ in range(count):
        body = off + 10  # clientNo u16 + poseTime f64
        if body + 5 > end:
            break
        flags = payload[body + 2]
        p = 8 if flags & FLAG_PHYSICAL else 0
        head = flags & FLAG_HEAD
        size = 4 + p
        if head:
            ts_at = body + 4 + p + 9
            out.append(_U32.unpack_from(payload, ts_at)[0])
            size += 13
            if flags & FLAG_RIGHT:
                size += 10
            if flags & FLAG_LEFT:
                size += 10
        vc = payload[body + size]
        size += 1 + 10 * vc
        off = body + size
    return out
