"""The supervisor: spawns, watches and restarts every child of a node.

Shaped like gunicorn's arbiter: signal handlers only queue the signal and
write a byte to a wake-up pipe; the main loop pops signals and dispatches to
``handle_<name>`` methods, then reaps dead children, replaces hung ones (by
heartbeat) and restarts them with the same identity and endpoints, with
backoff when a child keeps dying young.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from relay.status import read_status, write_status
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
FAST_FAILURE = 10.0
MAX_BACKOFF = 10.0


@dataclass
class Child:
    name: str
    target: Callable[..., None]
    args: tuple
    heartbeat: Any
    process: Any = None
    started_at: float = 0.0
    started_wall: float = 0.0
    restarts: int = 0
    consecutive_failures: int = 0
    restart_at: float | None = None
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)


class Arbiter:
    SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD]
    SIG_NAMES = {sig: sig.name[3:].lower() for sig in SIGNALS}

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir or tempfile.mkdtemp(prefix="netsync-relay-")
        os.makedirs(self.run_dir, exist_ok=True)
        self.endpoints = NodeEndpoints(self.run_dir)
        # "auto": the address this host's name resolves to (a container's IP
        # on its compose network); children bind node links on the result.
        advertise = resolve_advertise(config.advertise_host)
        self.config_dict = {**config.to_dict(), "run_dir": self.run_dir, "advertise_host": advertise}
        self.children: dict[str, Child] = {}
        self.sig_queue: list[int] = []
        self.pipe: tuple[int, int] | None = None
        self.stopping = False
        self.exit_code = 0
        self.started_wall = time.time()
        self.extra_children: list[tuple[str, Callable[..., None], tuple]] = []
        self.metrics_server: Any = None
        from relay.endpoints import cluster_endpoints
        from supervisor.cluster_agent import ClusterAgent

        links = cluster_endpoints(advertise, config.cluster_port, config.shards) if config.store else {}
        self.cluster = ClusterAgent(config, self.run_dir, endpoints=links)

    # ------------------------------------------------------------ signals

    def init_signals(self) -> None:
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._signal)

    def _signal(self, sig: int, frame: Any) -> None:
        if len(self.sig_queue) < 5:
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

    def begin_stop(self, why: str) -> None:
        if self.stopping:
            log.warning("second stop request (%s): forcing exit", why)
            self.kill_all(signal.SIGKILL)
            self.exit_code = 1
            raise SystemExit(1)
        log.info("%s received: stopping", why)
        self.stopping = True

    # ----------------------------------------------------------- children

    def child_specs(self) -> list[tuple[str, Callable[..., None], tuple]]:
        from shard_worker.worker import run_shard
        from supervisor.ingress import run_ingress
        from supervisor.proxy import run_proxy

        cfg, run_dir = self.config_dict, self.run_dir
        specs: list[tuple[str, Callable[..., None], tuple]] = [("proxy", run_proxy, (cfg, run_dir))]
        specs += [(f"shard-{k}", run_shard, (cfg, k, run_dir)) for k in range(self.config.shards)]
        specs.append(("ingress", run_ingress, (cfg, run_dir)))
        from supervisor.frontdesk import run_frontdesk

        specs.append(("rest", run_frontdesk, (cfg, run_dir)))
        specs += self.extra_children
        return specs

    def spawn(self, child: Child) -> None:
        # 0 = not ready yet: a child sets its heartbeat only once its sockets are bound.
        child.heartbeat.value = 0.0
        process = SPAWN.Process(
            target=child.target, args=(*child.args, child.heartbeat), name=child.name, daemon=False
        )
        process.start()
        child.process = process
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, process.pid)

    def reap(self, child: Child, now: float) -> None:
        exitcode = child.process.exitcode
        child.last_exit = exitcode
        lived = now - child.started_at
        child.process.join(timeout=0)
        child.process = None
        if self.stopping:
            return
        child.consecutive_failures = child.consecutive_failures + 1 if lived < FAST_FAILURE else 0
        delay = 0.0 if child.consecutive_failures <= 1 else min(
            MAX_BACKOFF, 0.25 * 2 ** (child.consecutive_failures - 2)
        )
        child.restart_at = now + delay
        child.restarts += 1
        log.warning(
            "%s exited with %s after %.1fs; restart #%d in %.2fs",
            child.name, exitcode, lived, child.restarts, delay,
        )

    def check_heartbeat(self, child: Child, now: float) -> None:
        if child.heartbeat.value == 0.0:
            silent_for = now - child.started_at
            if silent_for < STARTUP_GRACE:
                return
        else:
            silent_for = now - child.heartbeat.value
        if silent_for > self.config.heartbeat_timeout:
            log.error("%s (pid %d) silent for %.1fs: killing", child.name, child.process.pid, silent_for)
            try:
                os.kill(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.process.join(timeout=2.0)

    def manage_children(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.process is not None:
                if child.process.is_alive():
                    self.check_heartbeat(child, now)
                if child.process is not None and not child.process.is_alive():
                    self.reap(child, now)
            if child.process is None and not self.stopping and child.restart_at is not None:
                if now >= child.restart_at:
                    self.spawn(child)

    def kill_all(self, sig: int) -> None:
        for child in self.children.values():
            if child.process is not None and child.process.pid:
                try:
                    os.kill(child.process.pid, sig)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------- status

    def write_state(self) -> None:
        now = time.monotonic()
        children = {}
        for name, child in self.children.items():
            alive = child.process is not None and child.process.is_alive()
            children[name] = {
                "pid": child.process.pid if alive else None,
                "alive": alive,
                "uptime_s": round(now - child.started_at, 3) if alive else 0.0,
                "started_at": child.started_wall,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
            }
        state = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_wall,
            "run_dir": self.run_dir,
            "data_dir": self.config.data_dir,
            "shards": self.config.shards,
            "ports": {
                "control": self.config.control_port,
                "transform": self.config.transform_port,
                "pub": self.config.pub_port,
                "rest": self.config.rest_api_port,
                "discovery": self.config.server_discovery_port if self.config.enable_server_discovery else None,
                "metrics": self.config.metrics_port or None,
            },
            "children": children,
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
        log.info("supervisor %d: run dir %s, %d shards", os.getpid(), self.run_dir, self.config.shards)
        if not self.preflight() or not self.join_cluster():
            self.remove_pointer()
            return 1
        for name, target, args in self.child_specs():
            self.children[name] = Child(name, target, args, SPAWN.RawValue("d", 0.0))
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
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + 0.5
                    self.write_state()
                if time.monotonic() >= next_status_log:
                    next_status_log = time.monotonic() + self.config.status_log_interval
                    self.log_status_line()
                self.sleep(0.1)
            self.shutdown()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            self.remove_pointer()
        return self.exit_code

    def log_status_line(self) -> None:
        """One line with the node's totals, as the reference logs periodically."""
        totals = {"rooms": 0, "visible": 0, "stealth": 0, "devices": 0, "ctrl_queue_depth": 0}
        for shard in range(self.config.shards):
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
            failed = [c for c in self.children.values() if c.process is not None and not c.process.is_alive()]
            if failed:
                for child in failed:
                    log.error(
                        "%s failed to start (exit code %s): see its log lines above",
                        child.name, child.process.exitcode,
                    )
                return False
            if all(c.heartbeat.value > 0.0 for c in self.children.values()):
                log.info("relay ready: %d children started", len(self.children))
                return True
            self.sleep(0.05)
        log.error("children not ready after %.0fs: %s", STARTUP_GRACE,
                  [c.name for c in self.children.values() if c.heartbeat.value == 0.0])
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

    def _stop_children(self, names: list[str], timeout: float) -> None:
        procs = [self.children[n].process for n in names if n in self.children and self.children[n].process]
        for proc in procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("%s did not stop in time: killing", proc.name)
                proc.kill()
                proc.join(timeout=1.0)

    def shutdown(self) -> None:
        """Stop intake first, let shards flush and persist, then the rest."""
        started = time.monotonic()
        # A second Ctrl-C/SIGTERM during shutdown must still force the exit.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, lambda *_: self._force_exit())
        names = list(self.children)
        self._stop_children([n for n in names if n == "ingress"], 1.5)
        self._stop_children([n for n in names if n.startswith("shard-") or n not in ("proxy", "ingress")], 2.5)
        # Shards have flushed and released their leases: deregister so the
        # other nodes take the rooms over now rather than after the TTL.
        self.cluster.stop(leave=True)
        self._stop_children(["proxy"], 0.5)
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


def main_start(config: RelayConfig) -> int:
    arbiter = Arbiter(config)
    code = arbiter.run()
    sys.stdout.flush()
    return code
