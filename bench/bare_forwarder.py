"""Bare pyzmq ROUTER -> PUB forwarder: the physical bound of this design.

The cheapest single-process server that carries the same message flows as a
NetSync server, so the load generator can measure it with the same code:

- control ROUTER: a hello (type 19) adds the sender's identity to the room and
  is answered with a one-entry DEVICE_ID_MAPPING (the load generator needs it
  to learn a client number; numbers are a per-room counter). Every other
  control payload is re-sent, unparsed, to every identity of the room
  (the sender included), i.e. RPCs arrive as type 3 as usual and NV writes
  arrive as the raw GLOBAL_VAR_SET (type 7), not as a GLOBAL_VAR_SYNC. No
  flush window, no NV state, no validation.
- transform ROUTER: keeps the latest payload per (room, transport identity).
- PUB: every 1/rate s, per room, one MSG_ROOM_POSE joining the stored
  bodies (header + per entry clientNo, poseTime 0.0 and the body bytes
  sliced after the deviceId), so clients and the load generator can decode
  it. No membership timeouts, no shaping, no latest-only queue.

The control ROUTER is drained before the transform ROUTER on each turn, as the
relay's ingress does. Socket options follow the reference (PUB SNDHWM 2).
"""

from __future__ import annotations

import argparse
import signal
import struct
import time

import zmq

_HDR = struct.Struct("<dH")
_ENTRY = struct.Struct("<Hd")
MAPPING_PREFIX = bytes((6, 0, 17, 5)) + struct.pack("<H", 1)


def serve(
    host: str, control_port: int, transform_port: int, pub_port: int, rate: float = 10.0
) -> None:
    """Run until SIGTERM/SIGINT."""
    ctx = zmq.Context(io_threads=1)
    ctl = ctx.socket(zmq.ROUTER)
    xfm = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for s in (ctl, xfm, pub):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.BACKLOG, 512)
    ctl.setsockopt(zmq.RCVHWM, 10000)
    xfm.setsockopt(zmq.RCVHWM, 10000)
    pub.setsockopt(zmq.SNDHWM, 2)
    ctl.bind(f"tcp://{host}:{control_port}")
    xfm.bind(f"tcp://{host}:{transform_port}")
    pub.bind(f"tcp://{host}:{pub_port}")

    members: dict[bytes, dict[bytes, None]] = {}  # room -> control identities
    numbers: dict[bytes, int] = {}  # room -> last client number
    latest: dict[bytes, dict[bytes, bytes]] = {}  # room -> transform identity -> payload
    prefixes: dict[bytes, bytes] = {}  # transform identity -> clientNo + poseTime(0.0)
    room_hdr: dict[bytes, bytes] = {}

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    poller = zmq.Poller()
    poller.register(ctl, zmq.POLLIN)
    poller.register(xfm, zmq.POLLIN)
    period = 1.0 / rate
    next_tick = time.monotonic() + period
    NB = zmq.NOBLOCK
    while not stop:
        timeout = max(0.0, (next_tick - time.monotonic()) * 1000.0)
        try:
            ready = dict(poller.poll(timeout))
        except zmq.ZMQError:
            break
        if ctl in ready:
            while True:
                try:
                    frames = ctl.recv_multipart(NB)
                except zmq.Again:
                    break
                if len(frames) < 3 or not frames[2]:
                    continue
                ident, room, payload = frames[0], frames[1], frames[2]
                room_members = members.get(room)
                if room_members is None:
                    room_members = members[room] = {}
                if payload[0] == 19:  # hello: membership + minimal mapping
                    if ident not in room_members:
                        room_members[ident] = None
                    no = numbers[room] = numbers.get(room, 0) + 1
                    dev = payload[3:]
                    mapping = MAPPING_PREFIX + struct.pack("<HB", no, 0) + dev
                    try:
                        ctl.send_multipart([ident, room, mapping], NB)
                    except zmq.ZMQError:
                        pass
                    continue
                for m in room_members:
                    try:
                        ctl.send_multipart([m, room, payload], NB)
                    except zmq.ZMQError:
                        pass
        if xfm in ready:
            for _ in range(256):  # bounded: control is re-polled at least every 256 poses
                try:
                    frames = xfm.recv_multipart(NB)
                except zmq.Again:
                    break
                if len(frames) < 3 or not frames[2]:
                    continue
                room = frames[1]
                slot = latest.get(room)
                if slot is None:
                    slot = latest[room] = {}
                    room_hdr[room] = bytes((12, 8, len(room))) + room
                slot[frames[0]] = frames[2]
        now = time.monotonic()
        if now >= next_tick:
            next_tick += period
            if next_tick < now:
                next_tick = now + period
            for room, slot in latest.items():
                parts = [room_hdr[room], _HDR.pack(now, len(slot))]
                for ident, payload in slot.items():
                    pre = prefixes.get(ident)
                    if pre is None:
                        pre = prefixes[ident] = _ENTRY.pack(len(prefixes) + 1 & 0xFFFF, 0.0)
                    parts.append(pre)
                    parts.append(payload[3 + payload[2] :])
                try:
                    pub.send_multipart([room, b"".join(parts)], NB)
                except zmq.Again:
                    pass
    for s in (ctl, xfm, pub):
        s.close(0)
    ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="bare ROUTER->PUB forwarder (benchmark bound)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--control-port", type=int, default=5555)
    ap.add_argument("--transform-port", type=int, default=None)
    ap.add_argument("--pub-port", type=int, default=None)
    ap.add_argument("--rate", type=float, default=10.0, help="room broadcasts per second")
    a = ap.parse_args(argv)
    serve(
        a.host,
        a.control_port,
        a.transform_port or a.control_port + 2,
        a.pub_port or a.control_port + 1,
        a.rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
