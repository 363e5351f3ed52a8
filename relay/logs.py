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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "RateLimitedLog",
    "TextFormatter",
    "setup_logging",
    "shutdown_logging",
]

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


# ---------------------------------------------------------------------------
# rate-limited logging for per-message paths


@dataclass(slots=True)
class _ReasonState:
    last_logged: float
    level: int
    suppressed: int = 0
    traced: bool = False


class RateLimitedLog:
    """At most one line per reason per ``interval``; the rest are counted.

    Every path that runs once per client message (a refused write, a drop, a
    handler exception, a dead peer) logs through one of these, so a client
    that repeats a bad message 10 000 times costs a handful of lines, not
    10 000. Each reason's first event is logged at once; later events within
    the interval are suppressed and their number is reported on the reason's
    next line or by :meth:`flush`, whichever comes first. The first traceback
    of a reason is kept (logged in full); later lines of that reason carry
    only the exception's type and message.

    ``counts`` holds every event by reason, logged or not; callers export it
    as their drop counters. Reasons must be fixed strings (never built from
    client input); past ``max_reasons`` distinct reasons new ones are folded
    into ``"other"`` so a bug cannot grow the tables without bound.
    Single-threaded use, like the loops that own one.
    """

    OTHER = "other"

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        *,
        max_reasons: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_reasons = max_reasons
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._reasons: dict[str, _ReasonState] = {}

    def _reason(self, reason: str) -> str:
        if reason in self._reasons or len(self._reasons) < self.max_reasons:
            return reason
        return self.OTHER

    def log(
        self,
        level: int,
        reason: str,
        msg: str,
        *args: object,
        exc_info: bool = False,
        count: int = 1,
    ) -> bool:
        """Count the event (``count`` messages); log it unless its reason
        logged within the interval. Returns True when a line was written.
        """
        reason = self._reason(reason)
        self.counts[reason] += count
        now = self.clock()
        state = self._reasons.get(reason)
        if state is not None and now - state.last_logged < self.interval:
            state.suppressed += 1
            state.level = max(state.level, level)
            return False
        if state is None:
            state = self._reasons[reason] = _ReasonState(now, level)
        suppressed, state.suppressed = state.suppressed, 0
        state.last_logged = now
        state.level = level
        if not self.logger.isEnabledFor(level):
            return False
        text = msg % args if args else msg
        if suppressed:
            text += f" (+{suppressed} more {reason!r} suppressed since the last report, {self.counts[reason]} in total)"
        trace: object = False
        if exc_info:
            exc = sys.exc_info()[1]
            if not state.traced:
                state.traced = True
                trace = True  # the first traceback of a reason is the one worth reading
            elif exc is not None:
                text += f" [{type(exc).__name__}: {exc}; traceback logged earlier]"
        self.logger.log(level, "%s", text, exc_info=trace)
        return True

    def info(self, reason: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, reason, msg, *args)

    def warning(self, reason: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, reason, msg, *args)

    def error(self, reason: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, reason, msg, *args)

    def exception(self, reason: str, msg: str, *args: object) -> bool:
        """As :meth:`error`, from an ``except`` block: keeps the reason's first traceback."""
        return self.log(logging.ERROR, reason, msg, *args, exc_info=True)

    def drop(self, reason: str, detail: str, count: int = 1) -> None:
        """``count`` dropped messages: counted under ``reason``, logged rate-limited."""
        self.log(logging.WARNING, reason, "dropped message: %s: %s", reason, detail, count=count)

    def flush(self) -> int:
        """Report suppressed counts whose interval has passed; returns lines written.

        Call it from a periodic path (a status write): without it, the count
        of a flood that stopped would only appear when the reason recurs.
        """
        now = self.clock()
        written = 0
        for reason, state in self._reasons.items():
            if state.suppressed and now - state.last_logged >= self.interval:
                suppressed, state.suppressed = state.suppressed, 0
                state.last_logged = now
                if self.logger.isEnabledFor(state.level):
                    self.logger.log(
                        state.level,
                        "%s: %d more suppressed in the last %.0fs (%d in total)",
                        reason, suppressed, self.interval, self.counts[reason],
                    )
                    written += 1
        return written
