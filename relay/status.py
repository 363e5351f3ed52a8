"""Status files: each child publishes a small JSON document in the run dir.

Written atomically (temp file + rename) so a reader never sees half a file;
`relayctl status` and the supervisor read them without talking to the child.
"""

from __future__ import annotations

import os
from typing import Any

import orjson


def write_status(path: str, status: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(status, option=orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            return orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return None
