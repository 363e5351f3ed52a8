"""``GET /v1/rooms`` and ``GET /v1/rooms/{roomId}``: the console's room list and room page.

The list spans every shard with server-side search and paging: each shard
returns how many of its rooms match and its first ``offset + limit`` in
room-id order, and the bridge merges those sorted runs into the one page
asked for, so a browser never receives thousands of rows. Reads only: neither
endpoint creates a room (a missing one is 404).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query

from relay.config import RelayConfig
from supervisor.rest.models import check_path_text, error_responses
from supervisor.rest.models_console import RoomDetail, RoomList
from supervisor.rest.node_status import NodeStatusReader
from supervisor.rest.room_calls import RoomCalls

__all__ = ["MAX_PAGE", "add_room_routes"]

MAX_PAGE = 500
# Deeper than any node holds (shards x max_rooms_per_shard is ~10^5); bounds
# what one request can make each shard send.
MAX_OFFSET = 1_000_000
MAX_SEARCH_CHARS = 255


def add_room_routes(
    app: FastAPI, config: RelayConfig, calls: RoomCalls, reader: NodeStatusReader
) -> None:
    @app.get(
        "/v1/rooms",
        response_model=RoomList,
        responses=error_responses(400, 503),
        summary="List rooms (search and paging across every shard)",
    )
    async def list_rooms(
        search: Annotated[
            str,
            Query(max_length=MAX_SEARCH_CHARS, description="substring of the room id, any case"),
        ] = "",
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> dict[str, Any]:
        check_path_text(search=search)
        request = {"op": "rooms_list", "search": search, "limit": offset + limit}
        replies = await asyncio.gather(
            *(calls.try_shard(k, request) for k in calls.local_keys())
        )
        answered = [(k, r) for k, r in enumerate(replies) if isinstance(r, dict)]
        if not answered:
            first = replies[0]
            raise first if isinstance(first, HTTPException) else HTTPException(503, "no shard answered")
        runs = [
            [{**room, "shard": k} for room in reply.get("rooms", [])] for k, reply in answered
        ]
        merged = heapq.merge(*runs, key=lambda room: room["roomId"])
        return {
            "total": sum(int(reply.get("total", 0)) for _, reply in answered),
            "offset": offset,
            "limit": limit,
            "rooms": list(itertools.islice(merged, offset, offset + limit)),
            "unavailableShards": [k for k, r in enumerate(replies) if not isinstance(r, dict)],
        }

    @app.get(
        "/v1/rooms/{room_id}",
        response_model=RoomDetail,
        responses=error_responses(400, 404, 503),
        summary="One room: members, variables, objects (never creates the room)",
    )
    async def get_room(room_id: str) -> dict[str, Any]:
        check_path_text(room_id=room_id)
        detail = await calls.room(room_id, {"op": "room_detail", "room": room_id})
        # A shard in cluster mode names each member's node (from its identity);
        # on a single node every connection is on this one.
        node = reader.node_id(config.shards)
        for member in detail.get("memberList", []):
            member.setdefault("node", node)
        return {**detail, "shard": calls.shard_of(room_id)}
