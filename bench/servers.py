"""Servers under test: how to start them, when they are ready, what they cost.

Every server is a real subprocess in its own process group so that its whole
process tree can be measured with psutil and cleaned up.

Scheduling: by default the server stays in the harness's session, next to the
load generator. With ``kernel.sched_autogroup_enabled=1`` (the default on most
desktop and VM kernels) Linux schedules each *session* as one group with an
equal share; a server started with ``setsid`` then competes as one group
against the load generator's group, on the same two cores. That models a
machine shared with a hostile neighbour of equal weight, not a relay host, and
it penalises pipelines of many short hops (every hand-off waits for the
group's turn). ``isolate_session=True`` (``bench.run --isolate-sessions``)
reproduces that condition; BENCHMARKS.md reports what it changes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import thread_usage
from bench.loadgen import wait_ready

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Ports:
    control: int
    pub: int
    transform: int
    rest: int


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str = "127.0.0.1") -> Ports:
    """Three consecutive free TCP ports (control, pub, transform) plus a REST port."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            rest = s.getsockname()[1]
        if rest in (base, base + 1, base + 2):
            continue
        if all(_port_free(host, p) for p in (base, base + 1, base + 2, rest)):
            return Ports(base, base + 1, base + 2, rest)
    raise RuntimeError("no free port range found")


@dataclass(frozen=True)
class ServerKind:
    """One server under test. ``kind`` is "relay", "reference" or "bare"."""

    name: str
    kind: str
    shards: int = 0

    def argv(self, ports: Ports, run_dir: Path, data_dir: Path, extra: list[str]) -> list[str]:
        common = [
            "--control-port",
            str(ports.control),
            "--transform-port",
            str(ports.transform),
            "--pub-port",
            str(ports.pub),
        ]
        if self.kind == "relay":
            return [
                str(BIN / "relayctl"),
                "start",
                "--shards",
                str(self.shards),
                "--host",
                "127.0.0.1",
                *common,
                "--rest-api-port",
                str(ports.rest),
                "--no-server-discovery",
                "--metrics-port",
                "0",
                "--run-dir",
                str(run_dir),
                "--data-dir",
                str(data_dir),
                *extra,
            ]
        if self.kind == "reference":
            return [
                str(BIN / "styly-netsync-server"),
                *common,
                "--rest-api-port",
                str(ports.rest),
                "--no-server-discovery",
            ]
        if self.kind == "bare":
            return [sys.executable, "-m", "bench.bare_forwarder", "--host", "127.0.0.1", *common]
        raise ValueError(self.kind)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@dataclass
class ServerProcess:
    """A running server and its measurements (CPU of its tree, peak RSS sum)."""

    server: ServerKind
    extra: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    isolate_session: bool = False

    def __post_init__(self) -> None:
        self.ports = free_ports(self.host)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.server.name}-"))
        self.log_path = self.tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self._stop_sampler = threading.Event()
        self._sampler: threading.Thread | None = None
        self._cpu_start: dict[int, float] = {}
        self.cpu_window_s: float | None = None
        self._busy_start = 0.0
        self.machine_busy_s: float | None = None
        self.window_start_wall: float | None = None
        self._threads_start: thread_usage.ThreadSample = {}
        self._window_start = 0.0
        # Per thread of the tree over the window (bench/thread_usage.py).
        self.threads: list[dict[str, Any]] = []

    # ---------------------------------------------------------- lifecycle
    def start(self) -> None:
        run_dir = self.tmp / "run"
        data_dir = self.tmp / "data"
        run_dir.mkdir()
        data_dir.mkdir()
        argv = self.server.argv(self.ports, run_dir, data_dir, self.extra)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.isolate_session,
                process_group=None if self.isolate_session else 0,
            )
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True when a hello gets a DEVICE_ID_MAPPING; False if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if wait_ready(self.host, self.ports.control, timeout=1.0):
                return True
        return False

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self._stop_sampler.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            # whatever is left of the process group we started (e.g. orphaned children)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._sampler is not None:
            self._sampler.join(2)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -------------------------------------------------------- measurement
    def _procs(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return _tree(psutil.Process(self.proc.pid))
        except psutil.Error:
            return []

    def _cpu_by_pid(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def _sample(self) -> None:
        while not self._stop_sampler.wait(0.25):
            total = 0
            for p in self._procs():
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, total)

    def on_phase(self, phase: str) -> None:
        """Hook for loadgen.run: CPU of the process tree (and of each thread) over the window."""
        if phase == "window_start":
            self.window_start_wall = time.time()
            self._cpu_start = self._cpu_by_pid()
            self._busy_start = _machine_busy()
            self._threads_start = thread_usage.sample(self._cpu_start)
            self._window_start = time.monotonic()
        elif phase == "window_end":
            end = self._cpu_by_pid()
            self.cpu_window_s = sum(v - self._cpu_start.get(pid, 0.0) for pid, v in end.items())
            self.machine_busy_s = _machine_busy() - self._busy_start
            seconds = time.monotonic() - self._window_start
            run_dir = self.tmp / "run" if self.server.kind == "relay" else None
            names = thread_usage.process_names(self.proc.pid, run_dir) if self.proc is not None else {}
            self.threads = thread_usage.diff(self._threads_start, thread_usage.sample(end), seconds, names)


def _machine_busy() -> float:
    """CPU seconds spent by the whole machine (all cores) on anything but idle."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)
