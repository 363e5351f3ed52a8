"""The supervisor's cluster agent: this node's membership, and the view for its children.

With a shared store it registers the node, refreshes the registration every
second (one round trip) and rewrites ``view.json`` when the view changes;
without one, it writes the one-node view once. When the store is out of
reach it keeps the last view, marks the node degraded (children, status,
/healthz and metrics read it from ``view.json``), keeps retrying and never
takes the node down: rooms already served keep being served.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.cluster.membership import Membership, NodeIdConflict, node_number
from relay.cluster.view import ClusterView, NodeInfo, local_view
from relay.cluster.view_file import write_view
from relay.config import RelayConfig
from relay.endpoints import cluster_endpoints

log = logging.getLogger("relay.cluster")

REFRESH_INTERVAL = 1.0


def default_node_id() -> str:
    return socket.gethostname().split(".")[0][:64] or "node"


def redis_client(url: str) -> redis.Redis:
    """A client that fails fast: callers retry on their own schedule."""
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=0.5,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class ClusterAgent:
    def __init__(self, config: RelayConfig, run_dir: str, endpoints: dict[str, str]) -> None:
        self.config = config
        self.run_dir = run_dir
        self.node_id = config.node_id or default_node_id()
        self.shared = bool(config.store)
        self.endpoints = endpoints
        self.epoch = int(time.time() * 1000)
        self.number = 0
        self.view: ClusterView = local_view(self.node_id, config.shards, self.epoch)
        # Incarnation serving each shard slot (relay/cluster/view_file.py).
        self.slots: list[int] = [0] * config.shards
        # set_slots runs on the supervisor's thread, refreshes on ours.
        self._lock = threading.RLock()
        self.degraded = False
        self.detail = ""
        self.refreshes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.membership: Membership | None = None
        if self.shared:
            self.client = redis_client(config.store)

    # ---------------------------------------------------------------- start

    def join(self) -> None:
        """Register before any child starts. Raises NodeIdConflict when the id is taken."""
        if not self.shared:
            self._publish()
            return
        try:
            self.epoch = self._server_epoch()
            self.number = node_number(self.client, self.node_id)
        except redis.RedisError as exc:
            self._degrade(f"store unreachable at start: {exc}")
            self._publish()
            return
        info = NodeInfo(self.node_id, len(self.slots), self.epoch, self.number, self.endpoints)
        self.membership = Membership(self.client, info, ttl=self.config.membership_ttl)
        deadline = time.monotonic() + self.config.membership_ttl + 1.5
        while True:
            try:
                self.view = self.membership.refresh()
                break
            except NodeIdConflict:
                # A crashed incarnation of this node stops refreshing: wait it out.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        log.info("joined cluster as %r (epoch %d): %d node(s), generation %d",
                 self.node_id, self.epoch, len(self.view.nodes), self.view.generation)
        self._publish()

    def _server_epoch(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def start(self) -> None:
        if not self.shared:
            return
        self._thread = threading.Thread(target=self._run, name="cluster-agent", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- loop

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            self.refresh_once()

    def refresh_once(self) -> None:
        with self._lock:
            self._refresh_once()

    def _refresh_once(self) -> None:
        try:
            if self.membership is None:
                # The store was unreachable at start: register now.
                self.epoch = self._server_epoch()
                self.number = node_number(self.client, self.node_id)
                info = NodeInfo(self.node_id, len(self.slots), self.epoch, self.number, self.endpoints)
                self.membership = Membership(self.client, info, ttl=self.config.membership_ttl)
            view = self.membership.refresh()
        except NodeIdConflict as exc:
            self._degrade(str(exc))
            return
        except redis.RedisError as exc:
            self._degrade(f"store unreachable: {exc}")
            return
        self.refreshes += 1
        changed = view != self.view or self.degraded
        if self.degraded:
            log.warning("store reachable again: node %r registered", self.node_id)
        self.degraded, self.detail = False, ""
        if view != self.view:
            log.info("cluster view generation %d: nodes %s", view.generation,
                     ", ".join(f"{n.node_id}({n.shards})" for n in view.nodes))
        self.view = view
        if changed:
            self._publish()

    def _degrade(self, detail: str) -> None:
        self.failures += 1
        if not self.degraded or detail != self.detail:
            log.error("cluster membership degraded: %s (serving from memory, retrying)", detail)
            self.degraded, self.detail = True, detail
            self._publish()

    def _publish(self) -> None:
        write_view(self.run_dir, self.node_id, self.epoch, self.number, self.view,
                   store_degraded=self.degraded, detail=self.detail, slots=self.slots)

    def set_slots(self, slots: list[int]) -> None:
        """A new shard layout for this node (scale, rolling restart).

        Written to ``view.json`` at once: the ingress routes by it and tells
        each shard (relay/frames.py, routing marker), shards hand over what
        moved. In cluster mode the registration changes too, so other nodes
        route by the new shard count from their next refresh (within about a
        second; README, "Live operations").
        """
        if not slots:
            raise ValueError("a node needs at least one shard slot")
        with self._lock:
            self.slots = list(slots)
            if self.shared:
                host = self.endpoints["egress"].removeprefix("tcp://").rsplit(":", 1)[0]
                self.endpoints = cluster_endpoints(host, self.config.cluster_port, len(slots))
            info = NodeInfo(self.node_id, len(slots), self.epoch, self.number, self.endpoints)
            if self.membership is not None:
                self.membership.info = info
            others = [n for n in self.view.nodes if n.node_id != self.node_id]
            self.view = ClusterView(self.view.generation, tuple(sorted([*others, info])))
            self._publish()
            if self.shared:
                self._refresh_once()

    # ----------------------------------------------------------------- stop

    def stop(self, *, leave: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
        if leave and self.membership is not None:
            try:
                self.membership.leave()
                log.info("left the cluster")
            except (redis.RedisError, NodeIdConflict) as exc:
                log.warning("could not deregister (the registration expires by itself): %s", exc)

    def status(self) -> dict:
        return {
            "node_id": self.node_id,
            "epoch": self.epoch,
            "number": self.number,
            "store": "shared" if self.shared else "embedded",
            "store_degraded": self.degraded,
            "detail": self.detail,
            "generation": self.view.generation,
            "slots": list(self.slots),
            "nodes": [n.to_dict() for n in self.view.nodes],
            "refreshes": self.refreshes,
            "failures": self.failures,
        }
