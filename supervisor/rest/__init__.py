"""HTTP REST bridge (BEHAVIOR §12) and operator console: one file per job.

| module | holds |
|---|---|
| ``app.py`` | ``create_app``: assembles the FastAPI app from the parts below |
| ``routes_variables.py`` | the reference's client/global variable endpoints |
| ``log_export.py`` | ``GET /logs/export`` and the log-file reader behind it |
| ``models.py`` | request/response bodies and the fixed REST limits |
| ``routes_cluster.py`` | ``GET /v1/cluster``: the console's node view |
| ``routes_rooms.py`` | ``GET /v1/rooms`` (search, paging) and ``GET /v1/rooms/{roomId}`` |
| ``routes_actions.py`` | ``POST /v1/rooms/{roomId}/actions``: operator actions (token only) |
| ``models_console.py`` | bodies of those three |
| ``node_status.py`` | the run dir's status files: supervisor, shards, rates |
| ``console.py`` + ``console/`` | the console's static page, served at ``/console/`` |
| ``room_calls.py`` | room id -> owning shard -> reply, as routes use it |
| ``shard_client.py`` | request/reply to a shard's admin socket over ZeroMQ |
| ``outcomes.py`` | the one mapping from room outcomes to HTTP statuses |
| ``security.py`` | bearer token, body-size cap, CORS |
| ``errors.py`` | error rendering (422 list shape, 405 Allow) |
"""

from supervisor.rest.app import create_app
from supervisor.rest.log_export import iter_log_lines, parse_timestamp
from supervisor.rest.models import MAX_NAME_BYTES, MAX_NAME_CHARS, MAX_VALUE_CHARS
from supervisor.rest.shard_client import (
    ShardClient,
    ShardReplyError,
    ShardRequester,
    ShardUnavailable,
)

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_NAME_CHARS",
    "MAX_VALUE_CHARS",
    "ShardClient",
    "ShardReplyError",
    "ShardRequester",
    "ShardUnavailable",
    "create_app",
    "iter_log_lines",
    "parse_timestamp",
]
