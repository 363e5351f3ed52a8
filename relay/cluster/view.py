"""The cluster view: which nodes are alive, with a generation number.

A view is an immutable value. The membership agent (supervisor) produces a
new one whenever a node joins, leaves or expires; the generation comes from
the store, so every node names the same membership with the same number.
A node without a shared store has a view of itself alone, generation 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

__all__ = ["ClusterView", "NodeInfo", "decode_layout", "encode_layout", "local_view"]


@dataclass(frozen=True, order=True)
class NodeInfo:
    """One live node as it registered itself."""

    node_id: str
    shards: int
    # start of this node incarnation (store time, ms): a restarted node is a new epoch
    epoch: int = 0
    # small number unique to the node id in this cluster: tags its clients' routing ids
    number: int = 0
    # what other nodes need to reach it (cluster inlet, egress, shard PUBs)
    endpoints: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return {"node_id": self.node_id, "shards": self.shards, "epoch": self.epoch,
                "number": self.number, "endpoints": self.endpoints}

    @classmethod
    def from_dict(cls, data: dict) -> NodeInfo:
        return cls(str(data["node_id"]), int(data["shards"]), int(data.get("epoch", 0)),
                   int(data.get("number", 0)), dict(data.get("endpoints", {})))


@dataclass(frozen=True)
class ClusterView:
    generation: int
    nodes: tuple[NodeInfo, ...]

    def node(self, node_id: str) -> NodeInfo | None:
        for info in self.nodes:
            if info.node_id == node_id:
                return info
        return None

    def by_number(self, number: int) -> NodeInfo | None:
        for info in self.nodes:
            if info.number == number:
                return info
        return None

    def to_bytes(self) -> bytes:
        return orjson.dumps({"generation": self.generation, "nodes": [n.to_dict() for n in self.nodes]})

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClusterView:
        data = orjson.loads(raw)
        nodes = tuple(sorted(NodeInfo.from_dict(n) for n in data["nodes"]))
        return cls(int(data["generation"]), nodes)


def local_view(node_id: str, shards: int, epoch: int = 0, number: int = 0) -> ClusterView:
    """The view of a node that shares no store: itself, all rooms local."""
    return ClusterView(0, (NodeInfo(node_id, shards, epoch, number),))


def encode_layout(view: ClusterView, slots: list[int]) -> bytes:
    """A view with this node's slot layout (incarnation per shard slot), as one value."""
    return orjson.dumps({"generation": view.generation, "nodes": [n.to_dict() for n in view.nodes],
                         "slots": slots})


def decode_layout(raw: bytes) -> tuple[ClusterView, list[int]]:
    data = orjson.loads(raw)
    nodes = tuple(sorted(NodeInfo.from_dict(n) for n in data["nodes"]))
    return ClusterView(int(data["generation"]), nodes), [int(i) for i in data["slots"]]
