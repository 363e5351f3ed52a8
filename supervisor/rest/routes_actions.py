"""``POST /v1/rooms/{roomId}/actions``: the operator actions of the console.

Set a global variable, set or delete a client variable, evict a member. Only
on a server started with a token: the bearer middleware has then already
checked the caller's token, and without one this endpoint refuses every
action (403), so a console nobody logged into can never change state. The
reference's own variable endpoints keep working without a token, as there.

Every attempt is logged in one line naming room, target and action. Actions
act on existing rooms only; they never create one. There is no "delete
global": clients only upsert globals (BEHAVIOR §10.3), so a deletion could
never reach them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException

from relay.config import RelayConfig
from supervisor.rest.models import check_path_text, error_responses
from supervisor.rest.models_console import (
    ActionReply,
    DeleteClientVariable,
    EvictMember,
    OperatorAction,
    SetClientVariable,
    SetGlobal,
)
from supervisor.rest.room_calls import RoomCalls

__all__ = ["NO_TOKEN_DETAIL", "add_action_routes", "shard_request"]

log = logging.getLogger("relay.rest.operator")

NO_TOKEN_DETAIL = (
    "operator actions are disabled: the server has no REST token "
    "(start it with --rest-token or RELAY_REST_TOKEN)"
)


def shard_request(room_id: str, action: Any) -> tuple[str, dict[str, Any]]:
    """(target description, admin request) for one operator action."""
    base = {"room": room_id, "must_exist": True}
    if isinstance(action, SetGlobal):
        return f"global {action.name!r}", {
            **base,
            "op": "globals_set",
            "variables": {action.name: action.value},
        }
    if isinstance(action, SetClientVariable):
        return f"device {action.deviceId!r} variable {action.name!r}", {
            **base,
            "op": "client_vars_set",
            "device": action.deviceId,
            "variables": {action.name: action.value},
        }
    if isinstance(action, DeleteClientVariable):
        return f"device {action.deviceId!r} variable {action.name!r}", {
            **base,
            "op": "client_vars_delete",
            "device": action.deviceId,
            "name": action.name,
        }
    if isinstance(action, EvictMember):
        return f"device {action.deviceId!r}", {**base, "op": "evict", "device": action.deviceId}
    raise TypeError(f"not an operator action: {action!r}")


def add_action_routes(app: FastAPI, config: RelayConfig, calls: RoomCalls) -> None:
    @app.post(
        "/v1/rooms/{room_id}/actions",
        response_model=ActionReply,
        responses=error_responses(400, 401, 403, 404, 409, 413, 503),
        summary="Operator action on a room (needs a server token)",
    )
    async def room_action(room_id: str, action: OperatorAction) -> dict[str, Any]:
        check_path_text(room_id=room_id)
        target, request = shard_request(room_id, action)
        if not config.rest_token:
            log.warning(
                "operator action refused (server has no token): room=%r target=%s action=%s",
                room_id, target, action.action,
            )
            raise HTTPException(403, NO_TOKEN_DETAIL)
        try:
            result = await calls.room(room_id, request)
        except HTTPException as exc:
            log.warning(
                "operator action failed: room=%r target=%s action=%s: %d %s",
                room_id, target, action.action, exc.status_code, exc.detail,
            )
            raise
        log.info("operator action: room=%r target=%s action=%s", room_id, target, action.action)
        return {"roomId": room_id, "action": action.action, "target": target, "result": result}
