"""How fast a killed shard serves again: `python -m bench.restart_time [KILLS]`.

Starts `relayctl start --shards 2` on free loopback ports, then repeatedly
kill -9s shard-0 and times kill -> first DEVICE_ID_MAPPING from a room on
that shard. Kills are 1.5 s apart, so later samples include the supervisor's
restart-storm backoff by design; the first one is the isolated-crash figure.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from relay.hashing import shard_for_room
from tests.support import RawClient, RelayNode


def main(kills: int = 5) -> list[float]:
    room = next(f"rt-{i}" for i in range(100) if shard_for_room(f"rt-{i}".encode(), 2) == 0)
    samples = []
    with RelayNode(shards=2) as node:
        for n in range(kills):
            pid = node.child_pid("shard-0")
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while True:
                client = RawClient(node, room, f"probe-{n}", subscribe=False)
                try:
                    client.hello()
                    reply = client.recv_control(0.05)
                finally:
                    client.close()
                if reply is not None:
                    break
            samples.append(time.monotonic() - started)
            time.sleep(1.5)
    print("kill -9 -> serving again (s):", [round(s, 3) for s in samples])
    return samples


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
