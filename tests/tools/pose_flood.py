"""Flood one room with client poses from many device ids (a test load process).

Usage: python -m tests.tools.pose_flood HOST PORT ROOM DEVICES HZ SECONDS
Each device sends a head-only pose at HZ; devices are spread over a few
DEALER sockets, as a crowd of clients would arrive on the transform lane.
"""

from __future__ import annotations

import sys
import time

import zmq

from relay.protocol import encode
from relay.protocol.messages import FLAG_HEAD_VALID, ClientPose, PlacedRotation, PoseBody

SOCKETS = 4


def main(argv: list[str]) -> int:
    host, port, room, devices, hz, seconds = argv[0], int(argv[1]), argv[2], int(argv[3]), float(argv[4]), float(argv[5])
    ctx = zmq.Context()
    socks = []
    for _ in range(SOCKETS):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(f"tcp://{host}:{port}")
        socks.append(sock)
    room_bytes = room.encode()
    payloads = [
        encode(ClientPose(8, f"flood-{i}", PoseBody(0, FLAG_HEAD_VALID, 0x1F, head=PlacedRotation(i, 150, 0, 0xE0080200))))
        for i in range(devices)
    ]
    period = 1.0 / hz
    started = time.monotonic()
    next_round = started
    sent = 0
    while time.monotonic() - started < seconds:
        for i, payload in enumerate(payloads):
            try:
                socks[i % SOCKETS].send_multipart([room_bytes, payload], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        next_round += period
        delay = next_round - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(sent, flush=True)
    for sock in socks:
        sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
