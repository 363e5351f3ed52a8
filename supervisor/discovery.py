"""LAN discovery: answer ``STYLY-NETSYNC-DISCOVER`` on UDP and TCP (PROTOCOL §8).

Both transports share one port and one thread. The thread multiplexes the UDP
socket, the TCP listener and every open TCP connection with a selector, so a
client that connects and never writes holds nothing but its own slot until its
2 s deadline; other probes are answered meanwhile. Anything that is not
exactly the request gets no answer, and no input can stop the service: every
socket error is contained to the one datagram or connection that caused it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

from relay.config import RelayConfig
from relay.logs import RateLimitedLog

__all__ = [
    "DISCOVERY_REQUEST",
    "RESPONSE_PREFIX",
    "DiscoveryService",
    "discovery_bind_host",
    "discovery_response",
]

log = logging.getLogger("relay.discovery")

DISCOVERY_REQUEST = b"STYLY-NETSYNC-DISCOVER"
RESPONSE_PREFIX = "STYLY-NETSYNC3"
READ_LIMIT = 1024
TCP_READ_TIMEOUT = 2.0
TCP_BACKLOG = 64
# Unity's iOS client probes a whole /24 at once; a few hundred slots absorb
# that while bounding the descriptors one misbehaving host can pin.
MAX_TCP_CONNECTIONS = 256
_UDP_BURST = 64  # datagrams handled per wake-up before looking at TCP again
_SELECT_TIMEOUT = 0.25


def discovery_response(config: RelayConfig, *, tcp: bool = False) -> bytes:
    """The reply advertising this node's configured ports and name.

    The TCP form ends with a newline because Unity's TCP probe reads a line;
    the UDP form has no terminator.
    """
    text = "|".join(
        (
            RESPONSE_PREFIX,
            str(config.control_port),
            str(config.transform_port),
            str(config.pub_port),
            str(config.rest_api_port),
            config.server_name,
        )
    )
    data = text.encode("utf-8")
    return data + b"\n" if tcp else data


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def discovery_bind_host(config: RelayConfig) -> str:
    """Where to listen: every interface, unless the node is loopback-only.

    Discovery exists for LAN clients, so it normally ignores ``host`` (which
    may name one NIC for the ZeroMQ ports); a loopback ``host`` means a local
    or test node, which must not answer probes from the network.
    """
    host = config.host.strip()
    return host if _is_loopback(host) else "0.0.0.0"


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float


class DiscoveryService:
    """UDP + TCP discovery responder on ``server_discovery_port``.

    ``start()`` binds both sockets (raising ``OSError`` if neither can be
    bound) and runs the responder in a daemon thread; ``stop()`` ends it.
    """

    def __init__(self, config: RelayConfig, host: str | None = None) -> None:
        self.host = host if host is not None else discovery_bind_host(config)
        self.port = config.server_discovery_port
        self.udp_reply = discovery_response(config)
        self.tcp_reply = discovery_response(config, tcp=True)
        self.counts: Counter[str] = Counter()
        # Per-datagram and per-connection failures repeat as fast as peers
        # (or EMFILE) make them: one line per reason per interval.
        self._limited = RateLimitedLog(log)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._conns: dict[int, _Conn] = {}
        self._selector: selectors.BaseSelector | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if "|" in config.server_name:
            # Clients split on every '|': the advertised name arrives truncated.
            log.warning(
                "server_name %r contains '|': clients will see only %r",
                config.server_name,
                config.server_name.split("|", 1)[0],
            )

    # ------------------------------------------------------------ set-up

    def _family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def _bind_udp(self) -> socket.socket:
        sock = socket.socket(self._family(), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _bind_tcp(self) -> socket.socket:
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def start(self) -> None:
        """Bind and start serving; a transport that cannot bind is logged and skipped."""
        errors: list[str] = []
        for kind, binder in (("udp", self._bind_udp), ("tcp", self._bind_tcp)):
            try:
                sock = binder()
            except OSError as exc:
                errors.append(f"{kind} {self.host}:{self.port}: {exc}")
                log.error("discovery: cannot bind %s %s:%d: %s", kind, self.host, self.port, exc)
                continue
            if kind == "udp":
                self._udp = sock
            else:
                self._tcp = sock
        if self._udp is None and self._tcp is None:
            raise OSError(errno.EADDRINUSE, "discovery: nothing bound: " + "; ".join(errors))
        self._selector = selectors.DefaultSelector()
        if self._udp is not None:
            self._selector.register(self._udp, selectors.EVENT_READ, "udp")
        if self._tcp is not None:
            self._selector.register(self._tcp, selectors.EVENT_READ, "listen")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._thread.start()
        log.info(
            "discovery on %s:%d (udp=%s, tcp=%s) advertising %r",
            self.host,
            self.port,
            self._udp is not None,
            self._tcp is not None,
            self.udp_reply.decode("utf-8"),
        )

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -------------------------------------------------------------- loop

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stop.is_set():
            try:
                events = self._selector.select(_SELECT_TIMEOUT)
            except OSError as exc:
                # Should never happen; never let it kill the thread either.
                self._limited.warning("select_failed", "discovery: select failed: %s", exc)
                time.sleep(_SELECT_TIMEOUT)
                continue
            for key, _ in events:
                try:
                    if key.data == "udp":
                        self._on_udp()
                    elif key.data == "listen":
                        self._on_accept()
                    else:
                        self._on_conn_readable(key.data)
                except Exception:
                    self.counts["errors"] += 1
                    self._limited.exception("unexpected_error", "discovery: unexpected error (service continues)")
            self._expire(time.monotonic())
            self._limited.flush()

    def _on_udp(self) -> None:
        assert self._udp is not None
        for _ in range(_UDP_BURST):
            try:
                data, addr = self._udp.recvfrom(READ_LIMIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # e.g. a queued ICMP error on some platforms: belongs to one peer only.
                log.debug("discovery: udp recv error: %s", exc)
                continue
            if data != DISCOVERY_REQUEST:
                self.counts["udp_ignored"] += 1
                continue
            try:
                self._udp.sendto(self.udp_reply, addr)
                self.counts["udp_replies"] += 1
            except OSError as exc:
                self.counts["udp_send_errors"] += 1
                log.debug("discovery: udp reply to %s failed: %s", addr, exc)

    def _on_accept(self) -> None:
        assert self._tcp is not None and self._selector is not None
        while True:
            try:
                sock, _ = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: drop this round, keep listening.
                self._limited.warning("accept_failed", "discovery: accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_TCP_CONNECTIONS:
                self.counts["tcp_refused"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + TCP_READ_TIMEOUT)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _on_conn_readable(self, conn: _Conn) -> None:
        # Exactly one read per connection, whatever it yields.
        try:
            data = conn.sock.recv(READ_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and data.strip() == DISCOVERY_REQUEST:
            try:
                # One send: Unity's probe does a single read of the reply.
                conn.sock.send(self.tcp_reply)
                self.counts["tcp_replies"] += 1
            except OSError as exc:
                self.counts["tcp_send_errors"] += 1
                log.debug("discovery: tcp reply failed: %s", exc)
        else:
            self.counts["tcp_ignored"] += 1
        self._close_conn(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.counts["tcp_timeouts"] += 1
            self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            if self._selector is not None:
                try:
                    self._selector.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
        conn.sock.close()
