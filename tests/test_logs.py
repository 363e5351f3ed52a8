"""Logging setup (relay/logs.py): per-child prefixes, JSON lines, files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from relay.logs import setup_logging, shutdown_logging


@pytest.fixture
def clean_logging() -> Any:
    root = logging.getLogger()
    level = root.level
    yield
    shutdown_logging()
    root.setLevel(level)


@pytest.mark.usefixtures("clean_logging")
def test_text_lines_carry_child_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    log = setup_logging("shard-0", level="INFO")
    log.info("hello %s", "world")
    log.debug("hidden")
    logging.getLogger("relay.other").warning("from elsewhere")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert all("[shard-0]" in line for line in lines)
    assert "INFO" in lines[0] and lines[0].endswith("hello world")
    assert "WARNING" in lines[1] and "relay.other" in lines[1]


@pytest.mark.usefixtures("clean_logging")
def test_text_traceback_lines_keep_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    log = setup_logging("ingress")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) > 2
    assert all("[ingress]" in line for line in lines)
    assert any("RuntimeError: boom" in line for line in lines)


@pytest.mark.usefixtures("clean_logging")
def test_json_lines_parse(capsys: pytest.CaptureFixture[str]) -> None:
    log = setup_logging("proxy", level="debug", json_lines=True)
    log.debug("multi\nline", extra={"room": "r1", "count": 3, "obj": object()})
    log.warning("second")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "multi\nline"
    assert first["level"] == "DEBUG" and first["child"] == "proxy"
    assert first["logger"] == log.name
    assert first["room"] == "r1" and first["count"] == 3
    assert first["obj"].startswith("<object")
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "WARNING" and "room" not in second


@pytest.mark.usefixtures("clean_logging")
def test_json_exception_field(capsys: pytest.CaptureFixture[str]) -> None:
    log = setup_logging("rest", json_lines=True)
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("oops")
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert "KeyError" in event["exc"]


@pytest.mark.usefixtures("clean_logging")
def test_file_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "logs" / "nested"
    log = setup_logging("shard-2", level="INFO", log_dir=str(log_dir))
    log.info("to file", extra={"room": "abc"})
    shutdown_logging()  # flushes and closes the file
    path = log_dir / "netsync-relay-shard-2.log"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["msg"] == "to file" and event["child"] == "shard-2" and event["room"] == "abc"
    # The console stays in text mode.
    assert "[shard-2]" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_logging")
def test_setup_is_idempotent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    setup_logging("supervisor", log_dir=str(tmp_path))
    log = setup_logging("supervisor", log_dir=str(tmp_path))
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_netsync_relay_handler", False)]
    assert len(ours) == 2  # one console + one file, not doubled
    log.info("once")
    assert capsys.readouterr().err.count("once") == 1


@pytest.mark.usefixtures("clean_logging")
def test_resetup_relabels_and_keeps_foreign_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    foreign = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        setup_logging("supervisor")
        log = setup_logging("shard-1")
        log.info("relabelled")
        err = capsys.readouterr().err
        assert "[shard-1]" in err and "[supervisor]" not in err
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


def test_bad_level_rejected() -> None:
    with pytest.raises(ValueError):
        setup_logging("x", level="LOUD")
