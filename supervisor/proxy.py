"""The broadcast proxy: shards' PUB sockets -> XSUB (ipc) <-> XPUB (client port).

``zmq.proxy_steerable`` runs in C without the GIL; its control socket answers
STATISTICS so the node can export message and byte counters. Subscriptions
flow upstream, so a shard only emits topics somebody subscribed to.

Cluster mode adds a second proxy in a thread, the *bridge*: a CURVE XSUB on
the advertise address that other nodes' shards connect their cluster PUB to,
joined to an ipc XPUB that the main XSUB connects to. Subscriptions of this
node's clients thus travel up to every member's shards, and their room
traffic comes down, through links that admit members only.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import zmq

from relay.cluster.link_security import LinkGuard, load_cluster_keys
from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints, cluster_endpoints, tcp_bind
from relay.logs import setup_logging

log = logging.getLogger("relay.proxy")

# Client-facing send mark, small as in the reference (2) so that a slow
# subscriber drops stale room poses instead of replaying them late (NetSync
# #315), but 16: libzmq's I/O thread sends the proxy thread a command each
# time a subscriber's pipe drains to half its mark, so a mark of 2 cost a
# proxy wake-up per frame delivered (about 2 000 a second in the heavy
# benchmark, BENCHMARKS.md "Where the CPU goes"); 16 costs one per 8. The
# staleness it adds is small next to what the kernel's socket buffer already
# holds for a subscriber that stopped reading (hundreds of snapshots).
CLIENT_SNDHWM = 16
# Subscriptions a client may have queued towards the proxy; beyond it libzmq
# stops reading that client's connection (back-pressure on it alone).
CLIENT_RCVHWM = 1000
# Internal hop, both directions: high enough that subscription storms after
# a restart and broadcast bursts pass, but a bound in messages. Broadcasts are
# latest-only room snapshots; beyond the mark libzmq drops them (the shard PUB
# never blocks), visible as the gap between proxy "in" and shard broadcasts.
INTERNAL_HWM = 100_000


def run_proxy(config_dict: dict, run_dir: str, heartbeat: Any = None) -> None:
    config = RelayConfig.from_dict(config_dict)
    setup_logging("proxy", config.log_level_console, config.log_json_console, config.log_dir)
    endpoints = NodeEndpoints(run_dir)
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.setsockopt(zmq.LINGER, 0)
    xsub.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
    xsub.setsockopt(zmq.SNDHWM, INTERNAL_HWM)
    xsub.bind(endpoints.proxy_xsub)
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.BACKLOG, 512)
    xpub.setsockopt(zmq.SNDHWM, CLIENT_SNDHWM)
    xpub.setsockopt(zmq.RCVHWM, CLIENT_RCVHWM)
    # Subscriptions are client input too: an oversized one disconnects the peer.
    xpub.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
    xpub.bind(tcp_bind(config.host, config.pub_port))
    control = ctx.socket(zmq.REP)
    control.setsockopt(zmq.LINGER, 0)
    control.bind(endpoints.proxy_control)
    bridge = _Bridge(ctx, config, endpoints) if config.store else None
    if bridge is not None:
        xsub.connect(endpoints.cluster_bridge)
    log.info("proxy ready: pub %s:%d", config.host, config.pub_port)

    stop_requested = threading.Event()

    def handle_term(signum: int, frame: Any) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, handle_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def beat() -> None:
        # The proxy loop is C code; a thread proves the process is scheduled.
        import time

        steer = ctx.socket(zmq.REQ)
        steer.setsockopt(zmq.LINGER, 0)
        steer.connect(endpoints.proxy_control)
        while True:
            if heartbeat is not None:
                heartbeat.value = time.monotonic()
            if stop_requested.wait(0.25):
                # REP in the proxy only accepts steering from one REQ at a time.
                try:
                    steer.send(b"TERMINATE")
                except zmq.ZMQError:
                    pass
                steer.close()
                return

    threading.Thread(target=beat, name="proxy-heartbeat", daemon=True).start()
    try:
        zmq.proxy_steerable(xsub, xpub, None, control)
    except zmq.ContextTerminated:
        pass
    finally:
        for sock in (xsub, xpub, control):
            sock.close()
        if bridge is not None:
            bridge.stop()
        ctx.term()
        log.info("proxy stopped")


class _Bridge:
    """Other nodes' broadcasts in (CURVE XSUB) -> ipc XPUB, in a C proxy thread."""

    def __init__(self, ctx: zmq.Context, config: RelayConfig, endpoints: NodeEndpoints) -> None:
        self.guard = LinkGuard(ctx, load_cluster_keys(config.cluster_key_file))
        self.xsub = ctx.socket(zmq.XSUB)
        self.guard.serve(self.xsub)
        self.xpub = ctx.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
            sock.setsockopt(zmq.SNDHWM, INTERNAL_HWM)
        links = cluster_endpoints(config.advertise_host, config.cluster_port, config.shards)
        self.xsub.bind(links["xsub"])
        self.xpub.bind(endpoints.cluster_bridge)
        self.control = ctx.socket(zmq.PAIR)
        self.control.bind("inproc://bridge-control")
        self.steer = ctx.socket(zmq.PAIR)
        self.steer.connect("inproc://bridge-control")
        self.thread = threading.Thread(target=self._run, name="cluster-bridge", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, self.control)
        except zmq.ContextTerminated:
            pass

    def stop(self) -> None:
        try:
            self.steer.send(b"TERMINATE")
        except zmq.ZMQError:
            pass
        self.thread.join(timeout=2.0)
        for sock in (self.xsub, self.xpub, self.control, self.steer):
            sock.close()
        self.guard.close()
