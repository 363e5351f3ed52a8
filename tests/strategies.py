"""Hypothesis strategies for valid protocol v8 messages.

Every value these strategies produce encodes without error and decodes back to
itself: strings fit their length prefix in UTF-8 bytes, counts fit their
integer width, pose blocks match the flag bits, virtuals <= 50 and the
physical/encoding-flags rule holds. Shared with other test modules.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    FLAG_LEFT_VALID,
    FLAG_MOVING_FLOOR_LOCAL,
    FLAG_PHYSICAL_VALID,
    FLAG_RIGHT_VALID,
    FLAG_STEALTH,
    FLAG_VIRTUALS_VALID,
    MAX_VIRTUALS,
    PROTOCOL_VERSION,
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

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i16 = st.integers(-0x8000, 0x7FFF)
i24 = st.integers(-0x800000, 0x7FFFFF)
# NaN never equals itself, which would break round-trip equality; the wire
# carries any binary64, so infinities and signed zeros stay in.
f64 = st.floats(allow_nan=False)
client_no = st.integers(1, 0xFFFF) | st.just(0)


def _fit_utf8(max_bytes: int):
    def cut(s: str) -> str:
        # Cutting the encoding can split a character; "ignore" drops the
        # partial tail, so the result is the longest prefix that fits.
        return s.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")

    return cut


# Mix of realistic ids, arbitrary Unicode and exact-length edge cases.
str8 = st.one_of(
    st.text(max_size=40),
    st.text(max_size=255).map(_fit_utf8(255)),
    st.sampled_from(["", "a" * 255, "\U0001f680" * 63 + "abc"]),
)
nonempty_str8 = str8.filter(bool)
str16 = st.one_of(
    st.text(max_size=80),
    # Longer than any str8 to exercise the u16 prefix (> 255 bytes) cheaply.
    st.integers(256, 3000).map(lambda n: "j" * n),
)


# ------------------------------------------------------------------ poses

physicals = st.builds(Physical, i16, i16, i16, i16)
heads = st.builds(PlacedRotation, i24, i24, i24, u32)
relatives = st.builds(PlacedRotation, i16, i16, i16, u32)

_REL = struct.Struct("<3hI")


def _relatives_from_bytes(raw: bytes) -> tuple[PlacedRotation, ...]:
    usable = len(raw) - len(raw) % _REL.size
    return tuple(PlacedRotation(*v) for v in _REL.iter_unpack(raw[:usable]))


def virtual_lists(max_size: int = MAX_VIRTUALS):
    """Mostly short, structured lists; sometimes long ones built from raw bytes.

    Drawing 50 composite entries one by one dominates the run time of every
    test that uses poses, so long lists come from one binary draw instead.
    """
    return st.one_of(
        st.lists(relatives, max_size=min(3, max_size)).map(tuple),
        st.binary(max_size=max_size * _REL.size).map(_relatives_from_bytes),
        st.binary(min_size=max_size * _REL.size, max_size=max_size * _REL.size).map(
            _relatives_from_bytes
        ),
    )


_PHYS = struct.Struct("<4h")
_HEAD = struct.Struct("<3s3s3sI")


def _i24(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _blocks(draw, flags: int):
    """(physical, head, right, left) for ``flags``.

    Half the time each block comes from its integer strategy (Hypothesis biases
    those towards range boundaries); otherwise all blocks are cut from one
    binary draw, which is several times cheaper than ~20 separate draws.
    """
    p = bool(flags & FLAG_PHYSICAL_VALID)
    h = bool(flags & FLAG_HEAD_VALID)
    r = h and bool(flags & FLAG_RIGHT_VALID)
    left = h and bool(flags & FLAG_LEFT_VALID)
    if draw(st.booleans()):
        return (
            draw(physicals) if p else None,
            draw(heads) if h else None,
            draw(relatives) if r else None,
            draw(relatives) if left else None,
        )
    need = 8 * p + 13 * h + 10 * r + 10 * left
    raw = draw(st.binary(min_size=need, max_size=need))
    o = 0
    physical = head = right = left_hand = None
    if p:
        physical = Physical(*_PHYS.unpack_from(raw, o))
        o += 8
    if h:
        x, y, z, rot = _HEAD.unpack_from(raw, o)
        head = PlacedRotation(_i24(x), _i24(y), _i24(z), rot)
        o += 13
    if r:
        right = PlacedRotation(*_REL.unpack_from(raw, o))
        o += 10
    if left:
        left_hand = PlacedRotation(*_REL.unpack_from(raw, o))
    return physical, head, right, left_hand


@st.composite
def pose_bodies(draw, max_virtuals: int = MAX_VIRTUALS) -> PoseBody:
    """Any structurally valid body, including flag combinations encoders never emit."""
    flags = draw(u8)
    encoding = draw(u8)
    if flags & 0x42 == FLAG_PHYSICAL_VALID:
        encoding |= 0x10  # §5.2: delta-mode physical needs bit 4
    physical, head, right, left = _blocks(draw, flags)
    return PoseBody(
        pose_seq=draw(u16),
        flags=flags,
        encoding_flags=encoding,
        physical=physical,
        head=head,
        right_hand=right,
        left_hand=left,
        # Virtuals are structurally present even without VirtualsValid (§5.4).
        virtuals=draw(virtual_lists(max_virtuals)),
    )


@st.composite
def encoder_pose_bodies(draw) -> PoseBody:
    """Bodies as the Unity / Python encoders sanitise them (§5.1, §5.2)."""
    flags = draw(st.integers(0, 0x7F))
    if flags & FLAG_STEALTH:
        flags = FLAG_STEALTH
    if not flags & FLAG_HEAD_VALID:
        flags &= ~(FLAG_RIGHT_VALID | FLAG_LEFT_VALID | FLAG_VIRTUALS_VALID)
    encoding = 0x0F if flags & FLAG_MOVING_FLOOR_LOCAL else 0x1F
    physical, head, right, left = _blocks(draw, flags)
    with_virtuals = flags & FLAG_HEAD_VALID and flags & FLAG_VIRTUALS_VALID
    return PoseBody(
        pose_seq=draw(u16),
        flags=flags,
        encoding_flags=encoding,
        physical=physical,
        head=head,
        right_hand=right,
        left_hand=left,
        virtuals=draw(virtual_lists()) if with_virtuals else (),
    )


def client_poses(device_ids=str8, bodies=None):
    return st.builds(
        ClientPose,
        st.just(PROTOCOL_VERSION),
        device_ids,
        bodies if bodies is not None else pose_bodies(),
    )


room_pose_entries = st.builds(RoomPoseEntry, client_no, f64, pose_bodies())
room_poses = st.builds(
    RoomPose,
    st.just(PROTOCOL_VERSION),
    str8,
    f64,
    st.lists(room_pose_entries, max_size=4).map(tuple),
)
object_poses = st.builds(ObjectPose, st.just(PROTOCOL_VERSION), str8, u32, u16, i24, i24, i24, u32)
room_objects_entries = st.builds(RoomObject, u32, client_no, u16, f64, i24, i24, i24, u32)
room_objects = st.builds(
    RoomObjects,
    st.just(PROTOCOL_VERSION),
    f64,
    st.lists(room_objects_entries, max_size=5).map(tuple),
)

# ---------------------------------------------------------------- control

hellos = st.builds(ClientHello, st.just(PROTOCOL_VERSION), u8, str8)
rpcs = st.builds(
    Rpc,
    u16,
    str8,
    st.one_of(
        st.lists(u16, max_size=10).map(tuple),
        # Up to the u8 maximum of 255 targets, drawn as raw bytes for speed.
        st.binary(min_size=2 * 240, max_size=2 * 255).map(
            lambda b: struct.unpack(f"<{len(b) // 2}H", b[: len(b) // 2 * 2])
        ),
    ),
    str8,
    str16,
)
global_var_sets = st.builds(GlobalVarSet, u16, str8, str8, str16)
client_var_sets = st.builds(ClientVarSet, u16, str8, u16, str8, str16)
client_var_clears = st.builds(ClientVarClear, u16, str8)
ownership_requests = st.builds(OwnershipRequest, st.just(PROTOCOL_VERSION), str8, u8, u32)

var_entries = st.builds(VarEntry, str8, str16, u16)
mapping_entries = st.builds(MappingEntry, u16, st.booleans(), str8)
device_id_mappings = st.builds(
    DeviceIdMapping,
    st.tuples(u8, u8, u8),
    st.lists(mapping_entries, max_size=10).map(tuple),
)
global_var_syncs = st.builds(GlobalVarSync, st.lists(var_entries, max_size=10).map(tuple))
client_var_syncs = st.builds(
    ClientVarSync,
    st.lists(
        st.builds(ClientVars, u16, st.lists(var_entries, max_size=4).map(tuple)), max_size=4
    ).map(tuple),
)
ownership_changed = st.builds(OwnershipChanged, u32, u16, u16)
ownership_rejected = st.builds(OwnershipRejected, u32, u16, u8)

client_messages = st.one_of(
    hellos,
    rpcs,
    global_var_sets,
    client_var_sets,
    client_var_clears,
    ownership_requests,
    client_poses(),
    object_poses,
)
server_messages = st.one_of(
    rpcs,
    device_id_mappings,
    global_var_syncs,
    client_var_syncs,
    room_poses,
    room_objects,
    ownership_changed,
    ownership_rejected,
)
messages = st.one_of(client_messages, server_messages)

# One strategy per message dataclass, for tests that want each covered.
BY_CLASS = {
    ClientHello: hellos,
    Rpc: rpcs,
    GlobalVarSet: global_var_sets,
    ClientVarSet: client_var_sets,
    ClientVarClear: client_var_clears,
    ClientPose: client_poses(),
    ObjectPose: object_poses,
    OwnershipRequest: ownership_requests,
    DeviceIdMapping: device_id_mappings,
    GlobalVarSync: global_var_syncs,
    ClientVarSync: client_var_syncs,
    RoomPose: room_poses,
    RoomObjects: room_objects,
    OwnershipChanged: ownership_changed,
    OwnershipRejected: ownership_rejected,
}


# -------------------------------------------------------------- mutations


@st.composite
def mutated(draw, payloads):
    """A payload from ``payloads`` with a few random edits (flip, truncate, insert, delete)."""
    data = bytearray(draw(payloads))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "delete")))
        if op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif not data:
            continue
        elif op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(u8)
        else:
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)
