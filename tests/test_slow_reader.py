"""A client that stops reading its control socket (issue #15), with real processes.

Timing figures live in BENCHMARKS.md ("Soak"); this test asserts behaviour,
with margins far from what a correct implementation needs.
"""

from __future__ import annotations

import time

import pytest
import zmq

from relay.protocol import encode
from relay.protocol.messages import ClientHello, Rpc
from supervisor import ingress as ingress_module
from tests.support import RawClient, RelayNode, cpu_seconds, restarts, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


class Ring:
    """Twenty normal clients in one room, each sending targeted RPCs to the next."""

    def __init__(self, node: RelayNode, room: str, size: int) -> None:
        self.clients = [RawClient(node, room, f"{room}-{i}", subscribe=False) for i in range(size)]
        self.seq = 0

    def join(self) -> None:
        for client in self.clients:
            client.join()
        for client in self.clients:
            client.drain_control()

    def round(self, timeout: float = 5.0) -> None:
        """Every client sends one RPC to its neighbour; all must arrive, in order."""
        self.seq += 1
        n = len(self.clients)
        for i, client in enumerate(self.clients):
            target = self.clients[(i + 1) % n].client_no
            client.send_control(Rpc(0, client.device_id, (target,), "ring", f'["{self.seq}","{i}"]'))
        for i, client in enumerate(self.clients):
            want = f'["{self.seq}","{(i - 1) % n}"]'
            got = client.recv_control_until(lambda m, want=want: isinstance(m, Rpc) and m.arguments_json == want, timeout)
            assert got is not None, f"RPC round {self.seq} lost for client {i}"

    def close(self) -> None:
        for client in self.clients:
            client.close()


def test_a_client_that_never_reads_costs_only_its_own_bounded_queue(tmp_path) -> None:
    # Members must outlive the quiet window below (default client_timeout 5 s).
    config = write_config(tmp_path, client_timeout=120.0)
    with RelayNode(shards=2, extra_args=["--config", config]) as node:
        ingress_pid = node.child_pid("ingress")
        ring = Ring(node, "busy-room", 20)
        ctx = zmq.Context.instance()
        stuck = ctx.socket(zmq.DEALER)
        stuck.setsockopt(zmq.LINGER, 0)
        # Tiny receive side, and it never calls recv: the relay's pipe to it
        # fills after a few messages.
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.SNDHWM, 100_000)
        stuck.connect(node.endpoint(node.control_port))
        try:
            ring.join()
            room = b"stuck-room"
            stuck.send_multipart([room, encode(ClientHello(8, 0, "stuck-dev"))])
            # Alone in its room, its broadcast RPCs echo back to itself only.
            rpc = encode(Rpc(0, "stuck-dev", (), "flood", '["' + "x" * 8000 + '"]'))
            flood_end = time.monotonic() + 4.0
            rounds = 0
            while time.monotonic() < flood_end:
                for _ in range(40):
                    stuck.send_multipart([room, rpc], zmq.NOBLOCK)
                if rounds % 5 == 0:
                    ring.round()  # normal traffic goes on meanwhile, undisturbed
                rounds += 1
                time.sleep(0.02)

            def queued() -> dict | None:
                status = node.child_status("ingress") or {}
                return status if status.get("retry_queued", 0) > 0 else None

            status = wait_for(queued, 10, interval=0.1, what="the stuck client's queue")
            assert status["retry_recipients"] == 1, status
            assert status["drops"].get("unicast_client_full", 0) > 0, status["drops"]
            assert status["retry_queued_bytes"] <= ingress_module.RETRY_BYTES_PER_RECIPIENT

            # Quiet: nothing arrives while the stuck queue waits. The ingress
            # must sleep, not spin on the retry (it used to poll with timeout 0).
            time.sleep(0.5)
            cpu_before, wall_before = cpu_seconds(ingress_pid), time.monotonic()
            time.sleep(5.0)
            busy = (cpu_seconds(ingress_pid) - cpu_before) / (time.monotonic() - wall_before)
            assert busy < 0.30, f"ingress used {busy:.0%} of a core while idle"
            assert (node.child_status("ingress") or {}).get("retry_queued", 0) > 0, "queue gone too early"

            # Normal clients were never affected, and still are not.
            for _ in range(3):
                ring.round()

            # Never re-queued forever: the stalled recipient is given up and counted.
            def given_up() -> dict | None:
                status = node.child_status("ingress") or {}
                return status if status.get("drops", {}).get("unicast_stalled", 0) > 0 else None

            status = wait_for(given_up, ingress_module.RETRY_STALL_TIMEOUT + 10, interval=0.25,
                              what="the stalled queue dropped")
            assert status["retry_queued"] == 0 and status["retry_recipients"] == 0, status
            ring.round()
            # Credit came back: nothing is left in flight towards the shards.
            wait_for(lambda: all(n == 0 for lane in (node.child_status("ingress") or {})["inflight"].values()
                                 for n in lane), 5, what="in-flight back to zero")
            assert all(n == 0 for n in restarts(node).values()), restarts(node)
        finally:
            stuck.close()
            ring.close()
