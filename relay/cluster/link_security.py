"""Node links are members-only: ZeroMQ CURVE with one cluster key pair.

Every inter-node endpoint (shard inlets, the ingress's cluster egress, the
proxy's cluster XSUB, shard admin) is a CURVE server; every node connects to
them as a CURVE client. All nodes hold the same key pair (one ZeroMQ secret
certificate file, ``relayctl keygen FILE``), and a ZAP handler in each
process accepts a client only if it proved possession of that pair's secret
key. A stranger who can reach an internal port can neither inject messages
with a forged origin nor subscribe to room traffic; each refusal is counted
and logged (rate-limited).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("relay.cluster.links")

# The ZAP domain of node links; the handler knows no other.
ZAP_DOMAIN = "netsync-cluster"

__all__ = ["ClusterKeys", "LinkGuard", "curve_client", "generate_key_file", "load_cluster_keys"]


@dataclass(frozen=True)
class ClusterKeys:
    public: bytes  # z85, 40 bytes
    secret: bytes = b""  # z85, 40 bytes; kept out of repr by callers


def generate_key_file(path: str) -> ClusterKeys:
    """Write a new cluster secret certificate to ``path`` (mode 0600)."""
    public, secret = zmq.curve_keypair()
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "#   NetSync Relay cluster key pair (ZeroMQ CURVE secret certificate).\n"
            "#   Every node of one cluster needs this same file; keep it secret.\n"
            "metadata\n"
            "curve\n"
            f'    public-key = "{public.decode()}"\n'
            f'    secret-key = "{secret.decode()}"\n'
        )
    return ClusterKeys(public, secret)


def load_cluster_keys(path: str) -> ClusterKeys:
    """Read a key file written by :func:`generate_key_file` (or zmq.auth)."""
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key (a public certificate is not enough)")
    return ClusterKeys(public, secret)


def curve_client(sock: zmq.Socket, keys: ClusterKeys) -> None:
    """Make ``sock`` a CURVE client of another member (no ZAP handler needed)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class LinkGuard:
    """One process's CURVE set-up: a ZAP handler and socket configuration.

    ``serve(sock)`` makes a socket a CURVE server that admits members only;
    ``join(sock)`` makes it a CURVE client of another member.
    """

    def __init__(self, ctx: zmq.Context, keys: ClusterKeys, *, log_interval: float = 5.0) -> None:
        self.keys = keys
        self.refused = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._log_interval = log_interval
        self._last_log = -1e18
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("relay.cluster.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    # ZAP: called from the authenticator thread for every CURVE handshake.
    def callback(self, domain: str, key: bytes) -> bool:
        ok = key == self.keys.public
        with self._lock:
            if ok:
                self.accepted += 1
                return True
            self.refused += 1
            now = time.monotonic()
            if now - self._last_log >= self._log_interval:
                self._last_log = now
                log.warning("refused a node link: unknown CURVE key %r (refused %d in total)",
                            key[:8], self.refused)
        return False

    def serve(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def join(self, sock: zmq.Socket) -> None:
        curve_client(sock, self.keys)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"links_accepted": self.accepted, "links_refused": self.refused}

    def close(self) -> None:
        self._auth.stop()
