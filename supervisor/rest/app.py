"""The REST bridge application: one FastAPI app assembled from the package's parts.

Same paths, bodies, status codes and error shapes as the reference bridge, so
existing tools keep working, but every operation is a request/reply to the
shard that owns the room instead of a client connected to the node's own
ports (W12): globals are applied directly with lastWriterClientNo 0 and GETs
read the room's authoritative state.

Beyond the reference: names are also limited to 255 UTF-8 bytes (W11), bodies
are size-capped, and an optional bearer token guards every endpoint.
"""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from relay.cluster.view_file import ViewFile
from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from supervisor.rest.console import CONSOLE_PATH, add_console
from supervisor.rest.errors import install_error_handlers
from supervisor.rest.log_export import add_log_export_route
from supervisor.rest.node_status import NodeStatusReader
from supervisor.rest.room_calls import RoomCalls
from supervisor.rest.routes_actions import add_action_routes
from supervisor.rest.routes_cluster import add_cluster_route
from supervisor.rest.routes_rooms import add_room_routes
from supervisor.rest.routes_variables import add_variable_routes
from supervisor.rest.security import install_security
from supervisor.rest.shard_client import ShardRequester

__all__ = ["create_app"]


def create_app(
    config: RelayConfig, shard_client: ShardRequester, run_dir: str | None = None
) -> FastAPI:
    """The REST bridge app; ``shard_client`` reaches the shards (closed on shutdown).

    ``run_dir`` is where the node's status files are (the console's node view
    shows what they say; without it, only what the shards answer live).
    """
    counts: Counter[str] = Counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        try:
            yield
        finally:
            await shard_client.close()

    app = FastAPI(
        title="NetSync Relay REST bridge",
        version="1",
        description=(
            "Network variables of a NetSync relay node over HTTP (STYLY NetSync REST "
            "bridge compatible), plus the operator console's API (node, rooms, room "
            "actions; the console itself is at /console/). Optional bearer-token "
            "authentication."
        ),
        lifespan=lifespan,
    )
    app.state.counts = counts
    install_error_handlers(app)
    calls = RoomCalls(config.shards, shard_client, counts, _view_of(config, run_dir),
                      NodeEndpoints(run_dir) if run_dir is not None else None)
    reader = NodeStatusReader(run_dir)

    @app.get("/", summary="Health check")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    add_variable_routes(app, calls)
    add_log_export_route(app, config)
    add_cluster_route(app, config, calls, reader)
    add_room_routes(app, config, calls, reader)
    add_action_routes(app, config, calls)
    add_console(app)
    install_security(app, config, public_paths=(CONSOLE_PATH,))
    return app


def _view_of(config: RelayConfig, run_dir: str | None) -> ViewFile | None:
    """The view and slot layout REST routes by (a node alone has one too)."""
    if run_dir is None:
        return None
    return ViewFile(run_dir, shards=config.shards)
