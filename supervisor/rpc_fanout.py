"""Room RPCs fanned out by the ingress itself: one process crossing, not three.

A room RPC is the commonest control message and the one with the widest
fan-out: through the shard it crosses ingress -> shard -> ingress, two
wake-ups of other processes before the first recipient gets it, and under a
noisy neighbour each is a scheduling delay (BENCHMARKS.md, "Where the
noisy-neighbour tail is"). What the shard adds to an RPC is small: the
sender's resolved client number and the recipients, both functions of the
room's members with a control connection. So the owning shard publishes that
table (``Room.rpc_routes``, relay/frames.py ``ROUTES_LANE``) whenever it
changes, in order with its unicasts, and this class decides, per RPC, whether
the ingress may deliver it from the table:

- the room's shard is on this node and has published a table (none while a
  member's connection is on another node, the room is over
  ``ROUTES_MAX_MEMBERS``, or fast path is off);
- nothing this ingress pushed for the room is still unhandled: the shard's
  last DONE (relay/frames.py) covers the room's last control message, so
  everything that message caused, a new member's mapping, a rebound
  connection's table, is already in this process. An RPC behind a hello, an
  ownership request or a stranger's message therefore goes through the
  shard, in order behind it, and per-sender order holds on both paths. A
  variable write by a member of the table on its own connection does not
  hold RPCs back: it cannot change the table, and its sync leaves at the
  room's next flush, which RPCs sent after the write may precede (in the
  reference they always do: it flushes on its tick);
- the payload is a valid RPC (the same decoder the shard uses) and its
  deviceId is a member whose control connection is the sender's.

Then the payload leaves as the shard would have re-encoded it (a valid RPC
round-trips byte for byte, so only senderClientNo is patched), to every
control identity of the table or to the listed numbers, and the RPC goes on
to the shard with the next tick's poses (``DELIVERED_LANE``) to register the
sender as heard from. A timer's output (an NV flush, a timeout's mapping)
that is still in the shard's pipe may be overtaken by such an RPC: the
order a client sees is then the one it would have seen had the RPC arrived
a moment earlier, never one that contradicts what any sender sent.

Pure state, no I/O: the ingress feeds it route tables, pushes and DONE marks.
"""

from __future__ import annotations

import struct

from relay.frames import TAG_SIZE, BatchError, decode_routes
from relay.protocol import ProtocolError, decode_client_payload
from relay.protocol.messages import Lane, MsgType, Rpc

__all__ = ["RoomRoutes", "RpcFanout"]

_RPC = bytes((int(MsgType.RPC),))
# Variable writes: their sync leaves at the room's next flush, after RPCs that
# follow them (the reference flushes on its tick), so one from a member on
# its own connection changes nothing an RPC behind it depends on.
_WRITES = frozenset((int(MsgType.GLOBAL_VAR_SET), int(MsgType.CLIENT_VAR_SET)))
_CLIENT_NO = struct.Struct("<H")


class RoomRoutes:
    """One room's published table, keyed for the fan-out."""

    __slots__ = ("shard", "senders", "by_number", "everyone")

    def __init__(self, shard: int, entries: list[tuple[int, bytes, bytes]], tag: bytes) -> None:
        self.shard = shard
        # deviceId (UTF-8, as on the wire) -> (client number, tagged control identity)
        self.senders: dict[bytes, tuple[int, bytes]] = {}
        # client number -> control identity as the ROUTER knows it (untagged)
        self.by_number: dict[int, bytes] = {}
        for client_no, device_id, identity in entries:
            if identity[:TAG_SIZE] != tag:
                raise BatchError("route to another node's connection")
            device_id.decode("utf-8")  # a table is valid UTF-8 or refused whole
            self.senders[device_id] = (client_no, identity)
            self.by_number[client_no] = identity[TAG_SIZE:]
        self.everyone = tuple(self.by_number.values())


