"""Internal frame formats between ingress and shards.

ingress -> shard:  one frame: batch header + records (one pipe per lane)
shard -> ingress:  [header, room_id, payload, identities (packed, see pack_identities)]
shard -> proxy:    [topic, payload]          (plain PUB, topic = room or room\\0obj)

Inbound messages travel in batches: every message the ingress drains from a
ROUTER in one pass is packed into a single frame per shard, so the per-message
ZeroMQ cost is paid once per batch on both sides of the hop. A batch costs no
latency: it is sent as soon as the pass ends.

The header carries the lane, a node number (in a batch: the node whose
ingress received it; in a unicast: the node whose egress must deliver it) and
the ingress receive time, so the ingress can observe control latency from
receipt to the hand-over of the reply to its ROUTER. Batches for a room owned
on another node travel to that node's shard inlet unchanged (cluster mode);
unicasts for clients of another node go to that node's cluster egress.

Credit: a ZeroMQ high-water mark counts frames, and a batch frame holds up to
128 messages, so an HWM alone would bound the ingress->shard queue only at
HWM x 128 messages of any size. Each batch header therefore carries the
ingress's running totals (messages and bytes pushed on that lane to that
shard, this batch included) and the ingress's epoch; the shard echoes the
totals of the last batch it read back on the egress pipe as a one-frame
CREDIT message. The ingress bounds ``pushed - echoed`` in messages and bytes.
Batches a crashed shard never read are covered by the next echo (totals are
cumulative), and echoes carrying another epoch (an earlier ingress) are
ignored. A shard that starts sends a RESET credit (epoch 0): a predecessor
may have taken the whole allowance into its buffers and died with it, and
without a batch read there would be no echo to release it. The ingress then
counts everything pushed so far as read; what is still in the pipe for the
new shard was admitted under the bound, so in flight stays below twice it.
"""

from __future__ import annotations

import struct
import time

from relay.protocol.messages import Lane

# Unicast header: lane, node number, then the clock (monotonic ns) at each hop
# of the control message that caused it: ingress receive, ingress push of its
# batch, shard read of the batch, shard rules done (queued), shard send to
# the egress. The ingress
# turns them into the per-hop breakdown of control latency (0 = not caused by
# a message, e.g. a timer's flush; the batch's push time sits between receive
# and read; CLOCK_MONOTONIC is one clock for all the
# processes of a machine, and hops are only measured for this node's shards).
HEADER = struct.Struct("<BHqqqqq")
HEADER_SIZE = HEADER.size
_SENT_AT = struct.Struct("<q")
_SENT_OFFSET = HEADER_SIZE - _SENT_AT.size
LOCAL_NODE = 0


# Batch frame: BATCH_HEADER (lane, origin, ingress epoch, messages pushed,
# bytes pushed -- running totals including this batch), then per message
# RECORD (receive time ns, identity length, room length, payload length)
# followed by the identity, room and payload bytes.
BATCH_HEADER = struct.Struct("<BHIQQq")  # ... and the push time (monotonic ns)
RECORD = struct.Struct("<qBBI")

# shard -> ingress on the egress pipe, one frame: tag, lane, shard index,
# ingress epoch, messages and bytes read (the totals of the last batch read).
CREDIT = struct.Struct("<BBHIQQ")
CREDIT_TAG = 0xFF
# The same frame with DONE_TAG: every control message up to these totals is
# handled, and all it caused (unicasts, route tables) is on the egress pipe
# before this frame. The ingress fans out a room's RPCs itself only while
# nothing it pushed for the room is beyond the shard's last DONE
# (supervisor/rpc_fanout.py). Unlike credit it is sent at once, but only with
# the shard's control queue empty.
DONE_TAG = 0xFC
# Epoch of a credit sent by a shard at start: "everything before me is gone".
RESET_EPOCH = 0
# A credit frame must never be mistaken for a unicast header (and vice versa).
assert CREDIT.size != HEADER_SIZE


def batch_mark(frame: bytes) -> tuple[int, int, int]:
    """(ingress epoch, messages pushed, bytes pushed) from a batch header."""
    if len(frame) < BATCH_HEADER.size:
        raise BatchError("short batch header")
    _lane, _origin, epoch, messages, nbytes, _pushed = BATCH_HEADER.unpack_from(frame, 0)
    return epoch, messages, nbytes


def batch_pushed_at(frame: bytes) -> int:
    """When the ingress pushed this batch (monotonic ns)."""
    return BATCH_HEADER.unpack_from(frame, 0)[5]


