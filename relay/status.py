"""Status files: each child publishes a small JSON document in the run dir.

Written atomically (temp file + rename) so a reader never sees half a file;
`relayctl status` and the supervisor read them without talking to the child.

The hot loops (ingress, shard) hand their document to a ``StatusWriter``
thread: creating and renaming a file waits for the filesystem's journal,
which on a busy disk took 40 ms once in a benchmark window -- a stall of
every control message behind it (BENCHMARKS.md, "Where control time goes").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import orjson

log = logging.getLogger("relay.status")


def _write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_status(path: str, status: dict[str, Any]) -> None:
    _write_bytes(path, orjson.dumps(status, option=orjson.OPT_NON_STR_KEYS))


class StatusWriter:
    """Writes one status file from a thread; the loop only serialises.

    Latest only: a document submitted while the previous one is still being
    written replaces the one waiting (``replaced`` counts them), so at most
    one waits. ``close`` writes what waits before it returns.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.replaced = 0
        self.failures = 0
        self._pending: bytes | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def submit(self, status: dict[str, Any]) -> None:
        data = orjson.dumps(status, option=orjson.OPT_NON_STR_KEYS)
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
            self._pending = data
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                data, self._pending = self._pending, None
                if data is None:
                    return  # closed with nothing waiting
            try:
                _write_bytes(self.path, data)
            except OSError as exc:
                self.failures += 1  # the next document tries again
                if self.failures == 1:
                    log.warning("status file %s not written: %s (later failures counted only)", self.path, exc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)


def read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            return orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return None
