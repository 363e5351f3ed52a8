"""``/console``: the operator console's static files (HTML, JS, CSS shipped in the package).

No build step and nothing fetched from elsewhere (relay machines may have no
internet). The page itself loads without a token (it holds no data); every
call it makes goes to the documented JSON API with the token the operator
types in. Data shown comes from rooms' clients, so the files are served with
a strict Content-Security-Policy: only this origin's script, no inline code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

__all__ = ["CONSOLE_DIR", "CONSOLE_PATH", "add_console"]

CONSOLE_PATH = "/console"
CONSOLE_DIR = Path(__file__).with_name("console")

CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # An upgraded relay must not run yesterday's script against today's API.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CONSOLE_HEADERS)
        return response


def add_console(app: FastAPI) -> None:
    """Serve the console under ``/console/`` (``/console`` redirects there)."""
    if not (CONSOLE_DIR / "index.html").is_file():
        raise RuntimeError(f"console files missing from the package: {CONSOLE_DIR}")
    app.mount(CONSOLE_PATH, ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