def credit_frame(lane: int, shard: int, epoch: int, messages: int, nbytes: int) -> bytes:
    return CREDIT.pack(CREDIT_TAG, lane, shard, epoch, messages, nbytes)


def _credit_fields(frame: bytes, tag: int) -> tuple[int, int, int, int, int] | None:
    """(lane, shard, epoch, messages, bytes) of a CREDIT-shaped frame with ``tag``, else None."""
    if len(frame) != CREDIT.size or frame[0] != tag:
        return None
    return CREDIT.unpack(frame)[1:]


def parse_credit(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """(lane, shard, epoch, messages, bytes) of a credit frame, else None."""
    return _credit_fields(frame, CREDIT_TAG)


def done_frame(shard: int, epoch: int, messages: int) -> bytes:
    return CREDIT.pack(DONE_TAG, Lane.CONTROL, shard, epoch, messages, 0)


def parse_done(frame: bytes) -> tuple[int, int, int] | None:
    """(shard, epoch, control messages handled) of a DONE frame, else None."""
    fields = _credit_fields(frame, DONE_TAG)
    return None if fields is None else fields[1:4]


# ingress -> shard on the control inlet, one frame: MARKER_TAG, then the
# routing the ingress uses from this frame on (cluster view and this node's
# slot layout, relay/cluster/view.py ``encode_layout``). Every batch the
# ingress routed by the previous layout was pushed before it, so a shard that
# reads the marker has read them all: only then does it hand over the rooms
# that moved (or, if its slot is gone or has a new incarnation, all of them),
# and the new owner, which waits for the lease, sees every client's messages
# in the order they were sent. A batch header starts with its lane (0 or 1).
MARKER_TAG = 0xFE
_MARKER_PREFIX = bytes((MARKER_TAG,))


def routing_marker(layout: bytes) -> bytes:
    return _MARKER_PREFIX + layout


def parse_marker(frame: bytes) -> bytes | None:
    """The layout a routing marker carries, or None for any other frame."""
    if frame[:1] != _MARKER_PREFIX:
        return None
    return frame[1:]


# ingress -> shard on the transform inlet, one frame: PERIOD_TAG, then the
# index of the broadcast tick (relay/tick_grid.py) whose poses the ingress has
# just read and pushed, every one of them before this frame. A shard holds
# that tick's broadcast until it has read the marker (bounded), so that the
# broadcast has the period's poses even when the ingress's read ran late.
PERIOD_TAG = 0xFD
_PERIOD = struct.Struct("<Bq")


def period_marker(tick: int) -> bytes:
    return _PERIOD.pack(PERIOD_TAG, tick)


def parse_period(frame: bytes) -> int | None:
    """The tick a period marker closes, or None for any other frame."""
    if len(frame) != _PERIOD.size or frame[0] != PERIOD_TAG:
        return None
    return _PERIOD.unpack(frame)[1]


# Lane of an ingress batch on the transform inlet whose records are room RPCs
# the ingress has already fanned out to every recipient (supervisor/
# rpc_fanout.py): the shard only registers the sender as heard from. They
# ride with the next tick's poses: nothing waits for them.
DELIVERED_LANE = 2
# Lane in a unicast header (shard -> ingress) of a room's RPC route table
# instead of a unicast: [header, room, table, shard index] (``routes_frames``).
ROUTES_LANE = 3
_ROUTE_ENTRY = struct.Struct("<HB")


def encode_routes(entries: list[tuple[int, bytes, bytes]]) -> bytes:
    """A room's RPC route table: (client number, deviceId UTF-8, tagged control
    identity) per member with a control connection. Empty: the ingress must
    leave the room's RPCs to the shard."""
    return b"".join([_ROUTE_ENTRY.pack(no, len(dev)) + dev + bytes((len(ident),)) + ident
                     for no, dev, ident in entries])


def decode_routes(table: bytes) -> list[tuple[int, bytes, bytes]]:
    """The entries of ``encode_routes``; raises BatchError if truncated."""
    out = []
    pos, end, size = 0, len(table), _ROUTE_ENTRY.size
    while pos < end:
        if pos + size > end:
            raise BatchError("truncated route entry")
        no, dev_len = _ROUTE_ENTRY.unpack_from(table, pos)
        dev_at = pos + size
        id_len_at = dev_at + dev_len
        if id_len_at >= end:
            raise BatchError("truncated route entry")
        id_end = id_len_at + 1 + table[id_len_at]
        if id_end > end:
            raise BatchError("truncated route entry")
        out.append((no, table[dev_at:id_len_at], table[id_len_at + 1:id_end]))
        pos = id_end
    return out


_SHARD = struct.Struct("<H")


def routes_frames(room_id: bytes, table: bytes, node: int, shard: int) -> list[bytes]:
    """The egress message carrying shard ``shard``'s route table for a room
    (in order with its unicasts); the last frame names the shard."""
    return [HEADER.pack(ROUTES_LANE, node, 0, 0, 0, 0, 0), room_id, table, _SHARD.pack(shard)]


def routes_shard(frame: bytes) -> int:
    """The shard of a route-table message (its last frame); BatchError if malformed."""
    if len(frame) != _SHARD.size:
        raise BatchError("bad route table sender")
    return _SHARD.unpack(frame)[0]


class BatchError(ValueError):
    """A batch frame that does not parse: a bug or a foreign peer, never a client."""


def iter_batch(frame: bytes):
    """Yield (lane, origin, recv_ns, identity, room, payload) for each record."""
    if len(frame) < BATCH_HEADER.size:
        raise BatchError("short batch header")
    lane, origin, _epoch, _messages, _nbytes, _pushed = BATCH_HEADER.unpack_from(frame, 0)
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

    __slots__ = ("_parts", "count", "nbytes", "lane", "origin")

    def __init__(self, lane: int, origin: int = LOCAL_NODE) -> None:
        self.lane = lane
        self.origin = origin
        self._parts: list[bytes] = [b""]  # [0] becomes the header in take()
        self.count = 0
        self.nbytes = 0

    def add(self, recv_ns: int, identity: bytes, room: bytes, payload: bytes) -> None:
        self._parts += (RECORD.pack(recv_ns, len(identity), len(room), len(payload)), identity, room, payload)
        self.count += 1
        self.nbytes += RECORD.size + len(identity) + len(room) + len(payload)

    def take(self, epoch: int = 0, messages_before: int = 0, bytes_before: int = 0) -> bytes:
        """The batch frame; the header carries the totals including this batch."""
        self._parts[0] = BATCH_HEADER.pack(
            self.lane, self.origin, epoch, messages_before + self.count, bytes_before + self.nbytes,
            time.monotonic_ns(),
        )
        frame = b"".join(self._parts)
        self._parts = [b""]
        self.count = 0
        self.nbytes = 0
        return frame

    def clear(self) -> None:
        """Forget the records (a batch refused before it was built)."""
        self._parts = [b""]
        self.count = 0
        self.nbytes = 0


def unicast_frames(
    room_id: bytes,
    payload: bytes,
    identities: list[bytes] | tuple[bytes, ...],
    recv_ns: int = 0,
    node: int = LOCAL_NODE,
    pushed_ns: int = 0,
    read_ns: int = 0,
    queued_ns: int = 0,
) -> list[bytes]:
    """A unicast for the clients ``identities``, all connected to node ``node``.

    The identities travel packed in one frame (``pack_identities``): a fan-out
    to 30 members is 4 frames on the egress pipe, not 33.
    """
    return [HEADER.pack(Lane.CONTROL, node, recv_ns, pushed_ns, read_ns, queued_ns, 0), room_id, payload,
            pack_identities(identities)]


def pack_identities(identities: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Each identity behind a one-byte length (tagged routing ids are at most 255 bytes)."""
    return b"".join([bytes((len(i),)) + i for i in identities])


def unpack_identities(packed: bytes) -> list[bytes]:
    """The identities of ``pack_identities``; raises BatchError on a truncated frame."""
    out = []
    pos, end = 0, len(packed)
    while pos < end:
        n = packed[pos]
        nxt = pos + 1 + n
        if nxt > end:
            raise BatchError("truncated identity list")
        out.append(packed[pos + 1:nxt])
        pos = nxt
    return out


def stamp_sent(header: bytes, now_ns: int) -> bytes:
    """The unicast header with the shard's send time filled in."""
    return header[:_SENT_OFFSET] + _SENT_AT.pack(now_ns)


# Control-lane routing ids are tagged with the number of the node whose
# ingress holds the connection (2 bytes, big-endian, then ZeroMQ's own id), so
# whichever shard owns the room -- on this node or another -- knows which
# node's egress can deliver a unicast to that client. Rooms keep tagged ids.
TAG = struct.Struct(">H")
TAG_SIZE = TAG.size


def node_tag(number: int) -> bytes:
    return TAG.pack(number)


def tag_of(identity: bytes) -> int:
    """The node number a tagged control identity belongs to."""
    return TAG.unpack_from(identity)[0]
