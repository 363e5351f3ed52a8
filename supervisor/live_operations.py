"""Scale and rolling restart: the supervisor's live operations, one at a time.

A mixin of the arbiter (``supervisor/arbiter.py``), which owns the children
these methods start, publish, retire and wait for. Each operation is a
generator the arbiter's loop steps once per turn, so reaping, heartbeats and
signals go on while it waits; the room hand-over itself happens between the
ingress and the shard workers (README "Live operations", relay/frames.py
routing markers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from relay.config import MAX_SHARDS, ConfigError, RelayConfig
from relay.fatal import clear_fatal

if TYPE_CHECKING:
    from supervisor.arbiter import Child

__all__ = ["RESTART_ONLY", "RETIRE_TIMEOUT", "SCALE_REQUEST", "LiveOperations", "OperationError"]

log = logging.getLogger("relay.supervisor")

# A retired shard hands its rooms over and exits by itself within this.
RETIRE_TIMEOUT = 10.0
SCALE_REQUEST = "scale-request.json"

# Settings read by a process a rolling restart does not replace (ingress,
# proxy, REST bridge, discovery, the supervisor's own listeners and cluster
# agent) or that fix the node's identity and storage: a reload keeps their
# running values and says so. Everything else is read by the shards only and
# takes effect as each shard is replaced. `shards` changes with `relayctl
# scale`, not with a reload.
RESTART_ONLY = frozenset({
    "control_port", "transform_port", "pub_port", "server_discovery_port", "rest_api_port",
    "server_name", "enable_server_discovery", "host", "run_dir", "data_dir",
    "metrics_port", "metrics_host",
    "rest_host", "rest_token", "rest_token_file", "rest_cors_origins", "rest_request_timeout",
    "rest_max_body_bytes",
    "store", "node_id", "advertise_host", "cluster_port", "cluster_key_file", "membership_ttl",
    "max_message_bytes", "heartbeat_interval", "transform_read_lead",
    # The ingress reads poses on this rate's tick grid (relay/tick_grid.py):
    # shards ticking at another rate would miss what it read for them.
    "transform_broadcast_rate",
    "log_dir", "log_level_console", "log_json_console", "log_rotation", "log_retention",
    "shards",
})


class OperationError(Exception):
    """A scale or reload that stopped part-way (the message says where)."""


class LiveOperations:
    """Scale and reload for :class:`supervisor.arbiter.Arbiter` (see the module docstring)."""

    def memory_only(self) -> bool:
        return self.config.data_dir == "" and not self.config.store

    def _refusal(self, kind: str) -> str | None:
        if self.stopping:
            return "the node is stopping"
        if self.operation is not None and self.op_info is not None:
            return f"a {self.op_info['kind']} is in progress (ask again once it has finished)"
        if self.memory_only():
            return ("this node keeps room state in memory only (no data_dir, no store): "
                    "rooms can only move between shards through a store")
        return None

    def _refuse(self, kind: str, target: Any, request_id: Any, why: str) -> None:
        log.error("%s%s refused: %s", kind, "" if target is None else f" to {target} shards", why)
        self.last_refused = {"kind": kind, "target": target, "id": request_id,
                             "reason": why, "at": time.time()}

    def request_scale(self, target: int, request_id: Any = None) -> bool:
        why = self._refusal("scale")
        if why is None and not 1 <= target <= MAX_SHARDS:
            why = f"shards must be between 1 and {MAX_SHARDS}, got {target}"
        if why is None and self.config.store and self.config.cluster_port + 2 + 3 * target > 65535:
            why = f"cluster_port {self.config.cluster_port} leaves no room for {target} shards' ports"
        if why is not None:
            self._refuse("scale", target, request_id, why)
            return False
        self._begin("scale", self._op_scale(target), target=target, request_id=request_id)
        return True

    def request_reload(self, request_id: Any = None) -> bool:
        why = self._refusal("reload")
        if why is not None:
            self._refuse("reload", None, request_id, why)
            return False
        self._begin("reload", self._op_reload(), request_id=request_id)
        return True

    def _begin(self, kind: str, op: Generator[None, None, None], *, target: int | None = None,
               request_id: Any = None) -> None:
        self.operation = op
        self.op_info = {"kind": kind, "target": target, "id": request_id or uuid.uuid4().hex,
                        "state": "running", "started_at": time.time(), "finished_at": None,
                        "detail": "", "_t0": time.monotonic()}
        self.step_operation()

    def step_operation(self) -> None:
        """Advance the running operation by one step (it yields while it waits)."""
        if self.operation is None or self.op_info is None:
            return
        try:
            next(self.operation)
            return
        except StopIteration:
            state, detail = "done", ""
        except (OperationError, ConfigError) as exc:
            state, detail = "failed", str(exc)
            log.error("%s failed: %s", self.op_info["kind"], detail)
        except Exception as exc:  # noqa: BLE001 - an operation must never take the node down
            state, detail = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("%s failed", self.op_info["kind"])
        self._finish(state, detail)

    def _finish(self, state: str, detail: str) -> None:
        for child in list(self.starting.values()):
            self._discard(child)
        self.operation = None
        assert self.op_info is not None
        self.op_info.update(state=state, detail=detail, finished_at=time.time())

    def abort_operation(self, why: str) -> None:
        if self.operation is not None:
            self.operation.close()
            log.warning("%s abandoned: %s", (self.op_info or {}).get("kind"), why)
            self._finish("failed", why)

    def _new_shard(self, slot: int) -> Child:
        """Spawn a fresh incarnation for ``slot`` (not in the layout until promoted)."""
        incarnation = self.next_incarnation
        self.next_incarnation += 1
        name, target, args = self.shard_spec(slot, incarnation)
        child = self.make_child(f"{name}~{incarnation}", target, args)
        child.slot, child.incarnation = slot, incarnation
        self.starting[child.name] = child
        self.spawn(child)
        return child

    def _wait_ready(self, fresh: list[Child]) -> Generator[None, None, None]:
        deadline = time.monotonic() + self.startup_grace
        while True:
            for child in fresh:
                if child.pid is None:
                    raise OperationError(f"{child.name} failed to start: {self.cause(child)}")
            if all(child.heartbeat.value > 0.0 for child in fresh):
                return
            if time.monotonic() >= deadline:
                late = [c.name for c in fresh if c.heartbeat.value == 0.0]
                raise OperationError(f"not ready after {self.startup_grace:.0f}s: {', '.join(late)}")
            yield

    def _promote(self, child: Child) -> None:
        """A started incarnation becomes its slot's child (restarted if it dies)."""
        del self.starting[child.name]
        child.name = f"shard-{child.slot}"
        self.children[child.name] = child
        order = {"proxy": 0, "ingress": 2, "rest": 3}

        def key(item: tuple[str, Child]) -> tuple[int, int]:
            name, c = item
            if c.slot is not None and name.startswith("shard-"):
                return (1, c.slot)
            return (order.get(name, 4), 0)

        self.children = dict(sorted(self.children.items(), key=key))

    def _retire(self, child: Child) -> None:
        """Out of the layout: it hands its rooms over and exits by itself."""
        self.children.pop(child.name, None)
        child.name = f"shard-{child.slot}~{child.incarnation}"
        child.restart_at = None
        if child.pid is None:
            log.info("%s retired (it was not running)", child.name)
            return
        now = time.monotonic()
        child.retired_at, child.retire_at = now, now + RETIRE_TIMEOUT
        self.retiring[child.name] = child
        log.info("retiring %s (pid %d): it hands its rooms over and exits; SIGTERM after %.0fs",
                 child.name, child.pid, RETIRE_TIMEOUT)

    def _discard(self, child: Child) -> None:
        """A new incarnation we no longer want (its operation failed)."""
        self.starting.pop(child.name, None)
        if child.pid is None:
            return
        log.warning("killing %s (pid %d): its operation did not complete", child.name, child.pid)
        self.signal_child(child, signal.SIGKILL)
        child.kill_sent = True
        child.retired_at = child.term_at = time.monotonic()
        self.retiring[child.name] = child

    def _wait_gone(self, names: list[str]) -> Generator[None, None, None]:
        # Bounded: manage_retiring escalates to SIGTERM, then SIGKILL.
        while any(name in self.retiring for name in names):
            yield

    def _publish(self, slots: list[int]) -> None:
        self.cluster.set_slots(list(slots))
        self.slots = list(slots)
        self.config = dataclasses.replace(self.config, shards=len(slots))
        self.config_dict["shards"] = len(slots)
        log.info("shard layout published: %d shards, incarnations %s", len(slots), slots)

    def _op_scale(self, target: int) -> Generator[None, None, None]:
        started = time.monotonic()
        old = list(self.slots)
        log.info("scale %d -> %d shards: started", len(old), target)
        if target > len(old):
            fresh = [self._new_shard(k) for k in range(len(old), target)]
            yield from self._wait_ready(fresh)
            self._publish(old + [c.incarnation for c in fresh])
            for child in fresh:
                self._promote(child)
        elif target < len(old):
            leaving = [self.children[f"shard-{k}"] for k in range(target, len(old))
                       if f"shard-{k}" in self.children]
            self._publish(old[:target])
            for child in leaving:
                self._retire(child)
            yield from self._wait_gone([c.name for c in leaving])
            for k in range(target, len(old)):
                # The slot is gone: its last status must not show up as a live shard.
                for path in (self.endpoints.status_file(f"shard-{k}"),):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                clear_fatal(self.run_dir, f"shard-{k}")
        log.info("scale %d -> %d shards: done in %.2fs", len(old), target, time.monotonic() - started)

    def reloaded_config(self) -> RelayConfig:
        """The re-read configuration, restart-only settings kept at their running values."""
        fresh = self.reload_config() if self.reload_config is not None else self.config
        running, wanted = self.config.to_dict(), fresh.to_dict()
        changed = [k for k in wanted if wanted[k] != running.get(k)]
        kept = [k for k in changed if k in RESTART_ONLY]
        applied = [k for k in changed if k not in RESTART_ONLY]
        if "shards" in kept:
            kept.remove("shards")
            if wanted["shards"] != self.configured_shards:
                log.warning("reload: shards changed in the configuration (%d -> %d): a reload does "
                            "not change the shard count (%d now); use `relayctl scale N`",
                            self.configured_shards, wanted["shards"], len(self.slots))
        self.configured_shards = wanted["shards"]
        if kept:
            # Names only: some of these (rest_token) are secrets.
            log.warning("reload: changed settings that need a full restart keep their running "
                        "values: %s", ", ".join(kept))
        log.info("reload: applying %s", ", ".join(applied) if applied else "no changed settings (fresh code only)")
        merged = {**wanted, **{k: running[k] for k in RESTART_ONLY if k in running}}
        return RelayConfig.from_dict(merged)

    def _op_reload(self) -> Generator[None, None, None]:
        started = time.monotonic()
        config = self.reloaded_config()
        self.config = config
        self.config_dict = self._child_config(config)
        count = len(self.slots)
        log.info("reload: replacing %d shards one at a time", count)
        for k in range(count):
            step = time.monotonic()
            old = self.children.get(f"shard-{k}")
            fresh = self._new_shard(k)
            try:
                yield from self._wait_ready([fresh])
            except OperationError as exc:
                raise OperationError(
                    f"reload stopped at shard-{k} ({exc}); shards before it run the new "
                    "configuration, the others the old one"
                ) from None
            slots = list(self.slots)
            slots[k] = fresh.incarnation
            self._publish(slots)
            if old is not None:
                self._retire(old)
            self._promote(fresh)
            if old is not None:
                yield from self._wait_gone([old.name])
            log.info("reload: shard-%d now incarnation %d (%.2fs)", k, fresh.incarnation,
                     time.monotonic() - step)
        log.info("reload: done in %.2fs", time.monotonic() - started)

