"""Client-side quantisation helpers (PROTOCOL §5.3).

The relay itself never quantises (it relays pose bytes verbatim), so these
live with the tests, which check them against the golden vectors; they are not
installed (tests/test_packaging.py checks that). Arithmetic is binary64 like the
reference (Unity uses binary32 and may differ by one step at exact halves).
"""

from __future__ import annotations

import math

__all__ = [
    "ABS_POS_SCALE",
    "I16_MAX",
    "I16_MIN",
    "I24_MAX",
    "I24_MIN",
    "IDENTITY_QUAT32",
    "REL_POS_SCALE",
    "DELTA_POS_SCALE",
    "YAW_SCALE",
    "i24_from_le",
    "i24_le",
    "quantize_i16",
    "quantize_i24",
    "quat_compress",
    "quat_decompress",
]

ABS_POS_SCALE = 0.01  # head / object position, i24
DELTA_POS_SCALE = 0.01  # XR-origin delta or moving-floor physical position, i16
REL_POS_SCALE = 0.005  # hand / virtual offset from head, i16
YAW_SCALE = 0.1  # physical yaw in degrees, i16

I16_MIN, I16_MAX = -32768, 32767
I24_MIN, I24_MAX = -8388608, 8388607

IDENTITY_QUAT32 = 0xE0080200

_QMAX = 0.70710677
_QRANGE = 1.41421354
_QSTEPS = 1023


def _quantize(value: float, scale: float, lo: int, hi: int) -> int:
    q = value / scale
    # NaN has no meaningful position; 0 keeps the pose sendable. Infinities
    # clamp like any other out-of-range value.
    if q != q:
        return 0
    if math.isinf(q):
        return hi if q > 0 else lo
    # Python's round() on floats is round-half-even, as the spec requires.
    return min(max(round(q), lo), hi)


def quantize_i16(value: float, scale: float) -> int:
    """clamp(round_half_even(value / scale)) to the i16 range."""
    return _quantize(value, scale, I16_MIN, I16_MAX)


def quantize_i24(value: float, scale: float) -> int:
    """clamp(round_half_even(value / scale)) to the i24 range."""
    return _quantize(value, scale, I24_MIN, I24_MAX)


def i24_le(value: int) -> bytes:
    """Three little-endian two's-complement bytes of an i24."""
    if not I24_MIN <= value <= I24_MAX:
        raise ValueError(f"{value} outside the i24 range")
    return (value & 0xFFFFFF).to_bytes(3, "little")


def i24_from_le(data: bytes) -> int:
    """Inverse of i24_le."""
    if len(data) != 3:
        raise ValueError("an i24 is exactly 3 bytes")
    return int.from_bytes(data, "little", signed=True)


def quat_compress(x: float, y: float, z: float, w: float) -> int:
    """Smallest-three packing of a quaternion into a u32 (identity -> 0xE0080200)."""
    q = [x, y, z, w]
    n2 = x * x + y * y + z * z + w * w
    if not math.isfinite(n2) or n2 <= 1e-12:
        q = [0.0, 0.0, 0.0, 1.0]
    else:
        inv = 1.0 / math.sqrt(n2)
        q = [c * inv for c in q]
    largest = 0
    for i in range(1, 4):
        # Strict comparison: the first index wins ties.
        if abs(q[i]) > abs(q[largest]):
            largest = i
    if q[largest] < 0:
        q = [-c for c in q]
    packed = largest
    for i in range(4):
        if i == largest:
            continue
        c = min(max(q[i], -_QMAX), _QMAX)
        k = round((c + _QMAX) / _QRANGE * _QSTEPS)
        packed = (packed << 10) | min(max(k, 0), _QSTEPS)
    return packed


def quat_decompress(packed: int) -> tuple[float, float, float, float]:
    """Unpack a quat32 into a normalised (x, y, z, w); the largest component is >= 0."""
    largest = (packed >> 30) & 3
    small = [-_QMAX + _QRANGE * (((packed >> shift) & 0x3FF) / _QSTEPS) for shift in (20, 10, 0)]
    rest = 1.0 - sum(c * c for c in small)
    small.insert(largest, math.sqrt(max(0.0, rest)))
    norm = math.sqrt(sum(c * c for c in small))
    if norm == 0.0:
        return (0.0, 0.0, 0.0, 1.0)
    x, y, z, w = (c / norm for c in small)
    return (x, y, z, w)
