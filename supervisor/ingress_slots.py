"""The ingress's pipes to this node's shard workers, following the slot layout.

A node runs one shard worker per slot; ``relayctl scale`` changes the number
of slots and a rolling restart gives a slot a new worker (a new incarnation,
with endpoints of its own, relay/endpoints.py). This module owns, per lane
and slot, the PUSH socket, the batch being built and the credit counters
(relay/frames.py), and changes them together when the layout changes:

1. every batch built under the old layout is pushed first;
2. each worker of the old layout gets a routing marker carrying the new one
   on its control pipe, behind those batches: a worker hands rooms over only
   once it has read everything routed to it by the old layout;
3. new slots and new incarnations get new pipes; pipes of workers that left
   the layout are closed once the marker is out (ZeroMQ linger).

The lists are changed in place, so the ingress's hot loop may keep references
to them.
"""

from __future__ import annotations

import logging
from collections import Counter

import zmq

from relay.endpoints import INTERNAL_RECONNECT_MS, NodeEndpoints
from relay.frames import BatchBuilder
from relay.protocol.messages import Lane

log = logging.getLogger("relay.ingress")

LANES = (Lane.CONTROL, Lane.TRANSFORM)
# A retired worker's pipe stays open this long after its marker so that the
# marker and the batches before it are delivered (it reads until the marker).
RETIRED_PIPE_LINGER_MS = 5000
# How long the ingress waits for room in a full control pipe to push a marker.
MARKER_SEND_TIMEOUT_MS = 1000


class ShardSlots:
    """Per (lane, slot): PUSH socket, batch builder, credit counters."""

    def __init__(self, ctx: zmq.Context, endpoints: NodeEndpoints, origin: int,
                 hwm: dict[int, int], affinity: dict[int, int]) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.origin = origin
        self.hwm = hwm
        self.affinity = affinity
        self.slots: list[int] = []
        self.pushes: dict[int, list[zmq.Socket]] = {lane: [] for lane in LANES}
        self.batches: dict[int, list[BatchBuilder]] = {lane: [] for lane in LANES}
        # [messages, bytes] pushed and echoed as read (relay/frames.py, credit).
        self.pushed: dict[int, list[list[int]]] = {lane: [] for lane in LANES}
        self.acked: dict[int, list[list[int]]] = {lane: [] for lane in LANES}
        self.high_water: dict[int, list[int]] = {lane: [] for lane in LANES}
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.slots)

    def _connect(self, lane: int, slot: int, incarnation: int) -> zmq.Socket:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.AFFINITY, self.affinity[lane])
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, self.hwm[lane])
        # A worker that binds after this connect (start, restart) is reached
        # within 10 ms, not libzmq's default 100 ms retry.
        push.setsockopt(zmq.RECONNECT_IVL, INTERNAL_RECONNECT_MS)
        push.connect(self.endpoints.shard_inbox(slot, lane, incarnation))
        return push

    def open(self, slots: list[int]) -> None:
        """The first layout: one pipe per lane and slot, counters at zero."""
        self.slots = list(slots)
        for lane in LANES:
            for slot, incarnation in enumerate(slots):
                self.pushes[lane].append(self._connect(lane, slot, incarnation))
                self.batches[lane].append(BatchBuilder(lane, self.origin))
                self.pushed[lane].append([0, 0])
                self.acked[lane].append([0, 0])
                self.high_water[lane].append(0)

    def mark(self, marker: bytes) -> None:
        """Push a routing marker to every current worker (behind its batches)."""
        for slot, push in enumerate(self.pushes[Lane.CONTROL]):
            self._send_marker(slot, push, marker)

    def mark_period(self, marker: bytes) -> None:
        """Push a period marker (relay/frames.py) to every current worker, behind
        the poses just pushed. A full pipe skips it: the worker's broadcast
        then waits out its bound, and ``period_marker_skipped`` counts it."""
        for push in self.pushes[Lane.TRANSFORM]:
            try:
                push.send(marker, zmq.NOBLOCK)
            except zmq.Again:
                self.counts["period_marker_skipped"] += 1

    def _send_marker(self, slot: int, push: zmq.Socket, marker: bytes) -> None:
        # Not subject to credit: a few hundred bytes, and a worker that never
        # sees it would keep rooms the new layout gives to another.
        try:
            push.send(marker, zmq.NOBLOCK)
        except zmq.Again:
            if push.poll(MARKER_SEND_TIMEOUT_MS, zmq.POLLOUT):
                push.send(marker, zmq.NOBLOCK)
            else:
                self.counts["marker_failed"] += 1
                log.error("routing marker for shard slot %d not sent: its pipe stayed full", slot)
                return
        self.counts["markers_sent"] += 1

    def change(self, slots: list[int], marker: bytes) -> None:
        """Switch to a new layout (see the module docstring for the order).

        The caller has pushed every pending batch already.
        """
        old = self.slots
        self.mark(marker)
        for lane in LANES:
            pushes, batches = self.pushes[lane], self.batches[lane]
            pushed, acked, high = self.pushed[lane], self.acked[lane], self.high_water[lane]
            for slot in range(len(slots), len(old)):
                self._retire(pushes[slot])
            del pushes[len(slots):], batches[len(slots):], pushed[len(slots):]
            del acked[len(slots):], high[len(slots):]
            for slot, incarnation in enumerate(slots):
                if slot < len(old) and old[slot] == incarnation:
                    continue
                push = self._connect(lane, slot, incarnation)
                if lane == Lane.CONTROL:
                    # A worker started before this layout was written routes
                    # by the one it read at start: first thing, the new one.
                    self._send_marker(slot, push, marker)
                if slot < len(old):
                    # A new worker for this slot: what its predecessor was
                    # sent it read up to the marker, so nothing is in flight
                    # to the new one (totals stay cumulative per slot).
                    self._retire(pushes[slot])
                    pushes[slot] = push
                    acked[slot][0], acked[slot][1] = pushed[slot]
                else:
                    pushes.append(push)
                    batches.append(BatchBuilder(lane, self.origin))
                    pushed.append([0, 0])
                    acked.append([0, 0])
                    high.append(0)
        self.slots = list(slots)
        self.counts["layout_changes"] += 1

    @staticmethod
    def _retire(push: zmq.Socket) -> None:
        push.setsockopt(zmq.LINGER, RETIRED_PIPE_LINGER_MS)
        push.close()

    def close(self) -> None:
        for lane in LANES:
            for push in self.pushes[lane]:
                push.close()
