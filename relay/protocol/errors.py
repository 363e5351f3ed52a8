"""The single exception type of the protocol layer.

Every malformed, misplaced or unencodable message surfaces as ProtocolError so
callers need exactly one ``except`` clause on the hot path. ``reason`` is a
short, stable category (it becomes a Prometheus label value, so it must have
low cardinality); the human-readable detail goes into the message string.
"""

from __future__ import annotations

# Known reasons, listed so dashboards and tests can rely on a closed set.
TRUNCATED = "truncated"
BAD_UTF8 = "bad_utf8"
UNKNOWN_TYPE = "unknown_type"
UNEXPECTED_TYPE = "unexpected_type"
WRONG_LANE = "wrong_lane"
VERSION = "version"
EMPTY_DEVICE_ID = "empty_device_id"
TRAILING_BYTES = "trailing_bytes"
TOO_MANY_VIRTUALS = "too_many_virtuals"
PHYSICAL_WITHOUT_DELTA_FLAG = "physical_without_delta_flag"
ROOM_TOO_LONG = "room_too_long"
FRAME_COUNT = "frame_count"
# Encode-side reasons.
STR_TOO_LONG = "str_too_long"
COUNT_TOO_LARGE = "count_too_large"
INVALID_BODY = "invalid_body"
INVALID_FIELD = "invalid_field"

REASONS = frozenset(
    {
        TRUNCATED,
        BAD_UTF8,
        UNKNOWN_TYPE,
        UNEXPECTED_TYPE,
        WRONG_LANE,
        VERSION,
        EMPTY_DEVICE_ID,
        TRAILING_BYTES,
        TOO_MANY_VIRTUALS,
        PHYSICAL_WITHOUT_DELTA_FLAG,
        ROOM_TOO_LONG,
        FRAME_COUNT,
        STR_TOO_LONG,
        COUNT_TOO_LARGE,
        INVALID_BODY,
        INVALID_FIELD,
    }
)


class ProtocolError(Exception):
    """A payload or frame set that must be dropped, or a message that cannot be encoded."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # type: ignore[override]
        # Default exception pickling replays only the message; workers may ship
        # errors across processes, so keep the reason intact.
        return (type(self), (self.reason, self.detail))
