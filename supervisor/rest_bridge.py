"""HTTP REST bridge (BEHAVIOR §12): network variables over JSON.

Same paths, bodies, status codes and error shapes as the reference bridge, so
existing tools keep working, but every operation is a request/reply to the
shard that owns the room instead of a client connected to the node's own
ports (W12): globals are applied directly with lastWriterClientNo 0 and GETs
read the room's authoritative state.

Beyond the reference: names are also limited to 255 UTF-8 bytes (W11), bodies
are size-capped, and an optional bearer token guards every endpoint.
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import itertools
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import orjson
import zmq
import zmq.asyncio
from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from relay.hashing import shard_for_room
from relay.logs import RateLimitedLog
from supervisor.safety import cors_origins

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
    "limited_log",
    "parse_timestamp",
]

log = logging.getLogger("relay.rest")
# Request failures repeat once per HTTP call (a stalled shard, a bad client
# loop): one line per reason per interval, flushed by the status task.
limited_log = RateLimitedLog(log)

# Fixed REST limits (BEHAVIOR §14: "REST fixed at 64 / 1024"), independent of
# the wire-side max_var_* settings.
MAX_NAME_CHARS = 64
# A name is a str8 on the wire; a longer one would break every later sync of
# the room (W11), so it is refused here rather than stored.
MAX_NAME_BYTES = 255
MAX_VALUE_CHARS = 1024
# More distinct names than this can never be stored for one room or device
# (BEHAVIOR §10.1; the shard answers 409 with the exact rule).
MAX_NAMES_PER_TARGET = 100


# ---------------------------------------------------------------------------
# shard request/reply


class ShardUnavailable(Exception):
    """The owning shard did not answer in time (HTTP 503)."""

    def __init__(self, shard: int, timeout: float) -> None:
        self.shard = shard
        self.timeout = timeout
        super().__init__(f"shard {shard} did not answer within {timeout:g}s")


class ShardReplyError(Exception):
    """The shard answered something that is not a reply (HTTP 502)."""


class ShardRequester(Protocol):
    """What the app needs from a shard connection; tests substitute fakes."""

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]: ...

    async def close(self) -> None: ...


class ShardClient:
    """Async request/reply to shard admin ROUTERs, one DEALER per shard.

    Replies are matched to requests by id, never by order: a reply that
    arrives after its request timed out finds no waiter and is discarded, so
    it cannot be taken for the answer to a later request. Sockets are created
    on first use so they belong to the event loop that serves requests.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._ctx = context
        self._own_ctx = context is None
        self._sockets: dict[int, zmq.asyncio.Socket] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._pending: dict[bytes, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        # A per-instance prefix keeps ids unique across restarts of the bridge.
        self._prefix = os.urandom(4)
        self._ids = itertools.count(1)
        self.counts: Counter[str] = Counter()
        self._closed = False

    @classmethod
    def for_node(cls, config: RelayConfig, run_dir: str) -> ShardClient:
        endpoints = NodeEndpoints(run_dir)
        return cls(
            [endpoints.shard_admin(k) for k in range(config.shards)], config.rest_request_timeout
        )

    def _socket(self, shard: int) -> zmq.asyncio.Socket:
        sock = self._sockets.get(shard)
        if sock is not None:
            return sock
        if self._closed:
            raise RuntimeError("shard client is closed")
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Requests queue only briefly for a stopped shard; past this the send
        # itself waits and the request times out like any other.
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.connect(self.endpoints[shard])
        self._sockets[shard] = sock
        self._readers[shard] = asyncio.get_running_loop().create_task(
            self._read_replies(shard, sock), name=f"shard-{shard}-replies"
        )
        return sock

    async def _read_replies(self, shard: int, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if sock.closed:
                    return
                limited_log.warning("admin_socket_error", "shard %d admin socket error: %s", shard, exc)
                await asyncio.sleep(0.1)
                continue
            if len(frames) != 2:
                self.counts["malformed_replies"] += 1
                continue
            waiter = self._pending.get(frames[0])
            if waiter is None or waiter.done():
                self.counts["late_replies"] += 1
                continue
            try:
                reply = orjson.loads(frames[1])
                result = (int(reply["status"]), reply["body"])
                if not isinstance(result[1], dict):
                    raise TypeError("reply body is not an object")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.counts["malformed_replies"] += 1
                waiter.set_exception(ShardReplyError(f"shard {shard} sent a malformed reply: {exc}"))
                continue
            waiter.set_result(result)

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Send ``body`` to ``shard``; return the reply's (status, body).

        Raises :class:`ShardUnavailable` after ``timeout`` seconds.
        """
        if not 0 <= shard < len(self.endpoints):
            raise ValueError(f"no shard {shard}")
        sock = self._socket(shard)
        request_id = self._prefix + next(self._ids).to_bytes(8, "big")
        # Lets a shard skip work nobody waits for any more (after SIGSTOP or a
        # long stall); shards that do not know the field ignore it.
        payload = orjson.dumps({**body, "deadline": time.time() + self.timeout})
        waiter: asyncio.Future[tuple[int, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request_id] = waiter
        self.counts["requests"] += 1
        try:
            async with asyncio.timeout(self.timeout):
                await sock.send_multipart([request_id, payload])
                return await waiter
        except TimeoutError:
            self.counts["timeouts"] += 1
            raise ShardUnavailable(shard, self.timeout) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        self._closed = True
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._readers.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.cancel()
        self._pending.clear()
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None


# ---------------------------------------------------------------------------
# request/response models


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry lone surrogates ("\ud800"); they cannot go on the wire.
        raise ValueError("must be valid Unicode text (lone surrogates are not allowed)") from None
    return text


def _valid_name(name: str) -> str:
    _valid_text(name)
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"name is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} bytes are allowed "
            f"(the wire format stores names as str8)"
        )
    return name


VarName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_CHARS),
    AfterValidator(_valid_name),
]
VarValue = Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS), AfterValidator(_valid_text)]


def _document_upsert(schema: dict[str, Any]) -> None:
    # Documentation only: at run time an empty or missing ``variables`` is a
    # 400 (reference behaviour), not a 422, so pydantic must not enforce this.
    schema["required"] = ["variables"]


class UpsertBody(BaseModel):
    """``{"variables": {name: value}}``; unknown top-level keys are ignored."""

    model_config = ConfigDict(json_schema_extra=_document_upsert)

    variables: dict[VarName, VarValue] = Field(
        default_factory=dict,
        description=(
            f"names: 1-{MAX_NAME_CHARS} characters and at most {MAX_NAME_BYTES} UTF-8 bytes; "
            f"values: strings of at most {MAX_VALUE_CHARS} characters; at least one entry"
        ),
        json_schema_extra={"minProperties": 1, "maxProperties": MAX_NAMES_PER_TARGET},
    )


class VarState(BaseModel):
    state: Literal["applied", "queued", "failed"]


class ClientMapping(BaseModel):
    clientNo: int | None


class ClientVarsUpsertReply(BaseModel):
    roomId: str
    deviceId: str
    mapping: ClientMapping
    result: dict[str, VarState]


class ClientVarsReply(BaseModel):
    clientNo: int | None
    variables: dict[str, str]


class ClientVarReply(BaseModel):
    clientNo: int | None
    value: str


class ClientVarsDeleteReply(BaseModel):
    clientNo: int | None
    deletedCount: int


class GlobalVarsUpsertReply(BaseModel):
    roomId: str
    result: dict[str, VarState]


class GlobalVarsReply(BaseModel):
    variables: dict[str, str]


class GlobalVarReply(BaseModel):
    value: str


class ErrorDetail(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorDetail} for code in codes}


# ---------------------------------------------------------------------------
# log export

# Severity names accepted by /logs/export: the stdlib levels the relay writes,
# plus the loguru names tools written for the reference may send.
SEVERITIES: dict[str, int] = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARN": 30,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
    "FATAL": 50,
}
LOG_FILE_GLOB = "netsync-relay-*.log*"
_ROTATED = re.compile(r"^(netsync-relay-.+\.log)(?:\.(\d+))?$")


def parse_timestamp(text: str, field: str) -> datetime:
    """ISO-8601 text -> aware UTC datetime (naive input is taken as UTC)."""
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{field} must be an ISO 8601 timestamp, got {text!r}") from None
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _log_chains(log_dir: Path) -> list[list[Path]]:
    """Per log stream, its files oldest first (``x.log.20`` ... ``x.log.1``, ``x.log``)."""
    streams: dict[str, list[tuple[int, Path]]] = {}
    for path in log_dir.glob(LOG_FILE_GLOB):
        match = _ROTATED.match(path.name)
        if match is None or not path.is_file():
            continue
        index = int(match.group(2) or 0)
        streams.setdefault(match.group(1), []).append((index, path))
    return [[p for _, p in sorted(files, reverse=True)] for _, files in sorted(streams.items())]


def _stream_records(
    files: list[Path], start: datetime, end: datetime, min_level: int | None
) -> Iterator[tuple[datetime, str]]:
    start_epoch = start.timestamp()
    for path in files:
        try:
            # A file last written before the window holds nothing in it.
            if path.stat().st_mtime < start_epoch:
                continue
            handle = path.open("r", encoding="utf-8", errors="replace")
        except OSError:
            continue
        with handle:
            for raw in handle:
                line = raw.rstrip("\r\n")
                if not line:
                    continue
                try:
                    event = orjson.loads(line)
                    stamp = parse_timestamp(event["ts"], "ts")
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    continue
                if not start <= stamp <= end:
                    continue
                if min_level is not None:
                    level = SEVERITIES.get(str(event.get("level", "")).upper())
                    if level is None or level < min_level:
                        continue
                yield stamp, line


def iter_log_lines(
    log_dir: str | Path, start: datetime, end: datetime, min_level: int | None = None
) -> Iterator[str]:
    """JSON log lines of every relay log file within [start, end], in time order.

    Each file is already in time order, so a k-way merge streams the result
    without loading the files into memory.
    """
    directory = Path(log_dir)
    if not directory.is_dir():
        return
    chains = [
        itertools.chain.from_iterable(_stream_records([f], start, end, min_level) for f in chain)
        for chain in _log_chains(directory)
    ]
    for _, line in heapq.merge(*chains, key=lambda item: item[0]):
        yield line


# ---------------------------------------------------------------------------
# middleware


def _json_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Callable:
    body = orjson.dumps({"detail": detail})

    async def respond(send: Send) -> None:
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    return respond


class BearerAuthMiddleware:
    """Every request needs ``Authorization: Bearer <token>`` (401 missing, 403 wrong).

    Sits inside the CORS middleware, so preflights are answered before this
    runs and error replies still carry CORS headers a browser can read.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value
                break
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            await _json_response(
                401, "missing bearer token", {"WWW-Authenticate": "Bearer"}
            )(send)
            return
        if not hmac.compare_digest(credentials.strip(), self.token):
            await _json_response(403, "invalid bearer token")(send)
            return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI renders it as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > self.limit:
                    await _json_response(413, f"request body exceeds {self.limit} bytes")(send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            # Chunked bodies declare no length: count while they arrive.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------
# the app


class SafeJSONResponse(JSONResponse):
    """JSON that survives lone surrogates in echoed input.

    A 422 echoes the offending input; JSON text may carry ``"\\ud800"``, which
    has no UTF-8 form, and the stock renderer would fail with a 500.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


async def _validation_error(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
    # FastAPI's own shape ({"detail": [...]}) with the safe renderer.
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        # Starlette lists only the one route it tried in Allow; HTTP wants
        # every method the resource supports (FastAPI has a route per method).
        methods: set[str] = set()
        for route in request.app.router.routes:
            if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods or set()
        if methods:
            headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
            exc = StarletteHTTPException(405, exc.detail, headers=headers)
    return await http_exception_handler(request, exc)


def _check_path_text(**values: str) -> None:
    for field, value in values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(400, f"{field} must be valid UTF-8 text") from None


def create_app(config: RelayConfig, shard_client: ShardRequester) -> FastAPI:
    """The REST bridge app; ``shard_client`` reaches the shards (closed on shutdown)."""
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
            "bridge compatible). Optional bearer-token authentication."
        ),
        lifespan=lifespan,
    )
    app.state.counts = counts
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    async def call(room_id: str, body: dict[str, Any]) -> dict[str, Any]:
        shard = shard_for_room(room_id.encode("utf-8"), config.shards)
        counts["shard_requests"] += 1
        try:
            status, reply = await shard_client.request(shard, body)
        except ShardUnavailable as exc:
            counts["shard_timeouts"] += 1
            limited_log.warning("shard_timeout", "REST %s for room %r: %s", body.get("op"), room_id, exc)
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        except ShardReplyError as exc:
            limited_log.error("shard_bad_reply", "REST %s for room %r: %s", body.get("op"), room_id, exc)
            raise HTTPException(502, str(exc)) from None
        if status == 200:
            return reply
        detail = reply.get("detail", "shard refused the request")
        if 400 <= status < 500:
            # 409 (limits) is part of the API; other 4xx mean a bridge/shard mismatch.
            if status != 409:
                limited_log.error("shard_refused", "shard %d refused %s: %s %s", shard, body.get("op"), status, detail)
            raise HTTPException(status, detail)
        limited_log.error("shard_failed", "shard %d answered %s: %s", shard, status, detail)
        raise HTTPException(502, f"shard {shard} failed: {detail}")

    @app.get("/", summary="Health check")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    client_vars = "/v1/rooms/{room_id}/devices/{device_id}/client-variables"

    @app.post(
        client_vars,
        response_model=ClientVarsUpsertReply,
        responses=_errors(400, 409, 413, 503),
        summary="Set client variables of a device",
    )
    async def set_client_vars(room_id: str, device_id: str, body: UpsertBody) -> dict[str, Any]:
        _check_path_text(room_id=room_id, device_id=device_id)
        if not body.variables:
            raise HTTPException(400, "variables must not be empty")
        return await call(
            room_id,
            {
                "op": "client_vars_set",
                "room": room_id,
                "device": device_id,
                "variables": body.variables,
            },
        )

    @app.get(client_vars, response_model=ClientVarsReply, responses=_errors(503))
    async def get_client_vars(room_id: str, device_id: str) -> dict[str, Any]:
        _check_path_text(room_id=room_id, device_id=device_id)
        reply = await call(
            room_id, {"op": "client_vars_get", "room": room_id, "device": device_id}
        )
        return {"clientNo": reply.get("clientNo"), "variables": reply.get("variables", {})}

    @app.get(client_vars + "/{name}", response_model=ClientVarReply, responses=_errors(404, 503))
    async def get_client_var(
        room_id: str, device_id: str, name: Annotated[VarName, PathParam()]
    ) -> dict[str, Any]:
        _check_path_text(room_id=room_id, device_id=device_id)
        reply = await call(
            room_id, {"op": "client_vars_get", "room": room_id, "device": device_id}
        )
        variables = reply.get("variables", {})
        if name not in variables:
            raise HTTPException(
                404, f"Client variable '{name}' not found for device '{device_id}'"
            )
        return {"clientNo": reply.get("clientNo"), "value": variables[name]}

    @app.delete(client_vars, response_model=ClientVarsDeleteReply, responses=_errors(503))
    async def delete_client_vars(room_id: str, device_id: str) -> dict[str, Any]:
        _check_path_text(room_id=room_id, device_id=device_id)
        return await call(
            room_id,
            {"op": "client_vars_delete", "room": room_id, "device": device_id, "name": None},
        )

    @app.delete(
        client_vars + "/{name}", response_model=ClientVarsDeleteReply, responses=_errors(503)
    )
    async def delete_client_var(
        room_id: str, device_id: str, name: Annotated[VarName, PathParam()]
    ) -> dict[str, Any]:
        _check_path_text(room_id=room_id, device_id=device_id)
        return await call(
            room_id,
            {"op": "client_vars_delete", "room": room_id, "device": device_id, "name": name},
        )

    global_vars = "/v1/rooms/{room_id}/global-variables"

    @app.post(
        global_vars,
        response_model=GlobalVarsUpsertReply,
        responses=_errors(400, 409, 413, 503),
        summary="Set global variables of a room",
    )
    async def set_globals(room_id: str, body: UpsertBody) -> dict[str, Any]:
        _check_path_text(room_id=room_id)
        if not body.variables:
            raise HTTPException(400, "variables must not be empty")
        reply = await call(
            room_id, {"op": "globals_set", "room": room_id, "variables": body.variables}
        )
        return {"roomId": reply.get("roomId", room_id), "result": reply.get("result", {})}

    @app.get(global_vars, response_model=GlobalVarsReply, responses=_errors(503))
    async def get_globals(room_id: str) -> dict[str, Any]:
        _check_path_text(room_id=room_id)
        reply = await call(room_id, {"op": "globals_get", "room": room_id})
        return {"variables": reply.get("variables", {})}

    @app.get(global_vars + "/{name}", response_model=GlobalVarReply, responses=_errors(404, 503))
    async def get_global(room_id: str, name: Annotated[VarName, PathParam()]) -> dict[str, Any]:
        _check_path_text(room_id=room_id)
        reply = await call(room_id, {"op": "globals_get", "room": room_id})
        variables = reply.get("variables", {})
        if name not in variables:
            raise HTTPException(404, f"Global variable '{name}' not found")
        return {"value": variables[name]}

    @app.get(
        "/logs/export",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/x-ndjson": {}}},
            **_errors(400, 404),
        },
        summary="Export JSON log lines in a time window",
    )
    async def export_logs(
        from_: Annotated[str, Query(alias="from", description="ISO-8601 start (inclusive)")],
        to: Annotated[str, Query(description="ISO-8601 end (inclusive)")],
        min_severity: Annotated[
            str | None, Query(description="lowest level: " + ", ".join(SEVERITIES))
        ] = None,
    ) -> StreamingResponse:
        if not config.log_dir:
            raise HTTPException(404, "file logging is not enabled")
        if not Path(config.log_dir).is_dir():
            raise HTTPException(404, "log directory is not available")
        try:
            start = parse_timestamp(from_, "from")
            end = parse_timestamp(to, "to")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if end < start:
            raise HTTPException(400, "to must not be before from")
        min_level = None
        if min_severity is not None and min_severity.strip():
            min_level = SEVERITIES.get(min_severity.strip().upper())
            if min_level is None:
                raise HTTPException(
                    400, "min_severity must be one of " + ", ".join(SEVERITIES)
                )

        def lines() -> Iterator[str]:
            # Sync generator: Starlette iterates it in a worker thread, so
            # reading large files never blocks the event loop.
            for line in iter_log_lines(config.log_dir, start, end, min_level):
                yield line + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # Added innermost first: CORS must be outermost so preflights never need
    # the token and every error reply (401/403/413) still carries CORS headers.
    app.add_middleware(BodyLimitMiddleware, limit=config.rest_max_body_bytes)
    if config.rest_token:
        app.add_middleware(BearerAuthMiddleware, token=config.rest_token)
    # CORS only for the origins an operator listed (rest_cors_origins): by
    # default a browser page on another site cannot read any answer. "*"
    # restores the reference's rule (any origin, with credentials).
    origins = cors_origins(config)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            # A regex (not "*") makes Starlette echo the caller's origin, which
            # browsers require when credentials are allowed.
            allow_origin_regex=".*" if "*" in origins else None,
            allow_origins=[] if "*" in origins else origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization"],
            max_age=3600,
        )
    return app

