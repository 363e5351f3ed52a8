"""Finding and identifying a running node without trusting stale or foreign files.

``relayctl stop`` signals a pid it read from a file. A pid is reused by the
kernel once its process exits, and a file in a world-writable directory can
be planted by anyone, so neither is trusted on its own:

- the supervisor writes ``relay.pid`` into its run directory: its pid, the
  process's start time (``/proc/<pid>/stat`` field 22, clock ticks since
  boot) and a marker of its command line;
- before signalling, ``relayctl`` checks that the file belongs to the
  current user and that a process with that pid exists, belongs to the user,
  started at exactly that time and runs ``relayctl start``;
- the pointer that maps a control port to a run directory (for ``relayctl
  stop`` without ``--run-dir``) lives in a per-user directory (mode 0700,
  owned by the user: ``$XDG_RUNTIME_DIR/netsync-relay`` or
  ``/tmp/netsync-relay-<uid>``), never directly in ``/tmp``.
"""

from __future__ import annotations

import os
import stat
import tempfile

__all__ = [
    "PID_FILE",
    "check_relay_process",
    "pointer_path",
    "process_start_ticks",
    "read_pidfile",
    "remove_pidfile",
    "write_pidfile",
]

PID_FILE = "relay.pid"
# What the supervisor's command line must contain (python -m supervisor.cli
# start ... or the relayctl entry point).
_CMDLINE_MARKERS = ("relayctl", "supervisor.cli")


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        # The command name may contain spaces and ')': split after the last one.
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []


def _is_relay_cmdline(argv: list[str]) -> bool:
    return any(marker in part for part in argv for marker in _CMDLINE_MARKERS) and "start" in argv


def write_pidfile(run_dir: str) -> str:
    """Record this process as the node's supervisor; returns the file's path."""
    path = os.path.join(run_dir, PID_FILE)
    pid = os.getpid()
    ticks = process_start_ticks(pid)
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{pid} {ticks if ticks is not None else -1}\n")
    os.replace(tmp, path)
    return path


def remove_pidfile(run_dir: str) -> None:
    """Remove the pid file if it is still ours (a successor may have replaced it)."""
    path = os.path.join(run_dir, PID_FILE)
    record = read_pidfile(run_dir)
    if record is not None and record[0] == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def read_pidfile(run_dir: str) -> tuple[int, int] | None:
    """(pid, start ticks) from a run dir's pid file, or None if absent or unreadable."""
    try:
        with open(os.path.join(run_dir, PID_FILE)) as fh:
            pid_text, ticks_text = fh.read().split()[:2]
        return int(pid_text), int(ticks_text)
    except (OSError, ValueError):
        return None


def check_relay_process(run_dir: str) -> tuple[int | None, str | None]:
    """(pid, None) if the run dir's pid file names our running supervisor,
    else (pid or None, why not)."""
    path = os.path.join(run_dir, PID_FILE)
    try:
        info = os.stat(path)
    except OSError:
        return None, f"no pid file {path}"
    if info.st_uid != os.getuid():
        return None, f"{path} belongs to uid {info.st_uid}, not to you"
    record = read_pidfile(run_dir)
    if record is None:
        return None, f"{path} is not a relay pid file"
    pid, ticks = record
    started = process_start_ticks(pid)
    if started is None:
        return pid, f"pid {pid} is not running"
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return pid, f"pid {pid} is not running"
    if owner != os.getuid():
        return pid, f"pid {pid} belongs to uid {owner}, not to you"
    if started != ticks:
        return pid, f"pid {pid} started at another time than the relay recorded (a reused pid)"
    if not _is_relay_cmdline(_cmdline(pid)):
        return pid, f"pid {pid} is not running `relayctl start`"
    return pid, None


def _private_dir() -> str | None:
    """A directory only this user can write, for pointer files; None if unsafe."""
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "netsync-relay") if runtime else os.path.join(
        tempfile.gettempdir(), f"netsync-relay-{uid}"
    )
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError:
        return None
    # Someone else's directory, a symlink, or one others may write: not ours to trust.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        return None
    return base


def pointer_path(control_port: int) -> str | None:
    """Where `relayctl status/stop` finds a node started without --run-dir, or
    None when no private directory is available (then --run-dir is needed)."""
    base = _private_dir()
    return os.path.join(base, f"port-{control_port}.json") if base else None
