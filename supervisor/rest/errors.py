"""How errors are rendered: FastAPI's shapes, made safe for any input.

Validation errors keep FastAPI's ``{"detail": [...]}`` list (tools written for
the reference parse it) but survive input that has no UTF-8 form, and a 405
lists every method the resource supports, not just the one route tried.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import Match, Route

__all__ = ["SafeJSONResponse", "install_error_handlers"]


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
