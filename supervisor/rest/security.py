"""What guards the REST bridge: bearer token, request-body cap and CORS.

All three are ASGI middleware installed by :func:`install_security` in the
one order that works for browsers: CORS outermost (preflights never need the
token; 401/403/413 replies still carry CORS headers), then the token check,
then the body cap.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.config import RelayConfig
from supervisor.safety import cors_origins

__all__ = ["BearerAuthMiddleware", "BodyLimitMiddleware", "BodyTooLarge", "install_security"]


def _json_response(
    status: int, detail: str, headers: dict[str, str] | None = None
) -> Callable[[Send], Awaitable[None]]:
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
    ``public_paths`` (and everything below them) may be read without a token:
    static files a browser must load before it can ask for the token.
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token.encode("utf-8")
        self.public_paths = public_paths

    def _public(self, scope: Scope) -> bool:
        if scope.get("method") not in ("GET", "HEAD"):
            return False
        path = scope.get("path", "")
        return any(path == p or path.startswith(p + "/") for p in self.public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope):
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


def install_security(
    app: FastAPI, config: RelayConfig, public_paths: tuple[str, ...] = ()
) -> None:
    """Body cap, optional bearer token and CORS for the listed origins only."""
    # Added innermost first: CORS must be outermost so preflights never need
    # the token and every error reply (401/403/413) still carries CORS headers.
    app.add_middleware(BodyLimitMiddleware, limit=config.rest_max_body_bytes)
    if config.rest_token:
        app.add_middleware(
            BearerAuthMiddleware, token=config.rest_token, public_paths=public_paths
        )
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
