"""The arbiter: reaping, backoff, stopping on a child that cannot start, and the
order of scale and rolling-restart steps.

The first group runs ``Arbiter.run()`` in this process with real spawned
children from ``tests/arbiter_children.py`` (no relay children, no ports).
The second drives the scale/reload operations with a recording cluster
object and no processes at all.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from relay.config import RelayConfig
from relay.fatal import record_fatal
from supervisor.arbiter import Arbiter, Child
from tests import arbiter_children as kids
from tests.support import free_ports

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def saved_signals() -> Iterator[None]:
    sigs = [*Arbiter.SIGNALS]
    saved = {sig: signal.getsignal(sig) for sig in sigs}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def real_arbiter(tmp_path: Any, specs: list[tuple], **values: Any) -> Arbiter:
    config = RelayConfig(
        run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), metrics_port=0,
        control_port=free_ports(1)[0], shards=1, **values,
    )
    arbiter = Arbiter(config)
    arbiter.child_specs = lambda: list(specs)  # type: ignore[method-assign]
    return arbiter


def gone(pid: int) -> bool:
    """Reaped: not our child any more, and not a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        return False
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" not in fh.read()
    except OSError:
        return True


# ------------------------------------------------------------ real children


@pytest.mark.usefixtures("saved_signals")
def test_a_child_that_cannot_start_fails_the_start_naming_it_and_its_cause(tmp_path, capsys) -> None:
    arbiter = real_arbiter(tmp_path, [
        ("steady", kids.steady, ()),
        ("broken", kids.raise_at_start, ("database disk image is malformed",)),
    ])
    started = time.monotonic()
    assert arbiter.run() == 1
    assert time.monotonic() - started < 15
    lines = [line for line in capsys.readouterr().err.splitlines() if "broken" in line]
    assert len(lines) == 1, lines
    assert "database disk image is malformed" in lines[0]
    assert all(c.pid is None for c in arbiter.children.values())


@pytest.mark.usefixtures("saved_signals")
def test_failing_at_start_n_times_in_a_row_stops_the_node_with_one_error(tmp_path, capsys, caplog) -> None:
    counter = tmp_path / "starts"
    counter.mkdir()
    run_dir = str(tmp_path / "run")
    reason = "file is not a database: /data/shard-1.sqlite3"
    arbiter = real_arbiter(
        tmp_path,
        [("steady", kids.steady, ()), ("journal", kids.ready_then_broken, (str(counter), run_dir, "journal", reason))],
        max_start_failures=3,
    )
    caplog.set_level(logging.INFO, logger="relay.supervisor")
    started = time.monotonic()
    assert arbiter.run() == 1
    assert time.monotonic() - started < 15
    # One start that became ready and died young, then two that never became ready.
    assert len(os.listdir(counter)) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "journal" in errors[0] and reason in errors[0] and "3 times in a row" in errors[0]
    err = [line for line in capsys.readouterr().err.splitlines() if "journal" in line]
    assert len(err) == 1 and reason in err[0], err
    # The ordered shutdown stopped the healthy child too, and every pid was reaped.
    for child in arbiter.children.values():
        assert child.pid is None
    assert arbiter.children["steady"].last_exit == 0
    assert all(gone(h["pid"]) for h in arbiter.children["journal"].history)


@pytest.mark.usefixtures("saved_signals")
def test_a_child_dying_after_ready_is_restarted_with_growing_capped_delays_and_reaped(tmp_path) -> None:
    arbiter = real_arbiter(tmp_path, [("flappy", kids.die_after_ready, (0.2,))], max_start_failures=100)
    arbiter.max_backoff = 1.0

    def stop_after_restarts() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            child = arbiter.children.get("flappy")
            if child is not None and child.restarts >= 6:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=stop_after_restarts, daemon=True)
    watcher.start()
    assert arbiter.run() == 0
    watcher.join(5)
    history = arbiter.children["flappy"].history
    assert len(history) >= 6
    delays = [h["backoff_s"] for h in history[:6]]
    assert delays[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(delays)), delays
    assert delays[2] > delays[1] > 0 and max(delays) == 1.0, delays
    assert all(h["ready"] and h["exit"] == 3 for h in history)
    pids = [h["pid"] for h in history]
    assert len(set(pids)) == len(pids)
    assert all(gone(pid) for pid in pids)


@pytest.mark.usefixtures("saved_signals")
def test_a_hung_child_is_killed_by_heartbeat_reaped_and_restarted(tmp_path) -> None:
    arbiter = real_arbiter(tmp_path, [("hung", kids.hang_after_ready, ())], heartbeat_timeout=1.0)

    def stop_after_restart() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and arbiter.children.get("hung", Child("", print, (), None)).restarts < 1:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_restart, daemon=True).start()
    assert arbiter.run() == 0
    child = arbiter.children["hung"]
    assert child.restarts >= 1
    assert child.history[0]["exit"] == -signal.SIGKILL
    assert gone(child.history[0]["pid"])


