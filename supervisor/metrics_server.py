"""The node's HTTP endpoint for Prometheus: ``/metrics`` and ``/healthz``.

Runs on a thread of the supervisor, the one process that outlives every
child, so a scrape works while any child restarts. A dedicated registry holds
only :class:`relay.metrics.NodeCollector`: the default registry's process and
platform collectors would describe the supervisor alone and be mistaken for
the node.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app

from relay.endpoints import NodeEndpoints
from relay.metrics import NodeCollector
from relay.status import read_status

log = logging.getLogger("relay.metrics")

# supervisor.json is rewritten every 0.5 s by the arbiter's main loop; an
# older file means that loop is stuck even though this thread still answers.
HEALTHY_STATE_AGE = 5.0


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Every scrape would otherwise print an access line to stderr."""


def health(run_dir: str) -> tuple[bool, dict[str, Any]]:
    """Healthy when the supervisor loop is alive and the ingress is up."""
    state = read_status(NodeEndpoints(run_dir).supervisor_file)
    if state is None:
        return False, {"status": "starting"}
    children = {name: bool(c.get("alive")) for name, c in (state.get("children") or {}).items()}
    try:
        age = time.time() - os.stat(NodeEndpoints(run_dir).supervisor_file).st_mtime
    except OSError:
        age = float("inf")
    ok = age < HEALTHY_STATE_AGE and children.get("ingress", False)
    cluster = state.get("cluster") or {}
    degraded = bool(cluster.get("store_degraded"))
    body = {"status": "ok" if ok else "unhealthy", "state_age_s": round(age, 3), "children": children,
            "store_degraded": degraded, "node_id": cluster.get("node_id")}
    if ok and degraded:
        # Still serving (200: keep the balancer sending clients), but say so.
        body["status"] = "degraded"
        body["detail"] = cluster.get("detail", "")
    return ok, body


def make_app(run_dir: str, registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            ok, body = health(run_dir)
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json")],
            )
            return [orjson.dumps(body)]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class MetricsServer:
    """Handle returned by :func:`start_metrics_server`; ``close()`` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, collector: NodeCollector) -> None:
        self.server = server
        self.thread = thread
        self.collector = collector
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=2.0)
        self.collector.close()

    __call__ = close


Closer = MetricsServer


def start_metrics_server(port: int, host: str, run_dir: str) -> Closer:
    """Serve the node's metrics on ``host:port`` from a daemon thread."""
    collector = NodeCollector(run_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]

    class Server(_ThreadingServer):
        address_family = family

    server = make_server(host, port, make_app(run_dir, registry), Server, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return MetricsServer(server, thread, collector)
