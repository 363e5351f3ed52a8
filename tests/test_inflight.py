"""The ingress -> shard queue is bounded in messages and bytes, by credit (issue #15).

A ZeroMQ high-water mark counts frames and a batch frame carries up to 128
messages; these tests drive a real Ingress object's sockets in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from relay.config import RelayConfig
from relay.frames import BATCH_HEADER, RESET_EPOCH, BatchBuilder, batch_mark, credit_frame
from relay.protocol.messages import Lane
from supervisor import ingress as ingress_module
from supervisor.ingress import Ingress
from tests.support import free_ports, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ingress(tmp_path) -> Iterator[Ingress]:
    control, transform = free_ports(2)
    config = RelayConfig(shards=1, host="127.0.0.1", control_port=control, transform_port=transform,
                         run_dir=str(tmp_path))
    ing = Ingress(config, str(tmp_path))
    ing._open_sockets()
    try:
        yield ing
    finally:
        ing._close_sockets()


def fill(batch: BatchBuilder, count: int, size: int = 40) -> None:
    for n in range(count):
        batch.add(0, b"\0\0\0\0\1", b"room", b"\x03" + bytes(size) + str(n).encode())


def test_inflight_to_a_shard_is_bounded_in_messages_not_frames(ingress: Ingress) -> None:
    # No shard is reading: batches queue in the PUSH pipe. Full batches of
    # 128 messages used to be bounded only at HWM frames x 128 messages.
    limit_messages, _ = ingress_module.INFLIGHT_LIMITS[Lane.CONTROL]
    batch = ingress.batches[Lane.CONTROL][0]
    batches = limit_messages // ingress_module.MAX_BATCH + 10
    for _ in range(batches):
        fill(batch, ingress_module.MAX_BATCH)
        ingress._send_batch(Lane.CONTROL, 0, batch)
    inflight = ingress.pushed[Lane.CONTROL][0][0] - ingress.acked[Lane.CONTROL][0][0]
    assert inflight <= limit_messages
    assert ingress.drops["shard_queue_full"] == batches * ingress_module.MAX_BATCH - inflight


def test_inflight_bytes_are_bounded_and_credit_releases_them(ingress: Ingress, monkeypatch) -> None:
    monkeypatch.setitem(ingress_module.INFLIGHT_LIMITS, Lane.CONTROL, (1000, 20_000))
    ctx = zmq.Context.instance()
    shard_inbox = ctx.socket(zmq.PULL)
    shard_inbox.setsockopt(zmq.LINGER, 0)
    shard_inbox.bind(ingress.endpoints.shard_inbox(0, Lane.CONTROL))
    credit_out = ctx.socket(zmq.PUSH)
    credit_out.setsockopt(zmq.LINGER, 0)
    credit_out.connect(ingress.endpoints.egress)
    try:
        batch = ingress.batches[Lane.CONTROL][0]
        for _ in range(10):
            fill(batch, 4, size=1000)  # ~4.2 KB per batch: the byte bound bites first
            ingress._send_batch(Lane.CONTROL, 0, batch)
        accepted = ingress.pushed[Lane.CONTROL][0]
        assert accepted[1] <= 20_000 and accepted[0] < 40
        assert ingress.drops["shard_queue_full"] == 40 - accepted[0]
        # The "shard" reads everything and reports the last batch's totals.
        frames = [shard_inbox.recv() for _ in range(accepted[0] // 4)]
        epoch, messages, nbytes = batch_mark(frames[-1])
        assert (epoch, messages, nbytes) == (ingress.epoch, *accepted)
        # A credit from another ingress epoch is ignored ...
        credit_out.send(credit_frame(Lane.CONTROL, 0, epoch ^ 1, messages, nbytes))
        # ... this one frees the whole allowance again.
        credit_out.send(credit_frame(Lane.CONTROL, 0, epoch, messages, nbytes))

        def credited() -> bool:
            ingress._pump_egress(ingress.egress)
            return ingress.acked[Lane.CONTROL][0][0] == messages

        wait_for(credited, 5, what="credit applied")
        dropped = ingress.drops["shard_queue_full"]
        fill(batch, 4, size=1000)
        ingress._send_batch(Lane.CONTROL, 0, batch)
        assert ingress.drops["shard_queue_full"] == dropped
        assert BATCH_HEADER.unpack_from(shard_inbox.recv(), 0)[3] == messages + 4
    finally:
        shard_inbox.close()
        credit_out.close()


def test_a_restarted_shard_releases_what_its_predecessor_took_down_with_it(ingress: Ingress, monkeypatch) -> None:
    """A shard that read the whole allowance into its buffers and died never
    echoes it back; without a reset the ingress would refuse that shard forever."""
    monkeypatch.setitem(ingress_module.INFLIGHT_LIMITS, Lane.CONTROL, (256, 1 << 20))
    ctx = zmq.Context.instance()
    endpoint = ingress.endpoints.shard_inbox(0, Lane.CONTROL)
    dead = ctx.socket(zmq.PULL)
    dead.setsockopt(zmq.LINGER, 0)
    dead.bind(endpoint)
    credit_out = ctx.socket(zmq.PUSH)
    credit_out.setsockopt(zmq.LINGER, 0)
    credit_out.connect(ingress.endpoints.egress)
    try:
        batch = ingress.batches[Lane.CONTROL][0]
        for _ in range(2):
            fill(batch, 128)
            ingress._send_batch(Lane.CONTROL, 0, batch)
        for _ in range(2):
            assert dead.poll(2000)
            dead.recv()  # taken into the shard's hands ...
        dead.close()  # ... and lost with it (kill -9)
        fill(batch, 1)
        ingress._send_batch(Lane.CONTROL, 0, batch)
        assert ingress.drops["shard_queue_full"] == 1  # the allowance is gone
        # The successor announces itself: everything before it is released.
        credit_out.send(credit_frame(Lane.CONTROL, 0, RESET_EPOCH, 0, 0))

        def released() -> bool:
            ingress._pump_egress(ingress.egress)
            return ingress.acked[Lane.CONTROL][0] == ingress.pushed[Lane.CONTROL][0]

        wait_for(released, 5, what="reset credit applied")
        fill(batch, 128)
        ingress._send_batch(Lane.CONTROL, 0, batch)
        assert ingress.drops["shard_queue_full"] == 1
    finally:
        credit_out.close()


@pytest.fixture
def shard(tmp_path) -> Iterator[tuple[Any, zmq.Socket]]:
    """A real in-memory ShardWorker with its sockets open, and the PULL end of its egress."""
    from shard_worker.worker import ShardWorker

    config = RelayConfig(shards=1, data_dir="", run_dir=str(tmp_path))
    egress = zmq.Context.instance().socket(zmq.PULL)
    egress.setsockopt(zmq.LINGER, 0)
    worker = ShardWorker(config, 0, str(tmp_path))
    egress.bind(worker.endpoints.egress)
    worker._open_sockets()
    try:
        yield worker, egress
    finally:
        worker._close_sockets()
        egress.close()


@pytest.fixture
def control_inbox(shard) -> Iterator[zmq.Socket]:
    """A PUSH into the shard fixture's control inbox, as the ingress has."""
    inbox = zmq.Context.instance().socket(zmq.PUSH)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.connect(shard[0].endpoints.shard_inbox(0, Lane.CONTROL))
    try:
        yield inbox
    finally:
        inbox.close()


