"""A child's last word: one line saying why it gave up.

A child that exits on an error it cannot recover from (a corrupt data file, a
port it cannot bind) writes the reason to ``run_dir/fatal-<child>.txt``
before exiting. The supervisor reads it when it decides that a child cannot
be kept running, so the node stops with one error naming the cause instead
of "exit code 1". The supervisor removes the file before each start of the
child, so a reason never outlives the instance that wrote it.
"""

from __future__ import annotations

import os

__all__ = ["clear_fatal", "fatal_path", "read_fatal", "record_fatal"]

MAX_REASON = 1000


def fatal_path(run_dir: str, child_name: str) -> str:
    return os.path.join(run_dir, f"fatal-{child_name}.txt")


def record_fatal(run_dir: str, child_name: str, reason: str) -> None:
    """Write (overwrite) the child's reason; never raises: the child is dying anyway."""
    line = " ".join(str(reason).split())[:MAX_REASON] or "unknown error"
    path = fatal_path(run_dir, child_name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def read_fatal(run_dir: str, child_name: str) -> str | None:
    try:
        with open(fatal_path(run_dir, child_name), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def clear_fatal(run_dir: str, child_name: str) -> None:
    try:
        os.unlink(fatal_path(run_dir, child_name))
    except OSError:
        pass
