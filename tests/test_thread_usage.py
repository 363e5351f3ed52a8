"""Per-thread CPU and wake-ups of a process tree (bench/thread_usage.py), on this process."""

from __future__ import annotations

import os
import threading
import time

import orjson

from bench import thread_usage


def test_a_busy_thread_shows_its_cpu_and_a_sleeping_one_its_wakeups(tmp_path) -> None:
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(1000))

    def sleeper() -> None:
        while not stop.is_set():
            time.sleep(0.005)

    threads = [threading.Thread(target=busy, name="busy"), threading.Thread(target=sleeper, name="sleeper")]
    for t in threads:
        t.start()
    try:
        pid = os.getpid()
        start = thread_usage.sample([pid])
        time.sleep(0.5)
        end = thread_usage.sample([pid])
    finally:
        stop.set()
        for t in threads:
            t.join()
    (tmp_path / "supervisor.json").write_bytes(orjson.dumps({"children": {"ingress": {"pid": pid}}}))
    names = thread_usage.process_names(1, tmp_path)
    assert names == {1: "supervisor", pid: "ingress"}
    rows = thread_usage.diff(start, end, 0.5, names)
    assert len(end) >= 3  # main, busy and sleeper threads were sampled
    assert all(r["process"] == "ingress" for r in rows)
    # The busy thread holds most of the GIL: tens of % of a core; the sleeper wakes ~200 times a second.
    assert rows[0]["cpu_pct"] >= 20, rows
    assert max(r["wakeups_per_s"] for r in rows) >= 50, rows
    line = thread_usage.summary_line(rows)
    assert line.startswith("threads (CPU % of a core, wake-ups/s): ingress/") and "total" in line


def test_names_fall_back_to_the_pid_and_a_missing_run_dir_to_server(tmp_path) -> None:
    assert thread_usage.process_names(7, None) == {7: "server"}
    assert thread_usage.process_names(7, tmp_path) == {7: "supervisor"}  # no supervisor.json yet
    rows = thread_usage.diff({(9, 9): ("ZMQbg/IO/0", 1.0, 10)}, {(9, 9): ("ZMQbg/IO/0", 1.5, 110)}, 1.0, {})
    assert rows == [{"process": "9", "thread": "zmq-io-0", "cpu_pct": 50.0, "wakeups_per_s": 100}]