def handled(worker: Any) -> int:
    """Messages the worker has taken (handled or dropped)."""
    return sum(worker.state.drops.counts.values()) + sum(worker.state.messages_in.values())


def test_a_shard_announces_its_start_with_a_reset_credit(shard) -> None:
    from relay.frames import parse_credit

    worker, egress = shard
    worker._turn()
    credits = set()
    while egress.poll(1000):
        credit = parse_credit(egress.recv())
        assert credit is not None
        credits.add((credit[0], credit[2]))
        if len(credits) == 2:
            break
    assert credits == {(Lane.CONTROL, RESET_EPOCH), (Lane.TRANSFORM, RESET_EPOCH)}


def test_a_batch_without_an_ingress_epoch_is_never_echoed_as_a_reset(shard, control_inbox) -> None:
    from relay.frames import parse_credit

    worker, egress = shard
    worker._turn()  # start: the two RESET credits
    batch = BatchBuilder(Lane.CONTROL)
    for count, marks in ((3, ()), (2, (0x1234, 10, 1000))):
        before = handled(worker)
        fill(batch, count)
        control_inbox.send(batch.take(*marks))  # first without an epoch (as forwarded), then local
        for _ in range(100):
            worker._turn()  # one batch per turn, so each may be echoed
            if handled(worker) >= before + count:
                break
    credits = []
    while egress.poll(200):
        frame = egress.recv()
        credit = parse_credit(frame)
        if credit is not None:
            credits.append(credit)
    resets = [c for c in credits if c[2] == RESET_EPOCH]
    assert len(resets) == 2, credits  # the start announcement only
    assert (Lane.CONTROL, 0, 0x1234, 12) == credits[-1][:4]


