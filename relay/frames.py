"""Internal frame formats between ingress and shards.

ingress -> shard:  one frame: batch header + records (one pipe per lane)
shard -> ingress:  [header, room_id, payload, identity_1, ..., identity_k]
shard -> proxy:    [topic, payload]          (plain PUB, topic = room or room\\0obj)

Inbound messages travel in batches: every message the ingress drains from a
ROUTER in one pass is packed into a single frame per shard, so the per-message
ZeroMQ cost is paid once per batch on both sides of the hop. A batch costs no
latency: it is sent as soon as the pass ends.

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


# Batch frame: BATCH_HEADER (lane, origin), then per message RECORD
# (receive time ns, identity length, room length, payload length) followed by
# the identity, room and payload bytes.
BATCH_HEADER = struct.Struct("<BH")
RECORD = struct.Struct("<qBBI")


class BatchError(ValueError):
    """A batch frame that does not parse: a bug or a foreign peer, never a client."""


def iter_batch(frame: bytes):
    """Yield (lane, origin, recv_ns, identity, room, payload) for each record."""
    if len(frame) < BATCH_HEADER.size:
        raise BatchError("short batch header")
    lane, origin = BATCH_HEADER.unpack_from(frame, 0)
    offset = BATCH_HEADER.size
    end = len(frame)
    unpack = RECORD.unpack_from
    size = RECORD.size
    while offset < end:
        if offset + size > end:
            raise BatchError("truncated record header")
        recv_ns, id_len, room_len, payload_len = unpack(frame, offset)
        offset += size
        room_at = offset + id_len
        payload_at = room_at + room_len
        next_offset = payload_at + payload_len
        if next_offset > end:
            raise BatchError("truncated record")
        yield lane, origin, recv_ns, frame[offset:room_at], frame[room_at:payload_at], frame[payload_at:next_offset]
        offset = next_offset


class BatchBuilder:
    """Accumulates records for one shard; ``take()`` returns the frame to send."""

    __slots__ = ("_parts", "count", "_head")

    def __init__(self, lane: int, origin: int = LOCAL_NODE) -> None:
        self._head = BATCH_HEADER.pack(lane, origin)
        self._parts: list[bytes] = [self._head]
        self.count = 0

    def add(self, recv_ns: int, identity: bytes, room: bytes, payload: bytes) -> None:
        self._parts += (RECORD.pack(recv_ns, len(identity), len(room), len(payload)), identity, room, payload)
        self.count += 1

    def take(self) -> bytes:
        frame = b"".join(self._parts)
        self._parts = [self._head]
        self.count = 0
        return frame


def unicast_frames(
    room_id: bytes, payload: bytes, identities: list[bytes] | tuple[bytes, ...], recv_ns: int = 0
) -> list[bytes]:
    return [HEADER.pack(Lane.CONTROL, LOCAL_NODE, recv_ns), room_id, payload, *identities]
