"""``GET /logs/export``: the node's JSON log lines within a time window.

Reads the relay's own log files (``--log-dir``), merges every child's stream
in time order and streams the result as NDJSON without loading whole files.
Operational only; NetSync clients never call it (BEHAVIOR §12).
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

from relay.config import RelayConfig
from supervisor.rest.models import error_responses

__all__ = ["SEVERITIES", "add_log_export_route", "iter_log_lines", "parse_timestamp"]

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


def add_log_export_route(app: FastAPI, config: RelayConfig) -> None:
    @app.get(
        "/logs/export",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/x-ndjson": {}}},
            **error_responses(400, 404),
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
