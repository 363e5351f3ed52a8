"""The reference's network-variable endpoints (BEHAVIOR §12): client and global variables.

Same paths, bodies and status codes as the reference bridge. Each handler
validates what HTTP can (path text, empty bodies) and hands the rest to the
shard that owns the room through :class:`RoomCalls`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam

from supervisor.rest.models import (
    ClientVarReply,
    ClientVarsDeleteReply,
    ClientVarsReply,
    ClientVarsUpsertReply,
    GlobalVarReply,
    GlobalVarsReply,
    GlobalVarsUpsertReply,
    UpsertBody,
    VarName,
    check_path_text,
    error_responses,
)
from supervisor.rest.room_calls import RoomCalls

__all__ = ["CLIENT_VARS_PATH", "GLOBAL_VARS_PATH", "add_variable_routes"]

CLIENT_VARS_PATH = "/v1/rooms/{room_id}/devices/{device_id}/client-variables"
GLOBAL_VARS_PATH = "/v1/rooms/{room_id}/global-variables"

# The reference creates a room on any global-variable call (BEHAVIOR §1); a
# flood of reads for random room ids must not fill a shard (W13).
NO_CREATE = (
    "Reading never creates a room. A room that does not exist answers like an empty one: "
    "200 with no variables (a single variable: 404), as the reference answers; unlike the "
    "reference, the room is not created by the call."
)


def add_variable_routes(app: FastAPI, calls: RoomCalls) -> None:
    client_vars = CLIENT_VARS_PATH

    @app.post(
        client_vars,
        response_model=ClientVarsUpsertReply,
        responses=error_responses(400, 409, 413, 503),
        summary="Set client variables of a device",
    )
    async def set_client_vars(room_id: str, device_id: str, body: UpsertBody) -> dict[str, Any]:
        check_path_text(room_id=room_id, device_id=device_id)
        if not body.variables:
            raise HTTPException(400, "variables must not be empty")
        return await calls.room(
            room_id,
            {
                "op": "client_vars_set",
                "room": room_id,
                "device": device_id,
                "variables": body.variables,
            },
        )

    @app.get(
        client_vars,
        response_model=ClientVarsReply,
        responses=error_responses(503),
        summary="Client variables of a device (never creates the room)",
        description=NO_CREATE,
    )
    async def get_client_vars(room_id: str, device_id: str) -> dict[str, Any]:
        check_path_text(room_id=room_id, device_id=device_id)
        reply = await calls.room(
            room_id, {"op": "client_vars_get", "room": room_id, "device": device_id}
        )
        return {"clientNo": reply.get("clientNo"), "variables": reply.get("variables", {})}

    @app.get(
        client_vars + "/{name}",
        response_model=ClientVarReply,
        responses=error_responses(404, 503),
        summary="One client variable of a device (never creates the room)",
        description=NO_CREATE,
    )
    async def get_client_var(
        room_id: str, device_id: str, name: Annotated[VarName, PathParam()]
    ) -> dict[str, Any]:
        check_path_text(room_id=room_id, device_id=device_id)
        reply = await calls.room(
            room_id, {"op": "client_vars_get", "room": room_id, "device": device_id}
        )
        variables = reply.get("variables", {})
        if name not in variables:
            raise HTTPException(
                404, f"Client variable '{name}' not found for device '{device_id}'"
            )
        return {"clientNo": reply.get("clientNo"), "value": variables[name]}

    @app.delete(client_vars, response_model=ClientVarsDeleteReply, responses=error_responses(503))
    async def delete_client_vars(room_id: str, device_id: str) -> dict[str, Any]:
        check_path_text(room_id=room_id, device_id=device_id)
        return await calls.room(
            room_id,
            {"op": "client_vars_delete", "room": room_id, "device": device_id, "name": None},
        )

    @app.delete(
        client_vars + "/{name}", response_model=ClientVarsDeleteReply, responses=error_responses(503)
    )
    async def delete_client_var(
        room_id: str, device_id: str, name: Annotated[VarName, PathParam()]
    ) -> dict[str, Any]:
        check_path_text(room_id=room_id, device_id=device_id)
        return await calls.room(
            room_id,
            {"op": "client_vars_delete", "room": room_id, "device": device_id, "name": name},
        )

    global_vars = GLOBAL_VARS_PATH

    @app.post(
        global_vars,
        response_model=GlobalVarsUpsertReply,
        responses=error_responses(400, 409, 413, 503),
        summary="Set global variables of a room",
    )
    async def set_globals(room_id: str, body: UpsertBody) -> dict[str, Any]:
        check_path_text(room_id=room_id)
        if not body.variables:
            raise HTTPException(400, "variables must not be empty")
        reply = await calls.room(
            room_id, {"op": "globals_set", "room": room_id, "variables": body.variables}
        )
        return {"roomId": reply.get("roomId", room_id), "result": reply.get("result", {})}

    @app.get(
        global_vars,
        response_model=GlobalVarsReply,
        responses=error_responses(503),
        summary="Global variables of a room (never creates the room)",
        description=NO_CREATE,
    )
    async def get_globals(room_id: str) -> dict[str, Any]:
        check_path_text(room_id=room_id)
        reply = await calls.room(room_id, {"op": "globals_get", "room": room_id})
        return {"variables": reply.get("variables", {})}

    @app.get(
        global_vars + "/{name}",
        response_model=GlobalVarReply,
        responses=error_responses(404, 503),
        summary="One global variable of a room (never creates the room)",
        description=NO_CREATE,
    )
    async def get_global(room_id: str, name: Annotated[VarName, PathParam()]) -> dict[str, Any]:
        check_path_text(room_id=room_id)
        reply = await calls.room(room_id, {"op": "globals_get", "room": room_id})
        variables = reply.get("variables", {})
        if name not in variables:
            raise HTTPException(404, f"Global variable '{name}' not found")
        return {"value": variables[name]}