# ------------------------------------------- orchestration (no processes)


class RecordingCluster:
    def __init__(self, events: list) -> None:
        self.events = events

    def set_slots(self, slots: list[int]) -> None:
        self.events.append(("set_slots", list(slots)))

    def status(self) -> dict:
        return {}

    def stop(self, *, leave: bool) -> None:
        pass


FAKE_PIDS = itertools.count(10_000_000)  # above any Linux pid_max


def fake_arbiter(tmp_path: Any, shards: int = 2, reload_config: Any = None, **values: Any) -> tuple[Arbiter, list]:
    values.setdefault("data_dir", str(tmp_path / "data"))
    config = RelayConfig(run_dir=str(tmp_path / "run"), metrics_port=0, shards=shards, **values)
    arbiter = Arbiter(config, reload_config)
    events: list = []
    arbiter.cluster = RecordingCluster(events)  # type: ignore[assignment]

    def spawn(child: Child) -> None:
        child.pid = next(FAKE_PIDS)
        child.heartbeat.value = 0.0
        child.started_at = time.monotonic()
        events.append(("spawn", child.name, child.args[1], child.args[3]))

    arbiter.spawn = spawn  # type: ignore[method-assign]
    arbiter.signal_child = lambda child, sig: events.append(("signal", child.name, sig))  # type: ignore[method-assign]
    for k, incarnation in enumerate(arbiter.slots):
        name, target, args = arbiter.shard_spec(k, incarnation)
        child = arbiter.make_child(name, target, args)
        child.pid, child.heartbeat.value = next(FAKE_PIDS), 1.0
        arbiter.children[name] = child
    return arbiter, events


def ready(arbiter: Arbiter) -> None:
    for child in arbiter.starting.values():
        child.heartbeat.value = time.monotonic()


def exit_retired(arbiter: Arbiter) -> None:
    arbiter.retiring.clear()


def test_scale_up_starts_new_incarnations_waits_for_them_then_publishes(tmp_path) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=2)
    assert arbiter.request_scale(4)
    assert events == [("spawn", "shard-2~1", 2, 1), ("spawn", "shard-3~2", 3, 2)]
    arbiter.step_operation()  # not ready yet: nothing published
    assert not any(e[0] == "set_slots" for e in events)
    ready(arbiter)
    arbiter.step_operation()
    assert events[2:] == [("set_slots", [0, 0, 1, 2])]
    assert arbiter.op_info["state"] == "done" and arbiter.operation is None
    assert [n for n in arbiter.children] == ["shard-0", "shard-1", "shard-2", "shard-3"]
    assert arbiter.children["shard-3"].incarnation == 2 and not arbiter.starting
    assert arbiter.slots == [0, 0, 1, 2] and arbiter.config.shards == 4
    arbiter.write_state()
    from relay.status import read_status

    state = read_status(arbiter.endpoints.supervisor_file)
    assert state["shards"] == 4 and state["slots"] == [0, 0, 1, 2]
    assert state["operation"]["kind"] == "scale" and state["operation"]["state"] == "done"


def test_scale_up_aborts_when_a_new_shard_dies_and_publishes_nothing(tmp_path) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=1)
    assert arbiter.request_scale(3)
    broken = arbiter.starting["shard-2~2"]
    record_fatal(arbiter.run_dir, "shard-2", "cannot open journal")
    broken.pid, broken.last_exit = None, 1
    arbiter.step_operation()
    assert arbiter.op_info["state"] == "failed"
    assert "shard-2~2" in arbiter.op_info["detail"] and "cannot open journal" in arbiter.op_info["detail"]
    assert not any(e[0] == "set_slots" for e in events)
    # The other new one is killed and collected as retiring, never restarted.
    assert ("signal", "shard-1~1", signal.SIGKILL) in events
    assert not arbiter.starting and list(arbiter.retiring) == ["shard-1~1"]
    assert list(arbiter.children) == ["shard-0"] and arbiter.slots == [0]


def test_scale_down_publishes_first_then_retires_without_signalling(tmp_path) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=3)
    status = arbiter.endpoints.status_file("shard-2")
    open(status, "w").write("{}")
    assert arbiter.request_scale(1)
    assert events == [("set_slots", [0])]
    assert list(arbiter.children) == ["shard-0"]
    assert sorted(arbiter.retiring) == ["shard-1~0", "shard-2~0"]
    arbiter.step_operation()
    assert arbiter.op_info["state"] == "running"  # waits for them to exit by themselves
    exit_retired(arbiter)
    arbiter.step_operation()
    assert arbiter.op_info["state"] == "done"
    assert not any(e[0] == "signal" for e in events)
    assert not os.path.exists(status)


