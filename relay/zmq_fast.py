"""Multipart send/receive for the hot loops, without pyzmq's per-frame Python layers.

pyzmq's ``send_multipart``/``recv_multipart`` type-check every part, combine
flags as ``enum.Flag`` objects and read ``RCVMORE`` through the option enum:
per frame that is several Python calls more than the C send/recv itself. The
ingress sends one message per recipient of every control fan-out and reads
one per client message, so those layers are a visible share of its CPU
(BENCHMARKS.md, "Where the CPU goes"). These functions call the Cython
socket methods directly with plain int flags; the semantics are the same
(a multipart message is accepted or refused as a whole at its first frame).

The ``*_waiting`` receivers return None when nothing waits instead of
raising. Multipart receivers take each frame after the first as a ``Frame``
(``copy=False``), whose ``more`` pyzmq fills with a plain C getsockopt:
``Socket.get(RCVMORE)`` costs an ``enum`` lookup (about 1.2 us) per frame,
and asking ``ZMQ_EVENTS`` before every message costs another (2 us, and a
poll() inside libzmq), which together were most of the ingress's receive
cost. They try the receive and end a drained pass on ``zmq.Again`` (about
4 us, but once per pass, where one pass over the transform port reads tens
of poses). Measured: 2.8 against 6.4 us per three-frame message
(BENCHMARKS.md, "Where the CPU goes"). The single-frame receiver still asks
``ZMQ_EVENTS``: a shard's pass reads one or two batches, where a check per
frame and one ``zmq.Again`` per pass cost the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq
from zmq.backend import Socket as _BaseSocket

__all__ = ["NOBLOCK", "recv_frame_waiting", "recv_parts_waiting", "recv_routed_waiting", "send_parts"]

NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_send = _BaseSocket.send
_recv = _BaseSocket.recv
_get = _BaseSocket.get


def send_parts(sock: zmq.Socket, parts: Sequence[bytes]) -> None:
    """Send ``parts`` as one message without blocking (zmq.Again if refused)."""
    last = len(parts) - 1
    for i in range(last):
        _send(sock, parts[i], _MORE_NOBLOCK)
    _send(sock, parts[last], NOBLOCK)


def recv_parts_waiting(sock: zmq.Socket) -> list[bytes] | None:
    """One whole message if one waits, else None (never blocks)."""
    try:
        frame = _recv(sock, NOBLOCK, False)
    except zmq.Again:
        return None
    return _with_rest(sock, [], frame)


def recv_routed_waiting(sock: zmq.Socket) -> list[bytes] | None:
    """``recv_parts_waiting`` for a ROUTER socket, whose first frame (the
    peer's routing id) is always followed by more: read as plain bytes."""
    try:
        parts = [_recv(sock, NOBLOCK)]
    except zmq.Again:
        return None
    return _with_rest(sock, parts, _recv(sock, NOBLOCK, False))


def _with_rest(sock: zmq.Socket, parts: list[bytes], frame: zmq.Frame) -> list[bytes]:
    """``parts`` with ``frame`` and every frame after it of the same message."""
    parts.append(frame.bytes)
    while frame.more:
        frame = _recv(sock, NOBLOCK, False)
        parts.append(frame.bytes)
    return parts


def recv_frame_waiting(sock: zmq.Socket) -> bytes | None:
    """One single-frame message if one waits, else None."""
    if not _get(sock, _EVENTS) & _POLLIN:
        return None
    return _recv(sock, NOBLOCK)
