"""The supervisor: spawns, watches and restarts every child of a node.

Shaped like gunicorn's arbiter: signal handlers only queue the signal and
write a byte to a wake-up pipe; the main loop pops signals and dispatches to
``handle_<name>`` methods, then reaps dead children (``waitpid`` on each
known pid, woken by SIGCHLD), replaces hung ones (by heartbeat) and restarts
them with the same identity and endpoints, with exponential backoff when a
child keeps dying young. A child that fails at start ``max_start_failures``
times in a row stops the node with one error naming it and its cause (the
line it recorded with :func:`relay.fatal.record_fatal`).

Live operations (README "Live operations") run as one operation at a time,
a generator stepped once per loop turn so reaping, heartbeats and signals go
on while it waits:

- scale (SIGTTIN +1, SIGTTOU -1, SIGUSR2 + ``run_dir/scale-request.json``
  from ``relayctl scale N``): new shard slots start with fresh incarnations,
  become ready, then the layout is published (``cluster.set_slots``);
  removed slots are published first, then retired;
- reload (SIGHUP, ``relayctl reload``): the configuration is re-read, each
  shard slot in turn gets a new incarnation with it, the layout is published
  and the old incarnation retired.

A request that arrives while an operation runs is refused (logged, and shown
as ``last_refused`` in supervisor.json): send it again once it is done.

The operations themselves are in ``supervisor/live_operations.py`` (a mixin
of the arbiter). This file stays over 600 lines because spawning, reaping,
backoff, the start-failure stop, status and the ordered shutdown all work on
the same children table and read best together.

A retired shard hands its rooms over and exits by itself with code 0; it is
moved out of ``children`` (so it is never restarted) into ``retiring`` as
``shard-<k>~<incarnation>``, and is sent SIGTERM, then SIGKILL, only if it
does not exit in time.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import select
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from relay.fatal import clear_fatal, read_fatal, record_fatal
from relay.status import read_status, write_status
from supervisor.live_operations import (
    SCALE_REQUEST,
    LiveOperations,
)
from supervisor.pidfile import pointer_path, remove_pidfile, write_pidfile

log = logging.getLogger("relay.supervisor")


def resolve_advertise(host: str) -> str:
    """The advertise address, with "auto" resolved to this host's own address."""
    if host != "auto":
        return host
    import socket

    return socket.gethostbyname(socket.gethostname())

SPAWN = multiprocessing.get_context("spawn")
STARTUP_GRACE = 10.0
# A child that exits sooner than this after its start counts as failing at
# start, like one that never became ready.
FAST_FAILURE = 10.0
MAX_BACKOFF = 10.0
FIRST_BACKOFF = 0.25
# A retired shard that has not exited by itself RETIRE_TIMEOUT after its
# retirement (live_operations.py) gets SIGTERM, and SIGKILL TERM_TIMEOUT later.
TERM_TIMEOUT = 3.0
HISTORY = 20