def test_transforms_are_read_once_per_linger_and_control_always(ingress: Ingress) -> None:
    """With transform_batch_linger, the transform port is left alone for the
    linger after a pass (poses wait in their pipes, the poll wakes when it
    ends) while control is polled throughout; what a pass reads is pushed at once."""
    import time

    ingress.transform_linger = 0.05
    ctx = zmq.Context.instance()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"tcp://127.0.0.1:{ingress.config.transform_port}")
    control = ctx.socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    control.connect(f"tcp://127.0.0.1:{ingress.config.control_port}")
    try:
        client.send_multipart([b"room", b"\x02pose"])
        wait_for(lambda: ingress.transform.poll(0), 5, what="transform readable")
        t0 = time.monotonic()
        ingress._read_transforms(1000, t0)
        assert ingress.pushed[Lane.TRANSFORM][0][0] == 1  # pushed in the same pass
        client.send_multipart([b"room", b"\x02pose2"])
        control.send_multipart([b"room", b"\x03rpc"])
        wait_for(lambda: ingress.transform.poll(0) and ingress.control.poll(0), 5, what="both lanes readable")
        # Inside the linger: control is seen, the waiting pose is not.
        events = dict(ingress._poller_for(t0 + 0.01).poll(0))
        assert ingress.control in events and ingress.transform not in events
        assert 0 < ingress._poll_timeout_ms(t0 + 0.01) <= 40
        ingress._pump_inbound(ingress.control, Lane.CONTROL, 1000)
        assert ingress.pushed[Lane.CONTROL][0][0] == 1
        # After it: the transform port is polled again.
        events = dict(ingress._poller_for(t0 + 0.06).poll(0))
        assert ingress.transform in events
        ingress._read_transforms(1000, t0 + 0.06)
        assert ingress.pushed[Lane.TRANSFORM][0][0] == 2
        # Without a linger the transform port is always polled.
        ingress.transform_linger = 0.0
        ingress.transform_next_read = 0.0
        client.send_multipart([b"room", b"\x02pose3"])
        wait_for(lambda: ingress.transform.poll(0), 5, what="transform readable")
        ingress._read_transforms(1000, time.monotonic())
        assert ingress.pushed[Lane.TRANSFORM][0][0] == 3
        assert ingress._poller_for(time.monotonic()) is ingress.poller
    finally:
        client.close()
        control.close()


def test_credit_is_echoed_per_amount_or_delay_not_per_batch(shard, control_inbox) -> None:
    """Many small batches cost a handful of echoes, and the last totals are
    echoed within CREDIT_MAX_DELAY even when traffic stops."""
    import time

    from relay.frames import parse_credit
    from shard_worker import worker as worker_module

    worker, egress = shard
    worker._turn()  # start: the two RESET credits
    batch = BatchBuilder(Lane.CONTROL)
    batches, per_batch = 40, 3
    for n in range(1, batches + 1):
        fill(batch, per_batch)
        control_inbox.send(batch.take(0x77, (n - 1) * per_batch, 0))  # totals before this batch
        worker._turn()
    wait_for(lambda: handled(worker) >= batches * per_batch, 5, what="every batch handled")
    stopped = time.monotonic()
    credits = []
    while time.monotonic() - stopped < 5 and (not credits or credits[-1][3] < batches * per_batch):
        worker._turn()  # sleeps until the delayed echo is due
        while egress.poll(0):
            credit = parse_credit(egress.recv())
            if credit is not None and credit[2] != RESET_EPOCH:
                credits.append(credit)
    echoed_after = time.monotonic() - stopped
    assert credits and credits[-1][2:4] == (0x77, batches * per_batch)
    assert len(credits) <= 4, credits  # the first at once, then per delay: not one per batch
    assert echoed_after < worker_module.CREDIT_MAX_DELAY + 0.5
