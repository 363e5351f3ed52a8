"""The one mapping from room outcomes to HTTP statuses.

Shards answer in room terms (:class:`relay.admin.Outcome`); which HTTP status
an outcome becomes is decided here and nowhere else, so the shard never needs
to know it is behind HTTP, and the REST API's status codes are one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fastapi import HTTPException

from relay.admin import Outcome

__all__ = ["HTTP_STATUS", "RETRY_AFTER_SECONDS", "http_error", "http_status"]

HTTP_STATUS: Mapping[Outcome, int] = MappingProxyType(
    {
        Outcome.OK: 200,
        Outcome.NOT_FOUND: 404,
        # The reference answers 409 when a write would exceed 100 names.
        Outcome.LIMIT_EXCEEDED: 409,
        Outcome.INVALID: 422,
        Outcome.BAD_REQUEST: 400,
        # The node cannot serve this room right now (no reply in time, shard
        # full, request expired, store trouble): the client may retry. Not
        # 502: to an HTTP client the node is one server, not a gateway.
        Outcome.UNAVAILABLE: 503,
        Outcome.INTERNAL_ERROR: 503,
    }
)

# Shards restart within about a second (supervisor); a retry sooner is futile.
RETRY_AFTER_SECONDS = 1


def http_status(outcome: Outcome) -> int:
    """The HTTP status for ``outcome``."""
    return HTTP_STATUS[outcome]


def http_error(outcome: Outcome, detail: str) -> HTTPException:
    """The HTTP error a non-ok outcome becomes (rendered as ``{"detail": ...}``)."""
    if outcome is Outcome.OK:
        raise ValueError("an ok outcome is not an error")
    status = HTTP_STATUS[outcome]
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return HTTPException(status, detail, headers=headers)
