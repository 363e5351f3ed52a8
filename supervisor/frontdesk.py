"""The ``rest`` child: REST bridge (uvicorn) plus the discovery responder.

Both are a node's "front desk" for things that are not the ZeroMQ protocol,
and neither is on a hot path, so they share one process. Start-up order
follows BEHAVIOR §13: the REST port is bound first (failure: exit status 1,
which the supervisor treats as fatal at start-up); discovery starts only once
uvicorn is serving, and a discovery bind failure is logged, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from relay.logs import setup_logging
from relay.status import write_status
from supervisor.discovery import DiscoveryService
from supervisor.rest import ShardClient, create_app
from supervisor.rest.shard_client import limited_log

__all__ = ["run_frontdesk"]

log = logging.getLogger("relay.frontdesk")

HEARTBEAT_PERIOD = 0.25
STATUS_PERIOD = 1.0
LISTEN_BACKLOG = 512
# Concurrent connections the bridge serves; uvicorn answers 503 beyond (README, "Bounds").
LIMIT_CONCURRENCY = 1024

# SIGTERM may arrive before the event loop owns the signal; remember it.
_early_term = False


def _note_early_term(signum: int, frame: Any) -> None:
    global _early_term
    _early_term = True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn would take SIGINT too and re-raise captured signals on exit; here
    SIGINT is ignored (the supervisor orders shutdown) and SIGTERM only sets
    ``should_exit``, so the process ends with status 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def bind_rest_socket(host: str, port: int) -> socket.socket:
    """Bind the REST listener here so a failure is ours to report (not uvicorn's exit)."""
    family = socket.AF_INET
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _beat(heartbeat: Any, server: uvicorn.Server) -> None:
    # The supervisor reads a first non-zero heartbeat as "ready": only once
    # uvicorn is serving, so a start-up that fails never looks started.
    while not server.started:
        await asyncio.sleep(0.02)
    while True:
        if heartbeat is not None:
            heartbeat.value = time.monotonic()
        await asyncio.sleep(HEARTBEAT_PERIOD)


async def _start_discovery_when_ready(
    server: uvicorn.Server, config: RelayConfig
) -> DiscoveryService | None:
    while not server.started:
        if server.should_exit:
            return None
        await asyncio.sleep(0.02)
    service = DiscoveryService(config)
    try:
        service.start()
    except OSError as exc:
        log.error("discovery disabled: %s", exc)
        return None
    return service


async def _write_status(
    path: str, client: ShardClient, app: Any, discovery: asyncio.Task[DiscoveryService | None] | None
) -> None:
    while True:
        limited_log.flush()
        service = discovery.result() if discovery is not None and discovery.done() else None
        status = {
            "pid": os.getpid(),
            "rest": dict(app.state.counts),
            "shard_client": dict(client.counts),
            "discovery": dict(service.counts) if service is not None else None,
        }
        try:
            write_status(path, status)
        except OSError as exc:
            log.debug("cannot write status: %s", exc)
        await asyncio.sleep(STATUS_PERIOD)


async def _serve(config: RelayConfig, run_dir: str, heartbeat: Any, sock: socket.socket) -> int:
    client = ShardClient.for_node(config, run_dir)
    app = create_app(config, client, run_dir)
    level = config.log_level_console.lower()
    uv_config = uvicorn.Config(
        app,
        host=config.rest_host,
        port=config.rest_api_port,
        log_config=None,  # keep the relay's handlers (relay.logs)
        log_level=level,
        access_log=level == "debug",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=1.0,
        limit_concurrency=LIMIT_CONCURRENCY,
    )
    server = _Server(uv_config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))
    if _early_term:
        server.should_exit = True

    tasks: list[asyncio.Task[Any]] = [loop.create_task(_beat(heartbeat, server), name="heartbeat")]
    discovery: asyncio.Task[DiscoveryService | None] | None = None
    if config.enable_server_discovery:
        discovery = loop.create_task(_start_discovery_when_ready(server, config), name="discovery")
    status_path = NodeEndpoints(run_dir).status_file("rest")
    tasks.append(loop.create_task(_write_status(status_path, client, app, discovery)))
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
        if discovery is not None:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                service = await discovery
                if service is not None:
                    service.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if not server.started:
        log.error("REST bridge failed to start on %s:%d", config.rest_host, config.rest_api_port)
        return 1
    log.info("REST bridge stopped")
    return 0


def run_frontdesk(config_dict: dict, run_dir: str, heartbeat: Any = None) -> None:
    """Child entry point (spawned by the supervisor)."""
    config = RelayConfig.from_dict(config_dict)
    setup_logging("rest", config.log_level_console, config.log_json_console, config.log_dir)
    # Ctrl-C reaches the whole process group; the supervisor decides the order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _note_early_term)
    try:
        sock = bind_rest_socket(config.rest_host, config.rest_api_port)
    except OSError as exc:
        log.error(
            "cannot bind REST bridge on %s:%d: %s", config.rest_host, config.rest_api_port, exc
        )
        from relay.fatal import record_fatal

        record_fatal(run_dir, "rest", f"cannot bind REST bridge on {config.rest_host}:{config.rest_api_port}: {exc}")
        sys.exit(1)
    log.info("REST bridge on http://%s:%d", config.rest_host, config.rest_api_port)
    try:
        code = asyncio.run(_serve(config, run_dir, heartbeat, sock))
    finally:
        sock.close()
    if code:
        sys.exit(code)