def test_a_retired_shard_that_does_not_exit_gets_sigterm_then_sigkill(tmp_path) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=2)
    arbiter.request_scale(1)
    child = arbiter.retiring["shard-1~0"]
    now = time.monotonic()
    arbiter.manage_retiring(now)
    assert not any(e[0] == "signal" for e in events)
    arbiter.manage_retiring(now + 11)
    assert events[-1] == ("signal", "shard-1~0", signal.SIGTERM)
    arbiter.manage_retiring(now + 11 + 3.5)
    assert events[-1] == ("signal", "shard-1~0", signal.SIGKILL)
    assert child.kill_sent


def test_requests_are_refused_while_busy_out_of_range_or_memory_only(tmp_path, caplog) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=2)
    assert not arbiter.request_scale(0)
    assert not arbiter.request_scale(65)
    assert arbiter.request_scale(3)
    assert not arbiter.request_scale(4)
    assert not arbiter.request_reload()
    assert "in progress" in arbiter.last_refused["reason"]
    assert arbiter.op_info["target"] == 3
    memory, events2 = fake_arbiter(tmp_path / "m", shards=2, data_dir="")
    assert not memory.request_scale(3)
    assert not memory.request_reload()
    assert "memory only" in memory.last_refused["reason"] and events2 == []


def test_ttin_and_ttou_scale_by_one(tmp_path) -> None:
    arbiter, events = fake_arbiter(tmp_path, shards=2)
    arbiter.handle_ttin()
    assert arbiter.op_info["target"] == 3
    ready(arbiter)
    arbiter.step_operation()
    arbiter.handle_ttou()
    assert arbiter.op_info["target"] == 2 and events[-1] == ("set_slots", [0, 0])


def test_usr2_reads_the_scale_request_file(tmp_path) -> None:
    from relay.status import write_status
    from supervisor.arbiter import SCALE_REQUEST

    arbiter, events = fake_arbiter(tmp_path, shards=2)
    path = os.path.join(arbiter.run_dir, SCALE_REQUEST)
    write_status(path, {"shards": 1, "id": "abc"})
    arbiter.handle_usr2()
    assert not os.path.exists(path)
    assert arbiter.op_info["id"] == "abc" and events == [("set_slots", [0])]


def test_reload_replaces_each_slot_in_order_and_keeps_restart_only_settings(tmp_path, caplog) -> None:
    base = {"data_dir": str(tmp_path / "data")}
    new = RelayConfig(
        run_dir=str(tmp_path / "run"), metrics_port=0, shards=5, control_port=6000,
        rest_token="s3cret-token", max_clients_per_room=7, **base,
    )
    arbiter, events = fake_arbiter(tmp_path, shards=2, reload_config=lambda: new)
    caplog.set_level(logging.INFO, logger="relay.supervisor")
    assert arbiter.request_reload()
    assert events == [("spawn", "shard-0~1", 0, 1)]
    cfg = arbiter.starting["shard-0~1"].args[0]
    assert cfg["max_clients_per_room"] == 7
    assert cfg["control_port"] == 5555 and cfg["rest_token"] == "" and cfg["shards"] == 2
    ready(arbiter)
    arbiter.step_operation()
    assert events[1:] == [("set_slots", [1, 0])]
    assert list(arbiter.retiring) == ["shard-0~0"]
    assert arbiter.children["shard-0"].incarnation == 1
    arbiter.step_operation()
    assert len(events) == 2  # next slot waits for the old incarnation to exit
    exit_retired(arbiter)
    arbiter.step_operation()
    assert events[2:] == [("spawn", "shard-1~2", 1, 2)]
    ready(arbiter)
    arbiter.step_operation()
    exit_retired(arbiter)
    arbiter.step_operation()
    assert events[3:] == [("set_slots", [1, 2])]
    assert arbiter.op_info["state"] == "done"
    assert not any(e[0] == "signal" for e in events)
    text = caplog.text
    assert "control_port" in text and "rest_token" in text and "s3cret-token" not in text
    assert "relayctl scale" in text
    assert arbiter.config.max_clients_per_room == 7 and arbiter.config.control_port == 5555


def test_reload_with_an_invalid_configuration_changes_nothing(tmp_path) -> None:
    from relay.config import ConfigError

    def broken() -> RelayConfig:
        raise ConfigError(["config file x.toml: invalid TOML"])

    arbiter, events = fake_arbiter(tmp_path, shards=2, reload_config=broken)
    arbiter.request_reload()
    assert arbiter.op_info["state"] == "failed" and "invalid TOML" in arbiter.op_info["detail"]
    assert events == [] and arbiter.operation is None
