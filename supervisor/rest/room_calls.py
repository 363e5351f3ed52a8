"""Room operations as the routes see them: find the owning shard, ask it, judge the reply.

Routes call ``await calls.room(room_id, request)`` and get the reply body of
an ``ok`` outcome; any other outcome, a shard that does not answer in time,
or a reply that is not one becomes the HTTP error ``outcomes.py`` assigns,
logged once here with the shard and op it concerns.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fastapi import HTTPException

from relay.admin import Outcome
from relay.cluster.placement import owner_of
from relay.cluster.view_file import ViewFile
from relay.endpoints import NodeEndpoints, admin_key
from relay.hashing import shard_for_room
from supervisor.rest.outcomes import http_error
from supervisor.rest.shard_client import (
    ShardReplyError,
    ShardRequester,
    ShardUnavailable,
    limited_log,
)

__all__ = ["RoomCalls"]

log = logging.getLogger("relay.rest")

# Outcomes the API expects in normal use (a missing room, a full device);
# every other refusal means something is wrong and is logged.
_QUIET = frozenset({Outcome.OK, Outcome.NOT_FOUND, Outcome.LIMIT_EXCEEDED})


class RoomCalls:
    """Admin requests from routes to shards, with the outcome turned into HTTP."""

    def __init__(
        self, shards: int, client: ShardRequester, counts: Counter[str], view: ViewFile | None = None,
        endpoints: NodeEndpoints | None = None,
    ) -> None:
        self.shards = shards
        self.client = client
        self.counts = counts
        self.view = view
        # With both, local requests follow the node's slot layout (scale,
        # rolling restart: a new worker has an admin endpoint of its own).
        self.endpoints = endpoints

    def _local_key(self, slot: int) -> int:
        local = getattr(self.client, "local", None)
        if self.view is None or self.endpoints is None or local is None:
            return slot
        slots = self.view.slots
        incarnation = slots[slot] if slot < len(slots) else 0
        return local(self.endpoints.shard_admin(slot, incarnation))

    def local_keys(self) -> list[int]:
        """Request keys of this node's shard slots, in slot order."""
        if self.view is None:
            return list(range(self.shards))
        self.view.poll()
        return [self._local_key(k) for k in range(len(self.view.slots))]

    def shard_of(self, room_id: str) -> int:
        """The request key of the shard that owns ``room_id``, on this node or another."""
        room = room_id.encode("utf-8")
        if self.view is None:
            return shard_for_room(room, self.shards)
        self.view.poll()
        node_id, shard = owner_of(room, self.view.view)
        if node_id == self.view.node_id:
            return self._local_key(shard)
        node = self.view.view.node(node_id)
        endpoint = node.endpoints.get(admin_key(shard)) if node is not None else None
        remote = getattr(self.client, "remote", None)
        if endpoint is None or remote is None:
            raise http_error(Outcome.UNAVAILABLE, f"room {room_id!r} is owned by node {node_id!r}, not reachable")
        return remote(endpoint)

    async def room(self, room_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Ask the shard that owns ``room_id``; the ok body or an HTTPException."""
        return await self.shard(self.shard_of(room_id), request, what=f"room {room_id!r}")

    async def shard(
        self, shard: int, request: dict[str, Any], what: str | None = None
    ) -> dict[str, Any]:
        """Ask one shard; the ok body or an HTTPException."""
        op = request.get("op")
        what = what or f"shard {shard}"
        self.counts["shard_requests"] += 1
        try:
            outcome, body = await self.client.request(shard, request)
        except ShardUnavailable as exc:
            self.counts["shard_timeouts"] += 1
            limited_log.warning("shard_timeout", "REST %s for %s: %s", op, what, exc)
            raise http_error(Outcome.UNAVAILABLE, str(exc)) from None
        except ShardReplyError as exc:
            limited_log.error("shard_bad_reply", "REST %s for %s: %s", op, what, exc)
            raise http_error(Outcome.INTERNAL_ERROR, str(exc)) from None
        if outcome is Outcome.OK:
            return body
        detail = str(body.get("detail") or "shard refused the request")
        if outcome not in _QUIET:
            limited_log.error("shard_failed", "shard %d answered %s to %s for %s: %s", shard, outcome, op, what, detail)
        if outcome in (Outcome.UNAVAILABLE, Outcome.INTERNAL_ERROR):
            detail = f"shard {shard}: {detail}"
        raise http_error(outcome, detail)

    async def try_shard(self, shard: int, request: dict[str, Any]) -> dict[str, Any] | HTTPException:
        """Like :meth:`shard`, but an error is returned instead of raised: views
        over every shard show what the others answered rather than failing."""
        try:
            return await self.shard(shard, request)
        except HTTPException as exc:
            return exc
