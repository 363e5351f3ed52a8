"""Internal frame formats between ingress and shards.

ingress -> shard:  [header, identity, room_id, payload]
shard -> ingress:  [header, room_id, payload, identity_1, ..., identity_k]
shard -> proxy:    [topic, payload]          (plain PUB, topic = room or room\\0obj)

The header carries the lane, the origin node (a seam for the planned cluster:
the owner of a room sends unicasts back to the node whose ingress holds the
client's connection) and the ingress receive time, so the ingress can observe
control latency from receipt to the hand-over of the reply to its ROUTER.
"""

from __future__ import annotations

import struct

from relay.protocol.messages import Lane

HEADER = struct.Struct("<BHq")  # lane, origin node id, receive time (monotonic ns)
HEADER_SIZE = HEADER.size
LOCAL_NODE = 0

CONTROL_HEADER_PREFIX = bytes([Lane.CONTROL])


def pack_header(lane: int, recv_ns: int, origin: int = LOCAL_NODE) -> bytes:
    return HEADER.pack(lane, origin, recv_ns)


def unpack_header(header: bytes) -> tuple[int, int, int]:
    """(lane, origin, recv_ns). Raises struct.error on a foreign frame."""
    return HEADER.unpack(header)


def unicast_frames(
    room_id: bytes, payload: bytes, identities: list[bytes] | tuple[bytes, ...], recv_ns: int = 0
) -> list[bytes]:
    return [HEADER.pack(Lane.CONTROL, LOCAL_NODE, recv_ns), room_id, payload, *identities]