class RpcFanout:
    """Which RPCs the ingress may deliver itself, and to whom."""

    def __init__(self, tag: bytes, shards: int) -> None:
        self.tag = tag
        self.rooms: dict[bytes, RoomRoutes] = {}
        # Room -> (shard, the push count of its last control message there):
        # the room is on the slow path until the shard's DONE reaches it.
        self.last_push: dict[bytes, tuple[int, int]] = {}
        # Per local shard: control messages handled (DONE), this ingress's epoch.
        self.done = [0] * shards
        self.counts = {"fast": 0, "fast_recipients": 0, "slow_pending": 0, "slow_sender": 0,
                       "tables": 0, "tables_bad": 0}

    # ------------------------------------------------------------ updates

    def set_table(self, shard: int, room: bytes, table: bytes) -> None:
        """A route table from ``shard``; an empty one (or a bad one) drops the room."""
        self.counts["tables"] += 1
        if not table:
            self.rooms.pop(room, None)
            return
        try:
            self.rooms[room] = RoomRoutes(shard, decode_routes(table), self.tag)
        except (BatchError, UnicodeDecodeError):
            self.counts["tables_bad"] += 1
            self.rooms.pop(room, None)

    def blocks(self, identity: bytes, room: bytes, payload: bytes) -> bool:
        """Whether a control message sent to the shard must be handled before
        the room's next RPC may be fanned out here: anything but a variable
        write by a member of the table on its own connection."""
        if not payload or payload[0] not in _WRITES or len(payload) < 4:
            return True
        routes = self.rooms.get(room)
        if routes is None:
            return True
        sender = routes.senders.get(payload[4:4 + payload[3]])
        return sender is None or sender[1] != identity

    def pushed(self, room: bytes, shard: int, count: int) -> None:
        """The room's control message number ``count`` (this ingress's running
        total for ``shard``) is on its way to the shard."""
        self.last_push[room] = (shard, count)

    def handled(self, shard: int, count: int) -> None:
        """The shard's DONE: every control message up to ``count`` is handled."""
        if 0 <= shard < len(self.done) and count > self.done[shard]:
            self.done[shard] = count

    def reset_shard(self, shard: int, pushed: int) -> None:
        """A (re)started shard: its tables are gone with its predecessor, and
        what was pushed to that one will never be reported."""
        if 0 <= shard < len(self.done):
            self.done[shard] = pushed
        for room in [r for r, routes in self.rooms.items() if routes.shard == shard]:
            del self.rooms[room]

    def relayout(self, old: list[int], new: list[int], pushed: list[int]) -> None:
        """A new slot layout (incarnation per slot): a slot with a new worker
        or none any more loses its tables, and nothing pushed before is in
        flight to a new worker (relay/frames.py, ShardSlots.change)."""
        for slot in range(len(new), len(old)):
            self.reset_shard(slot, 0)
        del self.done[len(new):]
        for slot, incarnation in enumerate(new):
            if slot >= len(self.done):
                self.done.append(pushed[slot])
            elif old[slot] != incarnation:
                self.reset_shard(slot, pushed[slot])

    def _is_handled(self, last: tuple[int, int]) -> bool:
        """Whether the control message ``last`` (shard, push count) is handled.
        A slot that is gone read everything up to the layout's marker before
        it handed its rooms over and retired."""
        shard, count = last
        return shard >= len(self.done) or self.done[shard] >= count

    def prune(self) -> None:
        """Forget rooms whose last control message is handled (bounds ``last_push``
        by the messages in flight)."""
        for room in [r for r, last in self.last_push.items() if self._is_handled(last)]:
            del self.last_push[room]

    # ------------------------------------------------------------- decide

    def plan(self, identity: bytes, room: bytes, payload: bytes, shard: int) -> tuple[bytes, tuple[bytes, ...]] | None:
        """(payload to send, untagged recipients) if the ingress may deliver this
        message itself, else None (it goes to the room's shard as before).
        ``identity`` is the sender's tagged control identity, ``shard`` the
        local shard the room routes to now (a table from another is void)."""
        if payload[:1] != _RPC:
            return None
        routes = self.rooms.get(room)
        if routes is None or routes.shard != shard:
            return None
        last = self.last_push.get(room)
        if last is not None:
            if not self._is_handled(last):
                self.counts["slow_pending"] += 1
                return None
            del self.last_push[room]
        try:
            msg = decode_client_payload(Lane.CONTROL, payload)
        except ProtocolError:
            return None  # the shard drops it, with its counter and log line
        if type(msg) is not Rpc:
            return None
        sender = routes.senders.get(payload[4:4 + payload[3]])  # deviceId as sent
        if sender is None or sender[1] != identity:
            # A new member or a new connection: the shard registers it first.
            self.counts["slow_sender"] += 1
            return None
        if msg.target_client_nos:
            by_number = routes.by_number
            recipients = tuple(by_number[no] for no in dict.fromkeys(msg.target_client_nos) if no in by_number)
        else:
            recipients = routes.everyone
        self.counts["fast"] += 1
        self.counts["fast_recipients"] += len(recipients)
        return payload[:1] + _CLIENT_NO.pack(sender[0]) + payload[3:], recipients
