"""Every internal endpoint of a node, derived from one run directory.

One place builds them so that a restarted child binds/connects exactly where
its predecessor did, and so that a cluster can later swap ipc:// for tcp://.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Reconnect interval of the node's internal (ipc) connections: the peer is on
# this machine and either there or starting; libzmq's default of 100 ms was
# the largest delay of a control message at start-up and after a restart.
INTERNAL_RECONNECT_MS = 10


@dataclass(frozen=True)
class NodeEndpoints:
    run_dir: str

    def _ipc(self, name: str) -> str:
        return "ipc://" + os.path.join(self.run_dir, name)

    @staticmethod
    def _shard(shard: int, incarnation: int) -> str:
        # A replacement worker (rolling restart) runs beside the one it
        # replaces, so each incarnation of a slot has endpoints of its own:
        # libzmq unlinks an ipc path when its listener closes, which would
        # take the path from under a successor bound to the same name.
        return f"shard-{shard}" if incarnation == 0 else f"shard-{shard}.{incarnation}"

    def shard_inbox(self, shard: int, lane: int, incarnation: int = 0) -> str:
        """Ingress PUSH -> shard PULL, one pipe per lane so that a shard can
        read control before transform even when transforms queue up."""
        return self._ipc(f"{self._shard(shard, incarnation)}-in{lane}.sock")

    def shard_admin(self, shard: int, incarnation: int = 0) -> str:
        """REST bridge DEALER -> shard ROUTER (request/reply on room state)."""
        return self._ipc(f"{self._shard(shard, incarnation)}-admin.sock")

    @property
    def egress(self) -> str:
        """Shard PUSH -> ingress PULL (unicasts for clients)."""
        return self._ipc("egress.sock")

    @property
    def proxy_xsub(self) -> str:
        """Shard PUB -> proxy XSUB (room poses, room objects)."""
        return self._ipc("proxy-xsub.sock")

    @property
    def cluster_bridge(self) -> str:
        """Cluster bridge XPUB -> main proxy XSUB (other nodes' broadcasts)."""
        return self._ipc("cluster-bridge.sock")

    @property
    def proxy_control(self) -> str:
        """Supervisor/metrics -> steerable proxy control (STATISTICS)."""
        return self._ipc("proxy-control.sock")

    def status_file(self, child: str) -> str:
        return os.path.join(self.run_dir, f"status-{child}.json")

    @property
    def supervisor_file(self) -> str:
        return os.path.join(self.run_dir, "supervisor.json")

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.run_dir, "metrics")


def tcp_bind(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


def cluster_endpoints(host: str, base_port: int, shards: int) -> dict[str, str]:
    """The node-link endpoints a node registers, on its advertise address.

    ``base``: the ingress's cluster egress (remote shards' unicasts for this
    node's clients); ``base + 1``: the proxy's cluster XSUB (remote shards'
    broadcasts); then per shard k: its control inlet, transform inlet and
    admin socket at ``base + 2 + 3k`` .. ``+ 2``.
    """
    ep = {"egress": tcp_bind(host, base_port), "xsub": tcp_bind(host, base_port + 1)}
    for k in range(shards):
        port = base_port + 2 + 3 * k
        ep[f"shard-{k}-in0"] = tcp_bind(host, port)
        ep[f"shard-{k}-in1"] = tcp_bind(host, port + 1)
        ep[f"shard-{k}-admin"] = tcp_bind(host, port + 2)
    return ep


def inlet_key(shard: int, lane: int) -> str:
    return f"shard-{shard}-in{lane}"


def admin_key(shard: int) -> str:
    return f"shard-{shard}-admin"
