"""Multipart send/receive for the hot loops, without pyzmq's per-frame Python layers.

pyzmq's ``send_multipart``/``recv_multipart`` type-check every part, combine
flags as ``enum.Flag`` objects and read ``RCVMORE`` through the option enum:
per frame that is several Python calls more than the C send/recv itself. The
ingress sends one message per recipient of every control fan-out and reads
one per client message, so those layers are a visible share of its CPU
(BENCHMARKS.md, "Where the CPU goes"). These functions call the Cython
socket methods directly with plain int flags; the semantics are the same
(a multipart message is accepted or refused as a whole at its first frame).

The ``*_waiting`` receivers ask ``ZMQ_EVENTS`` first and return None when
nothing waits: a drained socket is the normal end of every pump pass, and
pyzmq builds ``zmq.Again`` with an enum lookup per raise, which cost more
than the receive itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq
from zmq.backend import Socket as _BaseSocket

__all__ = ["NOBLOCK", "recv_frame_waiting", "recv_parts_waiting", "send_parts"]

NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
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
    if not _get(sock, _EVENTS) & _POLLIN:
        return None
    parts = [_recv(sock, NOBLOCK)]
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, NOBLOCK))
    return parts


def recv_frame_waiting(sock: zmq.Socket) -> bytes | None:
    """One single-frame message if one waits, else None."""
    if not _get(sock, _EVENTS) & _POLLIN:
        return None
    return _recv(sock, NOBLOCK)
