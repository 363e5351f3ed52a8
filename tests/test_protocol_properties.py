"""Property tests of the codec: exact round trips and total, exception-safe decoding.

Example counts come from the profile in conftest.py (HYPOTHESIS_PROFILE=ci runs
2000 per test), so no test here sets max_examples.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import (
    ClientHello,
    ClientPose,
    ClientVarClear,
    GlobalVarSet,
    GlobalVarSync,
    Lane,
    ObjectPose,
    OwnershipChanged,
    OwnershipRejected,
    OwnershipRequest,
    Physical,
    PlacedRotation,
    PoseBody,
    ProtocolError,
    Rpc,
    VarEntry,
    check_room_frame,
    decode,
    decode_client_frames,
    decode_client_payload,
    decode_pose_body,
    encode,
    encode_pose_body,
    split_client_pose,
    split_object_pose,
)
from relay.protocol.messages import CONTROL_LANE_TYPES, TRANSFORM_LANE_TYPES

from . import strategies as S
from .vector_form import from_fields, msg_type_of, to_fields

lanes = st.sampled_from([Lane.CONTROL, Lane.TRANSFORM])
valid_payloads = S.messages.map(encode)
# Mutations of real payloads reach deep into the layouts; pure noise mostly
# exercises the type/version gate. Both are needed.
hostile_payloads = st.one_of(st.binary(max_size=300), S.mutated(valid_payloads))


def _decode_or_error(data: bytes):
    try:
        return decode(data)
    except ProtocolError as exc:
        assert exc.reason  # every error carries a category
        return exc


# test_roundtrip_encode_decode already spreads the profile's examples over
# all types; this per-class pass guarantees each class is hit and names the
# failing type. A tenth of the profile's budget per class keeps CI time flat.
_per_class = settings(max_examples=max(10, settings().max_examples // 10))


@pytest.mark.parametrize("cls", list(S.BY_CLASS), ids=lambda c: c.__name__)
def test_every_class_roundtrips(cls) -> None:
    @_per_class
    @given(S.BY_CLASS[cls])
    def check(msg) -> None:
        payload = encode(msg)
        assert payload[0] == msg_type_of(msg)
        assert decode(payload) == msg

    check()


@settings()
@given(S.messages)
def test_roundtrip_encode_decode(msg) -> None:
    payload = encode(msg)
    assert decode(payload) == msg
    # Re-encoding the decoded value is byte-exact, so relaying a decoded message is lossless.
    assert encode(decode(payload)) == payload
    # The vectors' JSON form is lossless too (tools build messages from it).
    assert from_fields(msg_type_of(msg), to_fields(msg)) == msg


@settings()
@given(S.pose_bodies())
def test_pose_body_roundtrip(body) -> None:
    raw = encode_pose_body(body)
    assert decode_pose_body(raw) == body


@settings()
@given(st.binary(max_size=400))
def test_decode_arbitrary_bytes_only_protocol_error(data: bytes) -> None:
    result = _decode_or_error(data)
    if not isinstance(result, ProtocolError):
        # Anything accepted must re-encode; prefix-exactness does not hold in
        # general (ignored trailing bytes, stealth bytes other than 0/1).
        encode(result)


@settings()
@given(S.mutated(valid_payloads))
def test_decode_mutations_only_protocol_error(data: bytes) -> None:
    result = _decode_or_error(data)
    if not isinstance(result, ProtocolError):
        # Compare bytes, not values: a mutated f64 may be NaN, which never equals itself.
        again = encode(result)
        assert encode(decode(again)) == again


@settings()
@given(
    lanes,
    st.one_of(
        st.lists(st.binary(max_size=40), max_size=4),
        st.tuples(st.binary(max_size=300), hostile_payloads).map(list),
        st.tuples(st.text(max_size=80).map(str.encode), hostile_payloads).map(list),
    ),
)
def test_decode_client_frames_only_protocol_error(lane: Lane, frames: list[bytes]) -> None:
    try:
        room, msg = decode_client_frames(lane, frames)
    except ProtocolError:
        return
    assert len(frames) == 2
    assert room.encode() == frames[0] and len(frames[0]) <= 255
    allowed = CONTROL_LANE_TYPES if lane == Lane.CONTROL else TRANSFORM_LANE_TYPES
    assert frames[1][0] in allowed
    assert msg.device_id  # type: ignore[union-attr]


@settings()
@given(lanes, S.client_messages)
def test_client_payload_policy(lane: Lane, msg) -> None:
    payload = encode(msg)
    on_lane = payload[0] in (CONTROL_LANE_TYPES if lane == Lane.CONTROL else TRANSFORM_LANE_TYPES)
    try:
        got = decode_client_payload(lane, payload)
    except ProtocolError as exc:
        expected = "wrong_lane" if not on_lane else "empty_device_id"
        assert exc.reason == expected
        assert not on_lane or msg.device_id == ""
    else:
        assert on_lane and msg.device_id and got == msg


@settings()
@given(hostile_payloads)
def test_split_client_pose_only_protocol_error(data: bytes) -> None:
    try:
        split_client_pose(data)
    except ProtocolError:
        pass


@settings()
@given(st.one_of(hostile_payloads, S.mutated(S.object_poses.map(encode))))
def test_split_object_pose_only_protocol_error(data: bytes) -> None:
    try:
        split_object_pose(data)
    except ProtocolError:
        pass


@settings()
@given(st.binary(max_size=300))
def test_check_room_frame(room: bytes) -> None:
    try:
        text = check_room_frame(room)
    except ProtocolError as exc:
        assert exc.reason in ("bad_utf8", "room_too_long")
    else:
        assert text.encode() == room


# ------------------------------------------------------ encoder validation

wide_int = st.integers(-(2**40), 2**40)


@settings()
@given(
    st.builds(
        ClientPose,
        st.integers(0, 300),
        S.str8 | st.text(min_size=86, max_size=300) | st.text(alphabet="x", min_size=256),
        S.pose_bodies() | st.builds(PoseBody, wide_int, wide_int, wide_int),
    )
    | st.builds(
        ObjectPose, st.just(8), S.str8, wide_int, wide_int, wide_int, wide_int, wide_int, wide_int
    )
    | st.builds(Rpc, wide_int, S.str8, st.lists(wide_int, max_size=300).map(tuple), S.str8, S.str16)
)
def test_encode_out_of_range_raises_protocol_error(msg) -> None:
    # The encoder either produces a payload the decoder accepts unchanged or
    # refuses with ProtocolError; it never emits something undecodable.
    try:
        payload = encode(msg)
    except ProtocolError as exc:
        assert exc.reason
        return
    assert decode(payload) == msg


def test_encode_rejects_bad_values() -> None:
    cases = [
        (ClientHello(7, 0, "d"), "version"),
        (ClientHello(8, 0, "x" * 256), "str_too_long"),
        (ClientHello(8, 256, "d"), "invalid_field"),
        (ClientHello(8, 0, "\ud800"), "bad_utf8"),
        (ClientVarClear(0, b"bytes"), "invalid_field"),  # type: ignore[arg-type]
        (Rpc(0, "d", tuple(range(256)), "f", "[]"), "count_too_large"),
        (GlobalVarSync(tuple([VarEntry("n", "v", 1)] * 65536)), "count_too_large"),
        (GlobalVarSet(0, "d", "n", "v" * 65536), "str_too_long"),
        (ObjectPose(8, "d", 1, 1, 2**23, 0, 0, 0), "invalid_field"),
        (OwnershipRejected(1, 1, -1), "invalid_field"),
        (
            ClientPose(8, "d", PoseBody(0, 0x02, 0x0F, Physical(0, 0, 0, 0))),
            "physical_without_delta_flag",
        ),
        (ClientPose(8, "d", PoseBody(0, 0x04, 0x1F)), "invalid_body"),
        (
            ClientPose(8, "d", PoseBody(0, 0x08, 0x1F, right_hand=PlacedRotation(0, 0, 0, 0))),
            "invalid_body",
        ),
        (
            ClientPose(8, "d", PoseBody(0, 0, 0x1F, virtuals=(PlacedRotation(0, 0, 0, 0),) * 51)),
            "too_many_virtuals",
        ),
        (object(), "unknown_type"),
    ]
    for msg, reason in cases:
        with pytest.raises(ProtocolError) as info:
            encode(msg)  # type: ignore[arg-type]
        assert info.value.reason == reason, (msg, info.value)


def test_decode_accepts_bytes_like() -> None:
    payload = encode(ClientHello(8, 1, "dev"))
    assert decode(bytearray(payload)) == decode(memoryview(payload)) == decode(payload)


def test_error_pickles_with_reason() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ProtocolError("truncated", "detail")))
    assert err.reason == "truncated" and "detail" in str(err)


def test_struct_sizes_match_spec() -> None:
    # Guard against an accidental native-alignment format slipping in.
    assert struct.calcsize("<IHHdHbHbHbI") == 29
    assert len(encode(OwnershipChanged(1, 2, 3))) == 9
    assert len(encode(OwnershipRejected(1, 2, 1))) == 8
    assert len(encode(OwnershipRequest(8, "ab", 2, 7))) == 8 + 2
    assert len(encode(ObjectPose(8, "ab", 1, 2, 3, 4, 5, 6))) == 22 + 2
