"""`relayctl stop` signals only the relay it started (issue #15): the pid file in
the run dir is checked against /proc (owner, start time, command line), and the
port -> run dir pointer lives in a private per-user directory, never in /tmp."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.pidfile import PID_FILE, pointer_path, process_start_ticks
from tests.support import RELAYCTL, REPO, RelayNode, free_ports, wait_for

pytestmark = pytest.mark.timeout(90)


def relayctl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(RELAYCTL + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A process of ours that relayctl must never signal."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(5)


def fake_run_dir(tmp_path: Path, pid: int, ticks: int) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / PID_FILE).write_text(f"{pid} {ticks}\n")
    (run_dir / "supervisor.json").write_text(f'{{"supervisor_pid": {pid}, "run_dir": "{run_dir}", "children": {{}}}}')
    return run_dir


def test_stop_refuses_a_pid_whose_start_time_does_not_match(tmp_path: Path, bystander: subprocess.Popen) -> None:
    ticks = wait_for(lambda: process_start_ticks(bystander.pid), 5)
    run_dir = fake_run_dir(tmp_path, bystander.pid, ticks - 1)  # a reused pid
    result = relayctl("stop", "--run-dir", str(run_dir), "--timeout", "1")
    assert result.returncode == 1
    assert "refusing to stop" in result.stderr and "another time" in result.stderr
    time.sleep(0.2)
    assert bystander.poll() is None, "relayctl signalled a process it did not start"


def test_stop_refuses_a_pid_that_is_not_a_relay(tmp_path: Path, bystander: subprocess.Popen) -> None:
    ticks = wait_for(lambda: process_start_ticks(bystander.pid), 5)
    run_dir = fake_run_dir(tmp_path, bystander.pid, ticks)  # right start time, wrong program
    result = relayctl("stop", "--run-dir", str(run_dir), "--timeout", "1")
    assert result.returncode == 1
    assert "not running `relayctl start`" in result.stderr
    assert relayctl("status", "--json", "--run-dir", str(run_dir)).returncode == 1
    time.sleep(0.2)
    assert bystander.poll() is None


def test_stop_never_trusts_a_pointer_planted_in_tmp(tmp_path: Path, bystander: subprocess.Popen) -> None:
    port = free_ports(1)[0]
    ticks = wait_for(lambda: process_start_ticks(bystander.pid), 5)
    run_dir = fake_run_dir(tmp_path, bystander.pid, ticks)
    planted = Path("/tmp") / f"netsync-relay-{port}.json"  # where the pointer used to live
    planted.write_text(f'{{"run_dir": "{run_dir}", "pid": {bystander.pid}}}')
    try:
        result = relayctl("stop", "--control-port", str(port), "--timeout", "1")
        assert result.returncode == 1
        assert "no running relay found" in result.stderr
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        planted.unlink()
    private = pointer_path(port)
    assert private is not None and not private.startswith(f"/tmp/netsync-relay-{port}")
    assert os.stat(os.path.dirname(private)).st_mode & 0o077 == 0


def test_stop_of_a_real_node_checks_and_signals_it(tmp_path: Path) -> None:
    node = RelayNode(shards=1).start()
    try:
        assert (Path(node.run_dir) / PID_FILE).read_text().split()[0] == str(node.proc.pid)
        # Found through the private pointer by port, verified, stopped.
        result = relayctl("stop", "--control-port", str(node.control_port), "--timeout", "10")
        assert result.returncode == 0, result.stderr
        assert node.proc.wait(timeout=5) == 0
        assert not (Path(node.run_dir) / PID_FILE).exists()
    finally:
        node.stop()
