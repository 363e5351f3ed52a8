"""Logging for every relay process: stdlib logging, one event per line.

Each child (supervisor, ingress, proxy, shard-N, rest) calls
:func:`setup_logging` once at start. Lines carry the child's name so the
interleaved console output of a node stays attributable; JSON mode and the
optional log files emit one JSON object per line for log shippers.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging", "shutdown_logging"]

LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 20

# Attribute set on handlers we install, so re-configuring replaces exactly
# ours and leaves foreign handlers (pytest's capture, embedding apps) alone.
_OWNED = "_netsync_relay_handler"

# Everything a bare LogRecord has; the rest of record.__dict__ came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _iso_utc(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<ts> [child] LEVEL logger: message``; continuation lines keep the prefix."""

    def __init__(self, child: str) -> None:
        super().__init__()
        self.child = child

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        prefix = f"[{self.child}]"
        head, *rest = message.split("\n")
        line = f"{_iso_utc(record.created)} {prefix} {record.levelname} {record.name}: {head}"
        if not rest:
            return line
        # Tracebacks span lines; prefixing each keeps `grep '[shard-3]'` complete.
        return "\n".join([line, *(f"{prefix} | {part}" for part in rest)])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, child, logger, msg, then extras."""

    def __init__(self, child: str) -> None:
        super().__init__()
        self.child = child

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "child": self.child,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in event:
                event[key] = value
        try:
            data = orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            # e.g. an int beyond 64 bits in `extra`: never lose the event itself.
            data = orjson.dumps(
                {k: (v if isinstance(v, str) else repr(v)) for k, v in event.items()}
            )
        return data.decode()


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    return number


def shutdown_logging() -> None:
    """Remove (and close) the handlers installed by :func:`setup_logging`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()


def setup_logging(
    child_name: str, level: str = "INFO", json_lines: bool = False, log_dir: str = ""
) -> logging.Logger:
    """Configure the root logger for this process and return the child's logger.

    Idempotent: a second call replaces the handlers of the first (a forked
    child inherits its parent's and re-labels them this way). With ``log_dir``
    JSON lines also go to ``<log_dir>/netsync-relay-<child>.log``, rotated at
    10 MB, 20 files kept.
    """
    number = _level_number(level)
    shutdown_logging()
    root = logging.getLogger()
    root.setLevel(number)

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter(child_name) if json_lines else TextFormatter(child_name))
    setattr(console, _OWNED, True)
    root.addHandler(console)

    if log_dir:
        directory = Path(log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            directory / f"netsync-relay-{child_name}.log",
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        file_handler.setFormatter(JsonFormatter(child_name))
        setattr(file_handler, _OWNED, True)
        root.addHandler(file_handler)

    return logging.getLogger(f"netsync_relay.{child_name}")
