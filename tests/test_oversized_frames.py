"""Frames over max_message_bytes are refused by libzmq at the socket (issue #15)."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import zmq

from relay.config import RelayConfig
from relay.protocol.messages import Rpc
from tests.support import RawClient, RelayNode, restarts, rss_kib, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def zmtp_dealer(port: int) -> socket.socket:
    """A raw TCP peer that completes a ZMTP 3.0 NULL handshake as a DEALER.

    Lets the test announce a frame of any size without having it in memory.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    greeting = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
    sock.sendall(greeting)
    got = b""
    while len(got) < 64:
        chunk = sock.recv(64 - len(got))
        assert chunk, "peer closed during the greeting"
        got += chunk
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    sock.sendall(bytes([0x04, len(body)]) + body)
    return sock


def stream_frame(sock: socket.socket, room: bytes, size: int) -> int:
    """Send [room, <size bytes>] as ZMTP frames; returns bytes accepted before the peer gave up."""
    sock.sendall(bytes([0x01, len(room)]) + room)
    sock.sendall(bytes([0x02]) + struct.pack(">Q", size))
    chunk = bytes(1024 * 1024)
    sent = 0
    try:
        while sent < size:
            sent += sock.send(chunk[: size - sent])
    except OSError:
        pass
    return sent


def test_oversized_frames_are_refused_by_zeromq_and_nothing_else_notices() -> None:
    limit = RelayConfig().max_message_bytes
    with RelayNode(shards=1) as node:
        normal = RawClient(node, "big-frames", "normal-dev", subscribe=False)
        peer = RawClient(node, "big-frames", "peer-dev", subscribe=False)
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(node.endpoint(node.control_port))
        try:
            normal.join()
            peer.join()
            ingress_pid = node.child_pid("ingress")

            def rpc_works(tag: str) -> bool:
                normal.send_control(Rpc(0, "normal-dev", (peer.client_no,), "ping", f'["{tag}"]'))
                return peer.recv_control_until(lambda m: isinstance(m, Rpc) and m.arguments_json == f'["{tag}"]', 5) is not None

            assert rpc_works("before")
            wait_for(lambda: (node.child_status("ingress") or {}).get("counts", {}).get("received_control", 0) >= 4,
                     5, what="ingress status")
            time.sleep(1.2)  # one status period, so the counts below are current
            received = node.child_status("ingress")["counts"]["received_control"]
            drops = dict(node.child_status("shard-0")["drops"])

            # A frame just above the limit, from a real libzmq peer.
            raw.send_multipart([b"big-frames", b"\x03" + bytes(limit)])
            # A 256 MiB frame announced on the wire: refused from its header.
            rss_before = rss_kib(ingress_pid)
            big = zmtp_dealer(node.control_port)
            try:
                accepted = stream_frame(big, b"big-frames", 256 * 1024 * 1024)
            finally:
                big.close()
            assert accepted < 64 * 1024 * 1024, f"{accepted} bytes of a 256 MiB frame were accepted"
            assert rss_kib(ingress_pid) - rss_before < 32 * 1024, "ingress RSS jumped"

            assert rpc_works("after")
            time.sleep(1.2)
            # Neither frame was received, batched or decoded anywhere.
            assert node.child_status("ingress")["counts"]["received_control"] == received + 1  # "after" only
            assert node.child_status("shard-0")["drops"] == drops
            assert node.child_pid("ingress") == ingress_pid
            assert all(n == 0 for n in restarts(node).values()), restarts(node)
        finally:
            raw.close()
            normal.close()
            peer.close()
