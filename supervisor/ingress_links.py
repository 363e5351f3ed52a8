"""The ingress's node links (cluster mode): forwarding out, unicasts in.

* Forwarding: a message for a room whose owner is a shard of another node
  goes, in the same batch frames as a local one, to that shard's inlet over
  ``tcp://`` (one PUSH per remote shard and lane, created when first needed
  and dropped when the node leaves the view). The batch header names this
  node and every control identity in it carries this node's tag
  (relay/frames.py), so the owner's unicasts find their way back.
* Unicasts in: remote shards push unicasts for this node's clients to the
  cluster egress, which the ingress reads exactly like its local egress.

Every link is CURVE with the cluster key pair (relay/cluster/link_security.py).
A remote shard that is not reading makes its PUSH refuse (bounded by
FORWARD_HWM batches): the batch is dropped and counted, never queued forever.
"""

from __future__ import annotations

import logging
from collections import Counter

import zmq

from relay.cluster.link_security import LinkGuard, load_cluster_keys
from relay.cluster.view import ClusterView
from relay.endpoints import inlet_key

log = logging.getLogger("relay.ingress")

# Batch frames (each up to 128 messages) waiting for one remote shard lane.
FORWARD_HWM = 1_000


class IngressLinks:
    def __init__(self, ctx: zmq.Context, key_file: str, node_id: str, egress_endpoint: str,
                 affinity: int) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.guard = LinkGuard(ctx, load_cluster_keys(key_file))
        self.affinity = affinity
        self.egress = ctx.socket(zmq.PULL)
        self.guard.serve(self.egress)
        self.egress.setsockopt(zmq.AFFINITY, affinity)
        self.egress.setsockopt(zmq.LINGER, 0)
        self.egress.setsockopt(zmq.RCVHWM, 100_000)
        self.egress.bind(egress_endpoint)
        self._pushes: dict[tuple[str, int, int], zmq.Socket] = {}
        self._endpoints: dict[str, dict[str, str]] = {}
        self.counts: Counter[str] = Counter()

    def follow(self, view: ClusterView) -> None:
        """Drop the links of nodes that left (or restarted with other endpoints)."""
        live = {n.node_id: n.endpoints for n in view.nodes if n.node_id != self.node_id}
        for key in list(self._pushes):
            node_id = key[0]
            if live.get(node_id) != self._endpoints.get(node_id):
                self._pushes.pop(key).close()
        self._endpoints = live

    def forward(self, node_id: str, shard: int, lane: int, frame: bytes, count: int) -> bool:
        """Send one batch frame to a remote shard's inlet; False if it must be dropped."""
        key = (node_id, shard, lane)
        push = self._pushes.get(key)
        if push is None:
            endpoint = self._endpoints.get(node_id, {}).get(inlet_key(shard, lane))
            if endpoint is None:
                return False
            push = self.ctx.socket(zmq.PUSH)
            self.guard.join(push)
            push.setsockopt(zmq.AFFINITY, self.affinity)
            push.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, FORWARD_HWM)
            push.connect(endpoint)
            self._pushes[key] = push
        try:
            push.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.counts["forwarded_batches"] += 1
        self.counts["forwarded_messages"] += count
        return True

    def stats(self) -> dict[str, int]:
        return {**self.counts, **self.guard.stats(), "remote_links": len(self._pushes)}

    def close(self) -> None:
        for push in self._pushes.values():
            push.close()
        self._pushes.clear()
        self.egress.close()
        self.guard.close()
