"""Configuration of one load-generator run."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


def _tag() -> str:
    return os.urandom(4).hex()


@dataclass
class LoadConfig:
    """What to simulate and against which endpoints.

    Rates are per client (poses) or per room (probes). ``broadcast_hz`` is the
    room-pose rate the server is expected to emit per room (10 Hz for every
    server measured here); it only sets the denominator of the delivery ratio.
    """

    control_port: int
    transform_port: int
    pub_port: int
    host: str = "127.0.0.1"
    rooms: int = 1
    clients_per_room: int = 10
    pose_hz: float = 10.0
    broadcast_hz: float = 10.0
    rpc_hz: float = 5.0
    nv_hz: float = 2.0
    warmup: float = 2.0
    duration: float = 8.0
    grace: float = 1.0
    workers: int = 1
    # "client": every simulated client has its own SUB (protocol-true fan-out).
    # "room": one SUB per room per worker process (cheaper for the load
    # generator, but the server then fans out to fewer sockets).
    sub_mode: str = "client"
    room_prefix: str = "bench-r"
    join_timeout: float = 20.0
    join_rate: float = 400.0  # hellos per second per worker
    tick: float = 0.005  # pose scheduler resolution, seconds
    tag: str = field(default_factory=_tag)

    @property
    def total_clients(self) -> int:
        return self.rooms * self.clients_per_room

    def room_id(self, room: int) -> bytes:
        return f"{self.room_prefix}{room:03d}".encode()

    def device_id(self, gid: int) -> bytes:
        # UUID-shaped (36 bytes) like Unity / the Python client, unique per run.
        return f"{self.tag}-0000-4000-8000-{gid:012x}".encode()

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
