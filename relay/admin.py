"""The shard admin protocol: room operations asked by the REST bridge, and their outcomes.

A shard speaks rooms, not HTTP. Its replies say what happened to the room
(an :class:`Outcome`); only the REST layer (``supervisor/rest/outcomes.py``)
turns an outcome into an HTTP status, in one table. Both sides import this
module because supervisor and shard_worker never import each other.

Wire form (JSON, one ZeroMQ frame each way, matched by a request id frame):

- request: ``{"op": <op>, "room": <room id>, ...op fields, "deadline": <unix time>}``
- reply:   ``{"outcome": "ok", "body": {...}}`` or
  ``{"outcome": <any other outcome>, "detail": "<why, for a human>"}``

Ops (fields besides ``op``):

=====================  ==============================================  =========================
op                     fields                                          refusals
=====================  ==============================================  =========================
``stats``              --                                              --
``rooms_list``         ``search`` (substring, any case), ``limit``     bad_request
``room_detail``        ``room``                                        not_found (never creates)
``evict``              ``room``, ``device``                            not_found
``globals_get``        ``room``                                        unavailable
``globals_set``        ``room``, ``variables``, ``must_exist``?        limit_exceeded, invalid,
                                                                       not_found, unavailable
``client_vars_get``    ``room``, ``device``                            --
``client_vars_set``    ``room``, ``device``, ``variables``,            as ``globals_set``
                       ``must_exist``?
``client_vars_delete`` ``room``, ``device``, ``name`` (None: all),     not_found (must_exist)
                       ``must_exist``?
=====================  ==============================================  =========================

``must_exist: true`` (operator actions) refuses with ``not_found`` instead of
creating the room, which the reference's variable calls do (BEHAVIOR §1).
Any op may also be answered ``bad_request`` (malformed), ``unavailable`` (the
shard holds all the rooms it may, or the deadline passed) or
``internal_error``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson

__all__ = ["MalformedReply", "Outcome", "ok", "parse_reply", "refused"]


class Outcome(StrEnum):
    """What a shard did with an admin request. The only vocabulary of replies."""

    #: Done; ``body`` holds the result.
    OK = "ok"
    #: The room or member named does not exist. Nothing was created.
    NOT_FOUND = "not_found"
    #: A room limit (distinct names per room or per device, BEHAVIOR §10.1)
    #: refuses the write as a whole; nothing was applied.
    LIMIT_EXCEEDED = "limit_exceeded"
    #: A name or value the wire format cannot carry (BEHAVIOR §10.1, W11).
    INVALID = "invalid"
    #: The request itself is malformed or names an unknown op: a mismatch
    #: between bridge and shard, not something a room decided.
    BAD_REQUEST = "bad_request"
    #: The shard cannot serve it now: it holds as many rooms as it may, or the
    #: request waited past its deadline. Retrying later may succeed.
    UNAVAILABLE = "unavailable"
    #: The shard failed while handling it (logged there with a traceback).
    INTERNAL_ERROR = "internal_error"


class MalformedReply(ValueError):
    """Bytes from a shard that are not a reply of this protocol."""


def ok(body: dict[str, Any]) -> dict[str, Any]:
    """A successful reply carrying ``body``."""
    return {"outcome": Outcome.OK.value, "body": body}


def refused(outcome: Outcome, detail: str) -> dict[str, Any]:
    """A reply for anything but success, with a human-readable reason."""
    if outcome is Outcome.OK:
        raise ValueError("refused() needs an outcome other than ok")
    return {"outcome": outcome.value, "detail": detail}


def parse_reply(raw: bytes) -> tuple[Outcome, dict[str, Any]]:
    """Decode a reply frame into ``(outcome, body)``.

    For refusals the body is ``{"detail": str}``, so callers handle every
    outcome with one shape. Raises :class:`MalformedReply` for anything else.
    """
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedReply(f"not JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise MalformedReply("reply is not an object")
    try:
        outcome = Outcome(reply.get("outcome"))
    except ValueError:
        raise MalformedReply(f"unknown outcome {reply.get('outcome')!r}") from None
    if outcome is Outcome.OK:
        body = reply.get("body")
        if not isinstance(body, dict):
            raise MalformedReply("ok reply without an object body")
        return outcome, body
    detail = reply.get("detail")
    if not isinstance(detail, str):
        raise MalformedReply(f"{outcome} reply without a text detail")
    return outcome, {"detail": detail}
