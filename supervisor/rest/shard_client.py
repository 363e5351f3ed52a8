"""Request/reply from the REST bridge to the shard that owns a room, over ZeroMQ.

Transport only: it sends an admin request (``relay/admin.py``) to one shard's
admin ROUTER and returns the reply's outcome and body. It knows nothing about
HTTP; ``outcomes.py`` decides what an outcome means to an HTTP client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
import zmq
import zmq.asyncio

from relay.admin import MalformedReply, Outcome, parse_reply
from relay.cluster.link_security import ClusterKeys, curve_client, load_cluster_keys
from relay.config import RelayConfig
from relay.endpoints import NodeEndpoints
from relay.logs import RateLimitedLog

__all__ = ["ShardClient", "ShardReplyError", "ShardRequester", "ShardUnavailable"]

log = logging.getLogger("relay.rest")
# Request failures repeat once per HTTP call (a stalled shard, a bad client
# loop): one line per reason per interval, flushed by the status task.
limited_log = RateLimitedLog(log)

Reply = tuple[Outcome, dict[str, Any]]


class ShardUnavailable(Exception):
    """The owning shard did not answer in time."""

    def __init__(self, shard: int, timeout: float) -> None:
        self.shard = shard
        self.timeout = timeout
        super().__init__(f"shard {shard} did not answer within {timeout:g}s")


class ShardReplyError(Exception):
    """The shard answered something that is not a reply of the admin protocol."""


class ShardRequester(Protocol):
    """What the app needs from a shard connection; tests substitute fakes."""

    async def request(self, shard: int, body: dict[str, Any]) -> Reply: ...

    async def close(self) -> None: ...


class ShardClient:
    """Async request/reply to shard admin ROUTERs, one DEALER per shard.

    Replies are matched to requests by id, never by order: a reply that
    arrives after its request timed out finds no waiter and is discarded, so
    it cannot be taken for the answer to a later request. Sockets are created
    on first use so they belong to the event loop that serves requests.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._ctx = context
        self._own_ctx = context is None
        self._sockets: dict[int, zmq.asyncio.Socket] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._pending: dict[bytes, asyncio.Future[Reply]] = {}
        # A per-instance prefix keeps ids unique across restarts of the bridge.
        self._prefix = os.urandom(4)
        self._ids = itertools.count(1)
        self.counts: Counter[str] = Counter()
        self._closed = False
        # Shards of other nodes (cluster mode): extra keys past the local ones,
        # reached over CURVE with the cluster key pair.
        self._remote_keys: dict[str, int] = {}
        self.cluster_keys: ClusterKeys | None = None
        # This node's shard admin endpoints; a new incarnation of a slot
        # (rolling restart) gets a new key and socket.
        self._local_keys: dict[str, int] = {ep: k for k, ep in enumerate(self.endpoints)}

    def _key(self, keys: dict[str, int], endpoint: str) -> int:
        key = keys.get(endpoint)
        if key is None:
            key = keys[endpoint] = len(self.endpoints)
            self.endpoints.append(endpoint)
        return key

    def local(self, endpoint: str) -> int:
        """The request key of one of this node's shard admin endpoints."""
        return self._key(self._local_keys, endpoint)

    def remote(self, endpoint: str) -> int:
        """The request key of another node's shard admin endpoint (CURVE)."""
        return self._key(self._remote_keys, endpoint)

    @classmethod
    def for_node(cls, config: RelayConfig, run_dir: str) -> ShardClient:
        endpoints = NodeEndpoints(run_dir)
        client = cls(
            [endpoints.shard_admin(k) for k in range(config.shards)], config.rest_request_timeout
        )
        if config.store:
            client.cluster_keys = load_cluster_keys(config.cluster_key_file)
        return client

    def _socket(self, shard: int) -> zmq.asyncio.Socket:
        sock = self._sockets.get(shard)
        if sock is not None:
            return sock
        if self._closed:
            raise RuntimeError("shard client is closed")
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Requests queue only briefly for a stopped shard; past this the send
        # itself waits and the request times out like any other.
        sock.setsockopt(zmq.SNDHWM, 1000)
        if shard in self._remote_keys.values() and self.cluster_keys is not None:
            curve_client(sock, self.cluster_keys)
        sock.connect(self.endpoints[shard])
        self._sockets[shard] = sock
        self._readers[shard] = asyncio.get_running_loop().create_task(
            self._read_replies(shard, sock), name=f"shard-{shard}-replies"
        )
        return sock

    async def _read_replies(self, shard: int, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if sock.closed:
                    return
                limited_log.warning("admin_socket_error", "shard %d admin socket error: %s", shard, exc)
                await asyncio.sleep(0.1)
                continue
            if len(frames) != 2:
                self.counts["malformed_replies"] += 1
                continue
            waiter = self._pending.get(frames[0])
            if waiter is None or waiter.done():
                self.counts["late_replies"] += 1
                continue
            try:
                result = parse_reply(frames[1])
            except MalformedReply as exc:
                self.counts["malformed_replies"] += 1
                waiter.set_exception(ShardReplyError(f"shard {shard} sent a malformed reply: {exc}"))
                continue
            waiter.set_result(result)

    async def request(self, shard: int, body: dict[str, Any]) -> Reply:
        """Send ``body`` to ``shard``; return the reply's (outcome, body).

        Raises :class:`ShardUnavailable` after ``timeout`` seconds.
        """
        if not 0 <= shard < len(self.endpoints):
            raise ValueError(f"no shard {shard}")
        sock = self._socket(shard)
        request_id = self._prefix + next(self._ids).to_bytes(8, "big")
        # Lets a shard skip work nobody waits for any more (after SIGSTOP or a
        # long stall); shards that do not know the field ignore it.
        payload = orjson.dumps({**body, "deadline": time.time() + self.timeout})
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        self.counts["requests"] += 1
        try:
            async with asyncio.timeout(self.timeout):
                await sock.send_multipart([request_id, payload])
                return await waiter
        except TimeoutError:
            self.counts["timeouts"] += 1
            raise ShardUnavailable(shard, self.timeout) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        self._closed = True
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._readers.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.cancel()
        self._pending.clear()
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None
