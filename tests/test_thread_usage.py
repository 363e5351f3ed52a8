"""Per-thread CPU, wake-ups and runnable wait of a process tree (bench/thread_usage.py), on this process."""

from __future__ import annotations

import multiprocessing
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
    assert line.startswith("threads (CPU % of a core, wake-ups/s, runnable wait per slice): ingress/")
    assert "total" in line
    assert all(r["runq_ms_per_s"] >= 0 and r["runq_us_per_slice"] >= 0 for r in rows)


def test_processes_that_wait_for_a_cpu_show_that_wait() -> None:
    # Two more spinning processes than cores (processes: threads would wait
    # for the GIL asleep, not for a CPU): each is runnable and not running
    # for about a third of the time or more, which schedstat counts.
    procs = [multiprocessing.Process(target=_spin_for, args=(1.0,)) for _ in range((os.cpu_count() or 1) + 2)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.1)
        pids = [p.pid for p in procs if p.pid is not None]
        start = thread_usage.sample(pids)
        time.sleep(0.5)
        end = thread_usage.sample(pids)
    finally:
        for p in procs:
            p.join()
    rows = thread_usage.diff(start, end, 0.5, {})
    assert len(rows) == len(procs)
    assert sum(r["runq_ms_per_s"] for r in rows) >= 100 * len(procs), rows


def test_names_fall_back_to_the_pid_and_a_missing_run_dir_to_server(tmp_path) -> None:
    assert thread_usage.process_names(7, None) == {7: "server"}
    assert thread_usage.process_names(7, tmp_path) == {7: "supervisor"}  # no supervisor.json yet
    rows = thread_usage.diff({(9, 9): ("ZMQbg/IO/0", 1.0, 10, 0, 5)},
                             {(9, 9): ("ZMQbg/IO/0", 1.5, 110, 30_000_000, 105)}, 1.0, {})
    assert rows == [{"process": "9", "thread": "zmq-io-0", "cpu_pct": 50.0, "wakeups_per_s": 100,
                     "runq_ms_per_s": 30.0, "runq_us_per_slice": 300}]


def _spin_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
