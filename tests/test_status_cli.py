"""`relayctl status` and `relayctl stop` against a real node, found through its run dir."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.support import RELAYCTL, REPO, RawClient, RelayNode, wait_for

pytestmark = pytest.mark.timeout(90)


def relayctl(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        RELAYCTL + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def status_json(node: RelayNode) -> dict[str, Any]:
    result = relayctl("status", "--json", "--run-dir", node.run_dir)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def node() -> Iterator[RelayNode]:
    with RelayNode(shards=2) as running:
        yield running


def test_status_json_lists_live_children(node: RelayNode) -> None:
    state = status_json(node)
    assert state["running"] is True
    assert state["supervisor_pid"] == node.proc.pid
    children = state["children"]
    assert {"proxy", "shard-0", "shard-1", "ingress"} <= set(children)
    for name, child in children.items():
        assert child["alive"], name
        assert isinstance(child["pid"], int) and pid_exists(child["pid"]), name
        assert child["restarts"] == 0, name
    # Shard rows carry what the table shows: rooms, clients, queue depths.
    wait_for(lambda: status_json(node)["children"]["shard-0"]["status"], 5.0, what="shard status")
    shard = status_json(node)["children"]["shard-0"]["status"]
    for field in ("rooms", "clients", "ctrl_queue_depth", "ctrl_queue_high_water"):
        assert field in shard, field


def test_kill_9_of_a_shard_shows_as_a_restart(node: RelayNode) -> None:
    old_pid = status_json(node)["children"]["shard-1"]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        child = status_json(node)["children"]["shard-1"]
        if child["restarts"] == 1 and child["alive"] and child["pid"] not in (None, old_pid):
            return child
        return None

    child = wait_for(restarted, 15.0, interval=0.2, what="shard-1 restarted")
    assert child["last_exit"] == -signal.SIGKILL
    assert pid_exists(child["pid"]) and not pid_exists(old_pid)
    others = status_json(node)["children"]
    assert all(others[name]["restarts"] == 0 for name in others if name != "shard-1")

    table = relayctl("status", "--run-dir", node.run_dir)
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("shard-1 "))
    # CHILD PID STATE UPTIME RESTARTS LAST-EXIT
    assert row[1] == str(child["pid"]) and row[2] == "up" and row[4] == "1" and row[5] == "-9", row


def test_status_table_shows_shards_and_queues(node: RelayNode) -> None:
    wait_for(lambda: status_json(node)["children"]["shard-1"]["status"], 5.0, what="shard status")
    result = relayctl("status", "--run-dir", node.run_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("CHILD", "RESTARTS", "SHARD", "ROOMS", "CLIENTS", "CTRL Q", "CTRL HW", "ingress:"):
        assert heading in out, (heading, out)
    shard_rows = [line.split() for line in out.splitlines() if line[:2] in ("0 ", "1 ")]
    assert len(shard_rows) == 2, out


def test_status_finds_node_by_control_port(node: RelayNode) -> None:
    result = relayctl("status", "--json", "--control-port", str(node.control_port))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["run_dir"] == node.run_dir


def test_stop_ends_the_node_quickly(node: RelayNode) -> None:
    pids = [c["pid"] for c in status_json(node)["children"].values()]
    started = time.monotonic()
    result = relayctl("stop", "--run-dir", node.run_dir, timeout=10.0)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 5.0, f"stop took {elapsed:.1f}s"
    assert node.proc.wait(timeout=1.0) == 0
    assert not any(pid_exists(pid) for pid in pids)
    after = relayctl("status", "--run-dir", node.run_dir)
    assert after.returncode == 1


def test_status_without_a_node_fails_clearly(tmp_path: Any) -> None:
    result = relayctl("status", "--run-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no running relay" in result.stderr
    result = relayctl("stop", "--run-dir", str(tmp_path))
    assert result.returncode == 1


@pytest.mark.timeout(60)
def test_periodic_status_log_line(tmp_path) -> None:
    from tests.support import write_config

    config = write_config(tmp_path, status_log_interval=0.5)
    with RelayNode(shards=2, extra_args=["--config", config]) as node:
        client = RawClient(node, "status-line", "status-dev", subscribe=False)
        try:
            client.join()
            import re

            # The readiness probe is a member too, in a room of its own.
            line = re.compile(r"status: rooms=2 visible=2 stealth=0 tracked_devices=2 ")
            wait_for(lambda: line.search(node.log_text()), 10, interval=0.2, what="status line with the member")
        finally:
            client.close()
