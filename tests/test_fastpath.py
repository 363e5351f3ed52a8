"""The relay's byte-level fast path must agree exactly with the full codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import (
    ClientPose,
    ObjectPose,
    PlacedRotation,
    PoseBody,
    ProtocolError,
    RoomObject,
    RoomObjects,
    RoomPose,
    assemble_room_objects,
    assemble_room_pose,
    body_size,
    decode,
    decode_pose_body,
    encode,
    encode_pose_body,
    room_pose_header,
    split_client_pose,
    split_object_pose,
)

from . import strategies as S
from .test_protocol_vectors import INVALID, VALID, _ids

CLIENT_POSE_VECTORS = [r for r in VALID if r["type"] == 11]
ROOM_POSE_VECTORS = [r for r in VALID if r["type"] == 12]
OBJECT_POSE_VECTORS = [r for r in VALID if r["type"] == 13]
ROOM_OBJECTS_VECTORS = [r for r in VALID if r["type"] == 14]
msg_type_of_cls = {ClientPose: 11, ObjectPose: 13}
# Type-11/13 payloads of invalid.jsonl (client side), whatever their lane.
INVALID_POSES = [r for r in INVALID if r["hex"][:2] in ("0b", "0d")]


def test_vectors_cover_fast_path() -> None:
    assert CLIENT_POSE_VECTORS and ROOM_POSE_VECTORS
    assert OBJECT_POSE_VECTORS and ROOM_OBJECTS_VECTORS and INVALID_POSES


def _outcome(fn, payload: bytes):
    """(value, None) or (None, reason)."""
    try:
        return fn(payload), None
    except ProtocolError as exc:
        return None, exc.reason


def _agree(payload: bytes, cls: type, fast_fn):
    full, full_reason = _outcome(decode, payload)
    if full is not None and not isinstance(full, cls):
        # Decodable as another type: only the type gate of the fast path applies.
        full, full_reason = None, "unexpected_type"
    fast, fast_reason = _outcome(fast_fn, payload)
    assert (full is None) == (fast is None), (payload.hex(), full, fast, fast_reason)
    if payload and full is None and payload[0] == msg_type_of_cls[cls]:
        # Same category either way, so metrics do not depend on which path ran.
        assert fast_reason == full_reason, payload.hex()
    return full, fast


def _assert_pose_agrees(payload: bytes) -> None:
    full, fast = _agree(payload, ClientPose, split_client_pose)
    if full is not None:
        device_id, flags, body = fast
        n = len(device_id.encode())
        assert device_id == full.device_id
        assert flags == full.body.flags
        assert body == payload[3 + n :]
        assert len(body) == body_size(flags, len(full.body.virtuals))
        assert decode_pose_body(body) == full.body


def _assert_object_agrees(payload: bytes) -> None:
    full, fast = _agree(payload, ObjectPose, split_object_pose)
    if full is not None:
        device_id, object_id, seq, pose13 = fast
        n = len(device_id.encode())
        assert (device_id, object_id, seq) == (full.device_id, full.object_id, full.pose_seq)
        assert pose13 == payload[9 + n : 22 + n]


# ------------------------------------------------------------------ vectors


@pytest.mark.parametrize("rec", CLIENT_POSE_VECTORS, ids=_ids(CLIENT_POSE_VECTORS))
def test_client_pose_vector(rec: dict) -> None:
    payload = bytes.fromhex(rec["hex"])
    device_id, flags, body = split_client_pose(payload)
    n = len(device_id.encode())
    assert device_id == rec["fields"]["deviceId"]
    assert flags == rec["fields"]["body"]["flags"]
    assert body == payload[3 + n :]
    _assert_pose_agrees(payload)


@pytest.mark.parametrize("rec", ROOM_POSE_VECTORS, ids=_ids(ROOM_POSE_VECTORS))
def test_room_pose_vector(rec: dict) -> None:
    msg = decode(bytes.fromhex(rec["hex"]))
    assert isinstance(msg, RoomPose)
    entries = [(c.client_no, c.pose_time, encode_pose_body(c.body)) for c in msg.clients]
    out = assemble_room_pose(room_pose_header(msg.room_id), msg.broadcast_time, entries)
    assert out.hex() == rec["hex"]


@pytest.mark.parametrize("rec", OBJECT_POSE_VECTORS, ids=_ids(OBJECT_POSE_VECTORS))
def test_object_pose_vector(rec: dict) -> None:
    payload = bytes.fromhex(rec["hex"])
    f = rec["fields"]
    device_id, object_id, seq, pose13 = split_object_pose(payload)
    assert (device_id, object_id, seq) == (f["deviceId"], f["objectId"], f["poseSeq"])
    assert len(pose13) == 13
    _assert_object_agrees(payload)


@pytest.mark.parametrize("rec", ROOM_OBJECTS_VECTORS, ids=_ids(ROOM_OBJECTS_VECTORS))
def test_room_objects_vector(rec: dict) -> None:
    msg = decode(bytes.fromhex(rec["hex"]))
    assert isinstance(msg, RoomObjects)
    objects = [
        (o.object_id, o.owner_client_no, o.pose_seq, o.pose_time, _pose13(o)) for o in msg.objects
    ]
    assert assemble_room_objects(msg.broadcast_time, objects).hex() == rec["hex"]


@pytest.mark.parametrize("rec", INVALID_POSES, ids=_ids(INVALID_POSES))
def test_invalid_pose_vector_agrees(rec: dict) -> None:
    payload = bytes.fromhex(rec["hex"])
    if payload[0] == 11:
        _assert_pose_agrees(payload)
    else:
        _assert_object_agrees(payload)


def test_reasons_match_decode_on_vectors() -> None:
    # Same category as the full decoder, so metrics do not depend on which path ran.
    for rec in INVALID_POSES:
        payload = bytes.fromhex(rec["hex"])
        split = split_client_pose if payload[0] == 11 else split_object_pose
        try:
            decode(payload)
        except ProtocolError as exc:
            full_reason = exc.reason
        else:
            split(payload)  # decodable (wrong-lane or policy case): fast path accepts too
            continue
        with pytest.raises(ProtocolError) as fast:
            split(payload)
        assert fast.value.reason == full_reason, rec["id"]


def test_empty_device_id_is_structurally_valid() -> None:
    payload = encode(ClientPose(8, "", PoseBody(5, 0x04, 0x1F, head=PlacedRotation(0, 170, 0, 1))))
    assert split_client_pose(payload)[0] == ""
    assert split_object_pose(encode(ObjectPose(8, "", 6, 3, 0, 0, 0, 1)))[0] == ""


def test_max_virtuals_parameter() -> None:
    body = PoseBody(
        1, 0x24, 0x1F, head=PlacedRotation(0, 0, 0, 0), virtuals=(PlacedRotation(1, 2, 3, 4),) * 10
    )
    payload = encode(ClientPose(8, "d", body))
    assert split_client_pose(payload, max_virtuals=10)[2] == encode_pose_body(body)
    with pytest.raises(ProtocolError) as info:
        split_client_pose(payload, max_virtuals=9)
    assert info.value.reason == "too_many_virtuals"


def test_header_and_assembly_errors() -> None:
    assert room_pose_header("room") == b"\x0c\x08\x04room"
    with pytest.raises(ProtocolError) as info:
        room_pose_header("r" * 256)
    assert info.value.reason == "room_too_long"
    with pytest.raises(ProtocolError):
        room_pose_header("\ud800")
    with pytest.raises(ProtocolError):
        assemble_room_pose(b"\x0c\x08\x00", 0.0, [(70000, 0.0, b"")])
    with pytest.raises(ProtocolError):
        assemble_room_objects(0.0, [(1, 1, 1, 0.0, b"short")])
    with pytest.raises(ProtocolError):
        assemble_room_objects(0.0, [(-1, 1, 1, 0.0, bytes(13))])


def test_body_size_formula() -> None:
    # §5.4: 5 + 8P + 13H + 10(R + L + virtualCount), hands only under HeadValid.
    for flags in range(256):
        p = (flags >> 1) & 1
        h = (flags >> 2) & 1
        r = h & (flags >> 3)
        l = h & (flags >> 4)  # noqa: E741
        for count in (0, 1, 50):
            assert body_size(flags, count) == 5 + 8 * p + 13 * h + 10 * (r + l + count)


def _pose13(o: RoomObject) -> bytes:
    # The 13 pose bytes of an object are the tail of its MSG_OBJECT_POSE encoding.
    return encode(ObjectPose(8, "", o.object_id, o.pose_seq, o.x, o.y, o.z, o.rot))[-13:]


# --------------------------------------------------------------- properties


@settings()
@given(S.client_poses(bodies=S.pose_bodies() | S.encoder_pose_bodies()))
def test_generated_client_poses(msg: ClientPose) -> None:
    payload = encode(msg)
    device_id, flags, body = split_client_pose(payload)
    assert (device_id, flags) == (msg.device_id, msg.body.flags)
    assert body == encode_pose_body(msg.body)
    _assert_pose_agrees(payload)


@settings()
@given(S.mutated(S.client_poses().map(encode)) | st.binary(max_size=120))
def test_client_pose_rejects_exactly_what_decode_rejects(payload: bytes) -> None:
    _assert_pose_agrees(payload)


@settings()
@given(S.mutated(S.object_poses.map(encode)) | S.object_poses.map(encode))
def test_object_pose_rejects_exactly_what_decode_rejects(payload: bytes) -> None:
    _assert_object_agrees(payload)


@settings()
@given(S.room_poses)
def test_relay_pipeline_equals_encoder(msg: RoomPose) -> None:
    # What the relay does: split each client's pose payload, keep the body
    # bytes, splice a snapshot under the cached room header. The result must
    # be exactly what the full encoder produces for the same snapshot.
    entries = []
    for i, c in enumerate(msg.clients):
        _, flags, body = split_client_pose(encode(ClientPose(8, f"dev-{i}", c.body)))
        assert flags == c.body.flags
        entries.append((c.client_no, c.pose_time, body))
    out = assemble_room_pose(room_pose_header(msg.room_id), msg.broadcast_time, entries)
    assert out == encode(msg)


@settings()
@given(S.room_objects)
def test_assemble_room_objects_equals_encoder(msg: RoomObjects) -> None:
    objects = [
        (o.object_id, o.owner_client_no, o.pose_seq, o.pose_time, _pose13(o)) for o in msg.objects
    ]
    assert assemble_room_objects(msg.broadcast_time, objects) == encode(msg)