def child_main(target: Callable[..., None], run_dir: str, fatal_name: str, *args: Any) -> None:
    """Entry point of every child: an uncaught exception becomes its fatal reason.

    A child that records a more precise reason itself before exiting keeps it.
    """
    # A developer's profile of every child (BENCHMARKS.md, "Where the CPU goes"):
    # RELAY_PROFILE_DIR=dir writes dir/<child>-<pid>.prof when the child stops.
    profile_dir = os.environ.get("RELAY_PROFILE_DIR")
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        target(*args)
    except Exception as exc:
        if read_fatal(run_dir, fatal_name) is None:
            record_fatal(run_dir, fatal_name, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if profiler is not None:
            profiler.disable()
            os.makedirs(profile_dir, exist_ok=True)
            profiler.dump_stats(os.path.join(profile_dir, f"{fatal_name}-{os.getpid()}.prof"))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


def say_fatal(message: str) -> None:
    """One error line in the log and one on stderr (not two when the log is the console)."""
    log.error("%s", message)
    for handler in logging.getLogger().handlers + log.handlers:
        if (
            isinstance(handler, logging.StreamHandler)
            and getattr(handler, "stream", None) is sys.stderr
            and handler.level <= logging.ERROR
            and logging.getLogger().isEnabledFor(logging.ERROR)
        ):
            return
    print(f"relayctl: {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    target: Callable[..., None]
    args: tuple
    heartbeat: Any
    process: Any = None
    # Set while the process has not been reaped; None once we collected it.
    pid: int | None = None
    slot: int | None = None
    incarnation: int | None = None
    started_at: float = 0.0
    started_wall: float = 0.0
    restarts: int = 0
    consecutive_failures: int = 0
    restart_at: float | None = None
    last_exit: int | None = None
    kill_sent: bool = False
    retire_at: float | None = None
    retired_at: float | None = None
    term_at: float | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    @property
    def fatal_name(self) -> str:
        """The name the child itself records a fatal reason under (its slot's name)."""
        return self.name.split("~", 1)[0]


class Arbiter(LiveOperations):
    SIGNALS = [
        signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD,
        signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2,
    ]
    SIG_NAMES = {sig: sig.name[3:].lower() for sig in SIGNALS}
    max_backoff = MAX_BACKOFF
    startup_grace = STARTUP_GRACE

    def __init__(
        self, config: RelayConfig, reload_config: Callable[[], RelayConfig] | None = None
    ) -> None:
        self.config = config
        # Rebuilds the configuration the node was started with (file + flags +
        # environment), for SIGHUP; None: a reload keeps the settings.
        self.reload_config = reload_config
        self.run_dir = config.run_dir or tempfile.mkdtemp(prefix="netsync-relay-")
        os.makedirs(self.run_dir, exist_ok=True)
        self.endpoints = NodeEndpoints(self.run_dir)
        # "auto": the address this host's name resolves to (a container's IP
        # on its compose network); children bind node links on the result.
        self.advertise = resolve_advertise(config.advertise_host)
        self.config_dict = self._child_config(config)
        self.children: dict[str, Child] = {}
        # New shard incarnations not yet in the layout, and old ones leaving it.
        self.starting: dict[str, Child] = {}
        self.retiring: dict[str, Child] = {}
        # slot k runs incarnation slots[k]; incarnations are never reused.
        self.slots: list[int] = [0] * config.shards
        # The count the configuration asks for (the layout may differ after a scale).
        self.configured_shards = config.shards
        self.next_incarnation = 1
        self.operation: Generator[None, None, None] | None = None
        self.op_info: dict[str, Any] | None = None
        self.last_refused: dict[str, Any] | None = None
        self.sig_queue: list[int] = []
        self.pipe: tuple[int, int] | None = None
        self.stopping = False
        self.exit_code = 0
        self.started_wall = time.time()
        self.extra_children: list[tuple[str, Callable[..., None], tuple]] = []
        self.metrics_server: Any = None
        from relay.endpoints import cluster_endpoints
        from supervisor.cluster_agent import ClusterAgent

        links = cluster_endpoints(self.advertise, config.cluster_port, config.shards) if config.store else {}
        self.cluster = ClusterAgent(config, self.run_dir, endpoints=links)

    def _child_config(self, config: RelayConfig) -> dict[str, Any]:
        return {**config.to_dict(), "run_dir": self.run_dir, "advertise_host": self.advertise}

    # ------------------------------------------------------------ signals

    def init_signals(self) -> None:
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._signal)

    def _signal(self, sig: int, frame: Any) -> None:
        # SIGCHLD only needs to wake the loop once; never let a burst of them
        # push a stop request out of the queue.
        if len(self.sig_queue) < 5 and not (sig == signal.SIGCHLD and sig in self.sig_queue):
            self.sig_queue.append(sig)
        self.wakeup()

    def wakeup(self) -> None:
        try:
            os.write(self.pipe[1], b".")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.pipe[0]], [], [], timeout)
            if ready:
                while os.read(self.pipe[0], 64):
                    pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def handle_chld(self) -> None:
        """Reaping happens in manage_children; the signal only wakes the loop."""

    def handle_term(self) -> None:
        self.begin_stop("SIGTERM")

    def handle_int(self) -> None:
        self.begin_stop("SIGINT")

    def handle_quit(self) -> None:
        self.begin_stop("SIGQUIT")

    def handle_hup(self) -> None:
        log.info("SIGHUP received: rolling restart of the shards")
        self.request_reload()

    def handle_ttin(self) -> None:
        log.info("SIGTTIN received: one shard more")
        self.request_scale(len(self.slots) + 1)

    def handle_ttou(self) -> None:
        log.info("SIGTTOU received: one shard fewer")
        self.request_scale(len(self.slots) - 1)

    def handle_usr2(self) -> None:
        """`relayctl scale N`: the wanted count is in run_dir/scale-request.json."""
        path = os.path.join(self.run_dir, SCALE_REQUEST)
        request = read_status(path)
        try:
            os.unlink(path)
        except OSError:
            pass
        if not isinstance(request, dict):
            log.error("SIGUSR2 without a readable %s: ignored", path)
            return
        shards, request_id = request.get("shards"), request.get("id")
        log.info("scale request received: %s shards", shards)
        if not isinstance(shards, int) or isinstance(shards, bool):
            self._refuse("scale", shards, request_id, f"shards must be an integer, got {shards!r}")
            return
        self.request_scale(shards, request_id=request_id)

    def begin_stop(self, why: str) -> None:
        if self.stopping:
            log.warning("second stop request (%s): forcing exit", why)
            self.kill_all(signal.SIGKILL)
            self.exit_code = 1
            raise SystemExit(1)
        log.info("%s received: stopping", why)
        self.stopping = True

    # ----------------------------------------------------------- children

    def shard_spec(self, slot: int, incarnation: int) -> tuple[str, Callable[..., None], tuple]:
        from shard_worker.worker import run_shard

        return (f"shard-{slot}", run_shard, (self.config_dict, slot, self.run_dir, incarnation))

    def child_specs(self) -> list[tuple[str, Callable[..., None], tuple]]:
        from supervisor.ingress import run_ingress
        from supervisor.proxy import run_proxy

        cfg, run_dir = self.config_dict, self.run_dir
        specs: list[tuple[str, Callable[..., None], tuple]] = [("proxy", run_proxy, (cfg, run_dir))]
        specs += [self.shard_spec(k, i) for k, i in enumerate(self.slots)]
        specs.append(("ingress", run_ingress, (cfg, run_dir)))
        from supervisor.frontdesk import run_frontdesk

        specs.append(("rest", run_frontdesk, (cfg, run_dir)))
        specs += self.extra_children
        return specs

    def make_child(self, name: str, target: Callable[..., None], args: tuple) -> Child:
        child = Child(name, target, args, SPAWN.RawValue("d", 0.0))
        from shard_worker.worker import run_shard

        if target is run_shard:
            child.slot, child.incarnation = args[1], args[3]
        return child

    def spawn(self, child: Child) -> None:
        # 0 = not ready yet: a child sets its heartbeat only once its sockets are bound.
        child.heartbeat.value = 0.0
        child.kill_sent = False
        clear_fatal(self.run_dir, child.fatal_name)
        args = child.args
        if args and isinstance(args[0], dict) and "shards" in args[0] and "control_port" in args[0]:
            # A child (re)started after a scale learns the current shard count;
            # every other setting stays what the child was created with.
            args = ({**args[0], "shards": len(self.slots)}, *args[1:])
        process = SPAWN.Process(
            target=child_main,
            args=(child.target, self.run_dir, child.fatal_name, *args, child.heartbeat),
            name=child.name,
            daemon=False,
        )
        process.start()
        child.process = process
        child.pid = process.pid
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, process.pid)

    def _collect(self, child: Child) -> int | None:
        """The child's exit code if it has exited (and reap it), else None. Never blocks."""
        if child.pid is None:
            return child.last_exit
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (multiprocessing's active_children() does,
            # from any code in this process): use what they saw.
            popen = getattr(child.process, "_popen", None)
            code = getattr(popen, "returncode", None)
            code = -1 if code is None else code
        else:
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(status)
        popen = getattr(child.process, "_popen", None)
        if popen is not None and popen.returncode is None:
            # We reaped the pid ourselves, so multiprocessing's own poll() would
            # now get ECHILD, which it takes for "not started yet": is_alive()
            # would say True forever and join() would hang. Tell it the code.
            popen.returncode = code
        if child.process is not None:
            try:
                child.process.close()  # releases its sentinel pipe
            except ValueError:
                pass
        child.process = None
        child.pid = None
        child.last_exit = code
        return code

    def reap_children(self, now: float) -> None:
        """waitpid(WNOHANG) on each pid we started, never -1 (other code may own children)."""
        for child in list(self.children.values()):
            if child.pid is not None:
                pid = child.pid
                code = self._collect(child)
                if code is not None:
                    self.on_exit(child, pid, code, now)
        for child in list(self.starting.values()):
            if child.pid is not None:
                code = self._collect(child)
                if code is not None:
                    log.error("%s exited while starting: %s", child.name, self.cause(child))
        for name, child in list(self.retiring.items()):
            code = self._collect(child)
            if code is None:
                continue
            since = now - (child.retired_at or now)
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "%s (retired) exited with %s, %.1fs after its retirement",
                    name, describe_exit(code), since)
            del self.retiring[name]

    def cause(self, child: Child) -> str:
        """What the child said before dying, else how it exited."""
        return read_fatal(self.run_dir, child.fatal_name) or describe_exit(child.last_exit)

    def on_exit(self, child: Child, pid: int, code: int, now: float) -> None:
        lived = now - child.started_at
        never_ready = child.heartbeat.value == 0.0
        if self.stopping:
            return
        if never_ready or lived < FAST_FAILURE:
            child.consecutive_failures += 1
        else:
            child.consecutive_failures = 0
        n = child.consecutive_failures
        delay = 0.0 if n <= 1 else min(self.max_backoff, FIRST_BACKOFF * 2 ** (n - 2))
        child.history.append({"pid": pid, "exit": code, "lived_s": round(lived, 3),
                              "ready": not never_ready, "backoff_s": delay})
        del child.history[:-HISTORY]
        if n >= self.config.max_start_failures:
            self.fail_node(
                f"cannot keep {child.name} running: it failed at start {n} times in a row; "
                f"last cause: {self.cause(child)}"
            )
            return
        child.restart_at = now + delay
        child.restarts += 1
        log.warning(
            "%s exited with %s after %.1fs%s; restart #%d in %.2fs",
            child.name, describe_exit(code), lived, "" if not never_ready else " (never ready)",
            child.restarts, delay,
        )

    def fail_node(self, message: str) -> None:
        """Stop the node (ordered shutdown, exit code 1) with one error line."""
        if self.stopping:
            return
        say_fatal(message)
        self.exit_code = 1
        self.stopping = True

    def check_heartbeat(self, child: Child, now: float) -> None:
        if child.kill_sent:
            return
        if child.heartbeat.value == 0.0:
            silent_for = now - child.started_at
            if silent_for < STARTUP_GRACE:
                return
        else:
            silent_for = now - child.heartbeat.value
        if silent_for > self.config.heartbeat_timeout:
            log.error("%s (pid %d) silent for %.1fs: killing", child.name, child.pid, silent_for)
            self.signal_child(child, signal.SIGKILL)
            child.kill_sent = True  # the reaper collects it on a later turn

    def signal_child(self, child: Child, sig: int) -> None:
        if child.pid is not None:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def manage_children(self) -> None:
        now = time.monotonic()
        self.reap_children(now)
        if self.stopping:
            return
        for child in self.children.values():
            if child.pid is not None:
                self.check_heartbeat(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self.spawn(child)
        self.manage_retiring(now)

    def manage_retiring(self, now: float) -> None:
        for name, child in self.retiring.items():
            if child.pid is None:
                continue
            if child.term_at is None and child.retire_at is not None and now >= child.retire_at:
                log.warning("%s (pid %d) has not exited %.0fs after its retirement: SIGTERM",
                            name, child.pid, now - (child.retired_at or now))
                self.signal_child(child, signal.SIGTERM)
                child.term_at = now
            elif child.term_at is not None and not child.kill_sent and now >= child.term_at + TERM_TIMEOUT:
                log.error("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, child.pid, TERM_TIMEOUT)
                self.signal_child(child, signal.SIGKILL)
                child.kill_sent = True

    def kill_all(self, sig: int) -> None:
        for group in (self.children, self.starting, self.retiring):
            for child in group.values():
                self.signal_child(child, sig)

    # ------------------------------------------------------------- status

    def _child_state(self, child: Child, now: float) -> dict[str, Any]:
        alive = child.pid is not None
        state = {
            "pid": child.pid,
            "alive": alive,
            "uptime_s": round(now - child.started_at, 3) if alive else 0.0,
            "started_at": child.started_wall,
            "restarts": child.restarts,
            "last_exit": child.last_exit,
            "consecutive_failures": child.consecutive_failures,
        }
        if child.slot is not None:
            state["slot"], state["incarnation"] = child.slot, child.incarnation
        return state

    def write_state(self) -> None:
        now = time.monotonic()
        operation = None
        if self.op_info is not None:
            operation = {k: v for k, v in self.op_info.items() if not k.startswith("_")}
        state = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_wall,
            "run_dir": self.run_dir,
            "data_dir": self.config.data_dir,
            "shards": len(self.slots),
            "slots": list(self.slots),
            "ports": {
                "control": self.config.control_port,
                "transform": self.config.transform_port,
                "pub": self.config.pub_port,
                "rest": self.config.rest_api_port,
                "discovery": self.config.server_discovery_port if self.config.enable_server_discovery else None,
                "metrics": self.config.metrics_port or None,
            },
            "children": {name: self._child_state(c, now) for name, c in self.children.items()},
            "starting": {name: self._child_state(c, now) for name, c in self.starting.items()},
            "retiring": {
                name: {**self._child_state(c, now), "retiring_for_s": round(now - (c.retired_at or now), 3)}
                for name, c in self.retiring.items()
            },
            "operation": operation,
            "last_refused": self.last_refused,
            "cluster": self.cluster.status(),
        }
        write_status(self.endpoints.supervisor_file, state)

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        self.init_signals()
        # relayctl stop signals only a pid that this file and /proc agree on.
        write_pidfile(self.run_dir)
        pointer = pointer_path(self.config.control_port)
        if pointer is not None:
            write_status(pointer, {"run_dir": self.run_dir, "pid": os.getpid()})
        log.info("supervisor %d: run dir %s, %d shards", os.getpid(), self.run_dir, len(self.slots))
        if not self.preflight() or not self.join_cluster():
            self.remove_pointer()
            return 1
        for name, target, args in self.child_specs():
            self.children[name] = self.make_child(name, target, args)
            self.spawn(self.children[name])
        self.start_metrics()
        next_state = 0.0
        next_status_log = time.monotonic() + self.config.status_log_interval
        try:
            if not self.wait_until_started():
                self.exit_code = 1
                self.stopping = True
            while not self.stopping:
                while self.sig_queue and not self.stopping:
                    sig = self.sig_queue.pop(0)
                    getattr(self, f"handle_{self.SIG_NAMES[sig]}")()
                if self.stopping:
                    break
                self.manage_children()
                if not self.stopping:
                    self.step_operation()
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + 0.5
                    self.write_state()
                if time.monotonic() >= next_status_log:
                    next_status_log = time.monotonic() + self.config.status_log_interval
                    self.log_status_line()
                self.sleep(0.1)
            self.abort_operation("the node is stopping")
            self.shutdown()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            self.remove_pointer()
        return self.exit_code

    def log_status_line(self) -> None:
        """One line with the node's totals, as the reference logs periodically."""
        totals = {"rooms": 0, "visible": 0, "stealth": 0, "devices": 0, "ctrl_queue_depth": 0}
        for shard in range(len(self.slots)):
            status = read_status(self.endpoints.status_file(f"shard-{shard}")) or {}
            for key in totals:
                totals[key] += int(status.get(key, 0))
        restarts = sum(c.restarts for c in self.children.values())
        log.info(
            "status: rooms=%d visible=%d stealth=%d tracked_devices=%d ctrl_queue=%d restarts=%d",
            totals["rooms"], totals["visible"], totals["stealth"], totals["devices"],
            totals["ctrl_queue_depth"], restarts,
        )

    def join_cluster(self) -> bool:
        """Register this node (shared store) and write the view children start from."""
        from relay.cluster.membership import NodeIdConflict

        try:
            self.cluster.join()
        except NodeIdConflict as exc:
            log.error("cannot start: %s", exc)
            print(f"relayctl: cannot start: {exc}", file=sys.stderr)
            return False
        self.cluster.start()
        return True

    def preflight(self) -> bool:
        """Refuse to start on a data dir we cannot read: never a silent empty state."""
        if not self.config.data_dir or self.config.store:
            if not self.config.store:
                log.warning("no data dir: room state is kept in memory only and lost when a shard restarts")
            return True
        from shard_worker.store.sqlite_store import StoreError, prepare_cold_start

        try:
            # Cold start: no client connection or shard process of an earlier
            # run survives; files of a larger earlier shard count are checked too.
            prepare_cold_start(self.config.data_dir, self.config.shards)
        except StoreError as exc:
            log.error("cannot start: %s", exc)
            print(f"relayctl: cannot start: {exc}", file=sys.stderr)
            return False
        return True

    def wait_until_started(self) -> bool:
        """Every child must bind its sockets; a child dying now aborts the start.

        A port that cannot be bound is a configuration error, not something a
        restart loop can fix (BEHAVIOR §13: start-up fails with status 1).
        """
        deadline = time.monotonic() + STARTUP_GRACE
        while time.monotonic() < deadline:
            if any(sig != signal.SIGCHLD for sig in self.sig_queue):
                return True  # let the main loop handle a stop request
            for child in self.children.values():
                if child.pid is not None and self._collect(child) is not None:
                    say_fatal(f"cannot start: {child.name} failed to start: {self.cause(child)}")
                    return False
            if all(c.heartbeat.value > 0.0 for c in self.children.values()):
                log.info("relay ready: %d children started", len(self.children))
                return True
            self.sleep(0.05)
        say_fatal(f"cannot start: children not ready after {STARTUP_GRACE:.0f}s: "
                  f"{', '.join(c.name for c in self.children.values() if c.heartbeat.value == 0.0)}")
        return False

    def start_metrics(self) -> None:
        """Prometheus endpoint; a port that cannot be bound must not take clients down."""
        if not self.config.metrics_port:
            return
        from supervisor.metrics_server import start_metrics_server

        try:
            self.metrics_server = start_metrics_server(
                self.config.metrics_port, self.config.metrics_host, self.run_dir
            )
        except OSError as exc:
            log.error("metrics endpoint disabled: cannot bind %s:%d: %s",
                      self.config.metrics_host, self.config.metrics_port, exc)

    def remove_pointer(self) -> None:
        remove_pidfile(self.run_dir)
        path = pointer_path(self.config.control_port)
        if path is None:
            return
        state = read_status(path)
        if state and state.get("pid") == os.getpid():
            try:
                os.unlink(path)
            except OSError:
                pass

    def _stop_children(self, children: list[Child], timeout: float) -> None:
        """SIGTERM, wait (reaping) up to ``timeout``, then SIGKILL the rest."""
        alive = [c for c in children if c.pid is not None]
        for child in alive:
            self.signal_child(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            alive = [c for c in alive if self._collect(c) is None]
            if not alive:
                return
            if time.monotonic() >= deadline:
                break
            self.sleep(0.02)
        for child in alive:
            log.warning("%s did not stop in time: killing", child.name)
            self.signal_child(child, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while alive and time.monotonic() < deadline:
            alive = [c for c in alive if self._collect(c) is None]
            if alive:
                self.sleep(0.02)

    def shutdown(self) -> None:
        """Stop intake first, let shards flush and persist, then the rest."""
        started = time.monotonic()
        # A second Ctrl-C/SIGTERM during shutdown must still force the exit.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, lambda *_: self._force_exit())
        children = self.children
        self._stop_children([c for n, c in children.items() if n == "ingress"], 1.5)
        self._stop_children(
            [c for n, c in children.items() if n not in ("proxy", "ingress")]
            + list(self.starting.values()) + list(self.retiring.values()),
            2.5,
        )
        # Shards have flushed and released their leases: deregister so the
        # other nodes take the rooms over now rather than after the TTL.
        self.cluster.stop(leave=True)
        self._stop_children([c for n, c in children.items() if n == "proxy"], 0.5)
        self.write_state()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped in %.2fs", time.monotonic() - started)

    def _force_exit(self) -> None:
        log.warning("second signal during shutdown: forcing exit")
        self.kill_all(signal.SIGKILL)
        self.remove_pointer()
        os._exit(1)


def main_start(config: RelayConfig, reload_config: Callable[[], RelayConfig] | None = None) -> int:
    arbiter = Arbiter(config, reload_config)
    code = arbiter.run()
    sys.stdout.flush()
    return code
