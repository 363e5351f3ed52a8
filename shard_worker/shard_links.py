"""A shard's node links (cluster mode): inlets, admin, egress and PUB to other nodes.

* Inlets: other nodes' ingresses push batches for this shard's rooms to two
  PULL sockets (control, transform) on the advertise address.
* Admin: other nodes' REST bridges ask this shard about its rooms.
* Egress: unicasts for clients connected to another node go to that node's
  cluster egress (one PUSH per node, by node number: the tag of the
  recipient's identity, relay/frames.py).
* Broadcasts: one PUB connected to every other node's cluster XSUB; those
  proxies forward subscriptions upstream, so only rooms somebody subscribed
  to cross the network.

All links are CURVE with the cluster key pair and follow the view: links to
nodes that left are closed, new nodes are connected.
"""

from __future__ import annotations

import errno
from collections import Counter

import zmq

from relay.cluster.link_security import LinkGuard, load_cluster_keys
from relay.cluster.view import ClusterView
from relay.endpoints import admin_key, inlet_key
from relay.protocol.messages import Lane

# Unicast frames waiting for one remote node's egress before they are refused.
REMOTE_EGRESS_HWM = 100_000


class ShardLinks:
    def __init__(self, ctx: zmq.Context, key_file: str, my_endpoints: dict[str, str], shard: int,
                 node_id: str) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.guard = LinkGuard(ctx, load_cluster_keys(key_file))
        self.inlets: dict[int, zmq.Socket] = {}
        # Sockets whose port is still held by the worker this one replaces
        # (rolling restart: both run for a moment); bound once it has gone.
        self.unbound: list[tuple[zmq.Socket, str]] = []
        for lane in (Lane.CONTROL, Lane.TRANSFORM):
            sock = ctx.socket(zmq.PULL)
            self.guard.serve(sock)
            sock.setsockopt(zmq.LINGER, 0)
            self._bind(sock, my_endpoints[inlet_key(shard, lane)])
            self.inlets[lane] = sock
        self.admin = ctx.socket(zmq.ROUTER)
        self.guard.serve(self.admin)
        self.admin.setsockopt(zmq.LINGER, 0)
        self._bind(self.admin, my_endpoints[admin_key(shard)])
        self.pub = ctx.socket(zmq.PUB)
        self.guard.join(self.pub)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub_peers: dict[str, str] = {}  # node id -> its cluster XSUB endpoint
        self._egress: dict[int, zmq.Socket] = {}  # node number -> PUSH
        self._egress_endpoints: dict[int, str] = {}
        self.remote_nodes = 0
        self.counts: Counter[str] = Counter()

    def _bind(self, sock: zmq.Socket, endpoint: str) -> None:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            self.unbound.append((sock, endpoint))

    def bind_pending(self) -> None:
        """Retry the binds a predecessor's ports refused (cheap: called per upkeep)."""
        waiting = self.unbound
        self.unbound = []
        for sock, endpoint in waiting:
            self._bind(sock, endpoint)
        if waiting and not self.unbound:
            self.counts["late_binds"] += 1

    def follow(self, view: ClusterView) -> None:
        others = [n for n in view.nodes if n.node_id != self.node_id]
        self.remote_nodes = len(others)
        wanted_pub = {n.node_id: n.endpoints.get("xsub", "") for n in others}
        for node_id, endpoint in list(self._pub_peers.items()):
            if wanted_pub.get(node_id) != endpoint:
                self.pub.disconnect(endpoint)
                del self._pub_peers[node_id]
        for node_id, endpoint in wanted_pub.items():
            if endpoint and node_id not in self._pub_peers:
                self.pub.connect(endpoint)
                self._pub_peers[node_id] = endpoint
        wanted_egress = {n.number: n.endpoints.get("egress", "") for n in others}
        for number in list(self._egress):
            if wanted_egress.get(number) != self._egress_endpoints[number]:
                self._egress.pop(number).close()
                del self._egress_endpoints[number]
        for number, endpoint in wanted_egress.items():
            if endpoint and number not in self._egress:
                push = self.ctx.socket(zmq.PUSH)
                self.guard.join(push)
                push.setsockopt(zmq.LINGER, 1000)
                push.setsockopt(zmq.SNDHWM, REMOTE_EGRESS_HWM)
                push.connect(endpoint)
                self._egress[number] = push
                self._egress_endpoints[number] = endpoint

    def egress_for(self, number: int) -> zmq.Socket | None:
        return self._egress.get(number)

    def stats(self) -> dict[str, int]:
        return {**self.counts, **self.guard.stats(), "remote_nodes": self.remote_nodes}

    def close(self) -> None:
        for sock in (*self.inlets.values(), self.admin, self.pub, *self._egress.values()):
            sock.close()
        self.guard.close()
