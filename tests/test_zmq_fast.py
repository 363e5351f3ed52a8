"""The hot loops' multipart helpers (relay/zmq_fast.py) over a real socket pair."""

from __future__ import annotations

import zmq

from relay.zmq_fast import recv_frame_waiting, recv_parts_waiting, recv_routed_waiting, send_parts
from tests.support import wait_for


def _pair(ctx: zmq.Context, name: str) -> tuple[zmq.Socket, zmq.Socket]:
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"inproc://{name}")
    b.connect(f"inproc://{name}")
    return a, b


def test_parts_round_trip_whole_and_in_order_and_none_when_drained() -> None:
    ctx = zmq.Context()
    a, b = _pair(ctx, "parts")
    try:
        assert recv_parts_waiting(b) is None  # nothing waits: no exception
        send_parts(a, [b"id", b"room", b"payload"])
        send_parts(a, [b"one"])
        send_parts(a, [b"x", b""])
        wait_for(lambda: b.poll(0), 5, what="readable")
        assert recv_parts_waiting(b) == [b"id", b"room", b"payload"]
        assert recv_parts_waiting(b) == [b"one"]
        assert recv_parts_waiting(b) == [b"x", b""]
        assert recv_parts_waiting(b) is None
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_single_frames_and_a_full_pipe_refuses_without_blocking() -> None:
    ctx = zmq.Context()
    a, b = _pair(ctx, "frames")
    try:
        assert recv_frame_waiting(b) is None
        send_parts(a, [b"batch"])
        wait_for(lambda: b.poll(0), 5, what="readable")
        assert recv_frame_waiting(b) == b"batch"
        assert recv_frame_waiting(b) is None
        a.setsockopt(zmq.SNDHWM, 1)
        b.setsockopt(zmq.RCVHWM, 1)
        refused = False
        for _ in range(10_000):
            try:
                send_parts(a, [b"m", b"n"])
            except zmq.Again:
                refused = True
                break
        assert refused
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_routed_messages_keep_their_frames_whatever_their_count() -> None:
    """A ROUTER's reader must not assume a frame count: a client choosing two
    or four frames gets exactly its own frames back, never a neighbour's."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://routed")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    dealer.connect("inproc://routed")
    try:
        assert recv_routed_waiting(router) is None
        for parts in ([b"room", b"payload"], [b"only"], [b"a", b"b", b"c"], [b"room", b""]):
            send_parts(dealer, parts)
        wait_for(lambda: router.poll(0), 5, what="readable")
        got = []
        while (parts := recv_routed_waiting(router)) is not None:
            got.append(parts)
        assert got == [
            [b"peer", b"room", b"payload"],
            [b"peer", b"only"],
            [b"peer", b"a", b"b", b"c"],
            [b"peer", b"room", b""],
        ]
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()
