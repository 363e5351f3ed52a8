"""Per-RPC timestamps for finding where a rare control delay is spent.

A diagnostic, off unless ``RELAY_RPC_TRACE`` names a directory. The ingress
records, for each RPC it fans out, the crc32 of the payload as received, when
its main loop entered the poll that preceded the read, when that poll
returned, when the RPC was read, and when its last copy was handed to the
ROUTER; the load generator records the same crc32 with its send, poll-entry,
poll-return and receive times. All are ``time.monotonic_ns()``, one clock for
every process on Linux, so joining the files by crc32 splits an RPC's
latency into hops from sender to receiver (``bench/rpc_trace.py``).

Bounded: at most ``limit`` records; more are counted, not kept.
"""

from __future__ import annotations

import os
from array import array

ENV = "RELAY_RPC_TRACE"
FIELDS = 5
LIMIT = 1_000_000


class RpcTrace:
    """Fixed-width int64 records, written once at the end."""

    def __init__(self, path: str, limit: int = LIMIT) -> None:
        self.path = path
        self.limit = limit
        self.records = array("q")
        self.dropped = 0

    @classmethod
    def from_env(cls, name: str) -> RpcTrace | None:
        directory = os.environ.get(ENV)
        if not directory:
            return None
        return cls(os.path.join(directory, f"{name}-{os.getpid()}.trace"))

    def record(self, crc: int, a: int, b: int, c: int, d: int) -> None:
        if len(self.records) >= self.limit * FIELDS:
            self.dropped += 1
            return
        self.records.extend((crc, a, b, c, d))

    def write(self) -> None:
        with open(self.path, "wb") as f:
            self.records.tofile(f)


def read(path: str) -> list[tuple[int, ...]]:
    """The records of one trace file."""
    records = array("q")
    with open(path, "rb") as f:
        records.frombytes(f.read())
    return [tuple(records[i : i + FIELDS]) for i in range(0, len(records), FIELDS)]
