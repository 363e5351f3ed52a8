"""``GET /v1/cluster``: the console's node view.

Nodes, their children and shards: rooms and clients per shard (live, from each
shard's admin ``stats`` op), message rates, control backlog, restarts and the
store's health (from the status files in the run dir). A shard that does not
answer is shown with its last published numbers and ``available: false``
rather than failing the whole view.

One node today (this one). ``node_id`` and ``store_degraded`` are shown when
the supervisor or shard status documents carry them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from relay.config import RelayConfig
from supervisor.rest.models_console import ClusterReply
from supervisor.rest.node_status import NodeStatusReader
from supervisor.rest.room_calls import RoomCalls

__all__ = ["add_cluster_route"]

def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _children(supervisor: dict[str, Any]) -> list[dict[str, Any]]:
    children = supervisor.get("children")
    if not isinstance(children, dict):
        return []
    rows = []
    for name, child in children.items():
        if not isinstance(child, dict):
            continue
        rows.append(
            {
                "name": str(name),
                "alive": bool(child.get("alive")),
                "pid": _int(child.get("pid")),
                "uptimeS": _float(child.get("uptime_s")) if child.get("alive") else None,
                "restarts": _int(child.get("restarts")) or 0,
                "lastExit": _int(child.get("last_exit")),
            }
        )
    return rows


def _shard_row(
    shard: int,
    live: dict[str, Any] | Exception,
    status: dict[str, Any],
    status_age: float | None,
    rates: dict[str, float | None],
    child: dict[str, Any],
) -> dict[str, Any]:
    answered = isinstance(live, dict)
    # Live numbers when the shard answered; otherwise its last published ones.
    counts = live if isinstance(live, dict) else status
    drops = counts.get("drops")
    return {
        "shard": shard,
        "available": answered,
        "detail": None if answered else str(getattr(live, "detail", live)),
        "rooms": _int(counts.get("rooms")),
        "clients": _int(counts.get("clients")),
        "visible": _int(counts.get("visible")),
        "stealth": _int(counts.get("stealth")),
        "objects": _int(counts.get("objects")),
        "messagesInPerS": rates.get("messages_in"),
        "controlOutPerS": rates.get("unicast_recipients"),
        "broadcastsPerS": rates.get("broadcasts_sent"),
        "ctrlQueueDepth": _int(status.get("ctrl_queue_depth")),
        "ctrlQueueHighWater": _int(status.get("ctrl_queue_high_water")),
        "pendingBroadcasts": _int(status.get("pending_broadcasts")),
        "drops": sum(v for v in drops.values() if isinstance(v, int)) if isinstance(drops, dict) else None,
        "restarts": _int(child.get("restarts")),
        "uptimeS": _float(child.get("uptime_s")) if child.get("alive") else None,
        "statusAgeS": status_age,
        "storeDegraded": _bool(status.get("store_degraded")),
    }


def add_cluster_route(
    app: FastAPI, config: RelayConfig, calls: RoomCalls, reader: NodeStatusReader
) -> None:
    @app.get("/v1/cluster", response_model=ClusterReply, summary="Nodes, shards and their load")
    async def get_cluster() -> dict[str, Any]:
        live = await asyncio.gather(
            *(calls.try_shard(k, {"op": "stats"}) for k in calls.local_keys())
        )
        supervisor = reader.supervisor() or {}
        children = supervisor.get("children") if isinstance(supervisor.get("children"), dict) else {}
        shards = []
        for k, stats in enumerate(live):
            name = f"shard-{k}"
            snap = reader.child(name)
            status = snap.data if snap is not None else {}
            child = children.get(name) if isinstance(children.get(name), dict) else {}
            shards.append(
                _shard_row(k, stats, status, reader.age(snap), reader.rates(name), child)
            )
        # Degraded if anyone says so; unknown if nobody reports it at all.
        flags = [_bool(supervisor.get("store_degraded"))] + [s["storeDegraded"] for s in shards]
        known = [flag for flag in flags if flag is not None]
        degraded = any(known) if known else None
        ports = supervisor.get("ports")
        return {
            "operatorActions": bool(config.rest_token),
            "nodes": [
                {
                    "nodeId": reader.node_id(config.shards),
                    "local": True,
                    "supervisorPid": _int(supervisor.get("supervisor_pid")),
                    "startedAt": _float(supervisor.get("started_at")),
                    "storeDegraded": degraded,
                    "ports": {
                        str(k): _int(v) for k, v in (ports.items() if isinstance(ports, dict) else [])
                    },
                    "children": _children(supervisor),
                    "shards": shards,
                }
            ],
        }

