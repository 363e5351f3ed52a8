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


def _socket(kind: int, *, bind: str = "", connect: str = "") -> zmq.Socket:
    """A socket of the shared context that closes at once, bound or connected."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


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
    shard_inbox = _socket(zmq.PULL, bind=ingress.endpoints.shard_inbox(0, Lane.CONTROL))
    credit_out = _socket(zmq.PUSH, connect=ingress.endpoints.egress)
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
    endpoint = ingress.endpoints.shard_inbox(0, Lane.CONTROL)
    dead = _socket(zmq.PULL, bind=endpoint)
    credit_out = _socket(zmq.PUSH, connect=ingress.endpoints.egress)
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
    worker = ShardWorker(config, 0, str(tmp_path))
    egress = _socket(zmq.PULL, bind=worker.endpoints.egress)
    worker._open_sockets()
    try:
        yield worker, egress
    finally:
        worker._close_sockets()
        egress.close()


@pytest.fixture
def control_inbox(shard) -> Iterator[zmq.Socket]:
    """A PUSH into the shard fixture's control inbox, as the ingress has."""
    inbox = _socket(zmq.PUSH, connect=shard[0].endpoints.shard_inbox(0, Lane.CONTROL))
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


def test_transforms_are_read_once_per_tick_just_before_it_and_control_always(ingress: Ingress) -> None:
    """The transform port is left alone until ``transform_read_lead`` before
    the next broadcast tick of the wall-clock grid (poses wait in their pipes,
    the poll wakes for the read) while control is polled throughout; what a
    read takes is pushed at once."""
    import time

    interval, lead = ingress.tick_interval, ingress.transform_lead
    assert (interval, lead) == (0.1, 0.005)  # the defaults
    client = _socket(zmq.DEALER, connect=f"tcp://127.0.0.1:{ingress.config.transform_port}")
    control = _socket(zmq.DEALER, connect=f"tcp://127.0.0.1:{ingress.config.control_port}")
    try:
        client.send_multipart([b"room", b"\x02pose"])
        wait_for(lambda: ingress.transform.poll(0), 5, what="transform readable")
        t0, wall0 = time.monotonic(), time.time()
        ingress._read_transforms(1000)
        assert ingress.pushed[Lane.TRANSFORM][0][0] == 1  # pushed in the same pass
        # The next read: lead before a grid point, within one tick.
        wait = ingress.transform_next_read - t0
        assert 0 < wait <= interval + 0.003
        phase = (wall0 + wait + lead) % interval
        assert min(phase, interval - phase) < 0.003
        client.send_multipart([b"room", b"\x02pose2"])
        control.send_multipart([b"room", b"\x03rpc"])
        wait_for(lambda: ingress.transform.poll(0) and ingress.control.poll(0), 5, what="both lanes readable")
        # Before the read is due: control is seen, the waiting pose is not.
        before = ingress.transform_next_read - 0.0005
        events = dict(ingress._poller_for(before).poll(0))
        assert ingress.control in events and ingress.transform not in events
        assert ingress._poll_timeout_ms(before) == 1
        ingress._pump_inbound(ingress.control, Lane.CONTROL, 1000)
        assert ingress.pushed[Lane.CONTROL][0][0] == 1
        # When it is due: the transform port is polled again.
        due = ingress.transform_next_read
        events = dict(ingress._poller_for(due).poll(0))
        assert ingress.transform in events
        ingress._read_transforms(1000)
        assert ingress.pushed[Lane.TRANSFORM][0][0] == 2
        # With no lead the transform port is always polled (read on arrival).
        ingress.transform_lead = 0.0
        ingress.transform_next_read = 0.0
        client.send_multipart([b"room", b"\x02pose3"])
        wait_for(lambda: ingress.transform.poll(0), 5, what="transform readable")
        ingress._read_transforms(1000)
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


def test_a_tick_waits_for_the_poses_of_its_period_while_control_is_read_between(shard) -> None:
    """More poses than one read takes are waiting at the tick: the broadcast
    waits for the next turn, which reads the rest, and for the ingress's
    period marker, so every room's broadcast holds its period's poses; then
    the next tick is on the wall-clock grid."""
    import time

    from relay.frames import period_marker
    from relay.protocol import encode
    from relay.protocol.messages import PROTOCOL_VERSION, ClientPose
    from relay.tick_grid import period_of_tick
    from shard_worker import worker as worker_module
    from tests.test_shard_state import pose_body

    worker, _egress = shard
    rooms = [f"room-{i}".encode() for i in range(4)]
    per_room = 128  # one whole ingress batch per room: four batches, 512 poses
    assert len(rooms) * per_room > worker_module.TRANSFORM_BATCH
    push = _socket(zmq.PUSH, connect=worker.endpoints.shard_inbox(0, Lane.TRANSFORM))
    try:
        for room in rooms:
            batch = BatchBuilder(Lane.TRANSFORM)
            for n in range(per_room):
                device = f"{room.decode()}-dev-{n}"
                payload = encode(ClientPose(PROTOCOL_VERSION, device, pose_body(1)))
                batch.add(0, f"x{device}".encode(), room, payload)
            push.send(batch.take())
        wait_for(lambda: worker.transform_inbox.poll(0), 5, what="poses in the shard's pipe")
        time.sleep(0.3)  # the rest of the batches cross the ipc pipe
        # The tick falls due now (a broadcast more than BROADCAST_HOLD_MAX
        # overdue is not held: slow reads must not stop broadcasts).
        worker.state._next_broadcast = time.monotonic()
        worker._hold_max = 5.0  # a slow test machine must not reach the bound
        worker._turn()  # one batch per turn (control is polled between), broadcast held
        assert worker.state.messages_in["client_pose"] == per_room
        assert worker.counters["broadcasts_sent"] == 0
        assert worker._poll_timeout_ms(time.monotonic()) == 0  # poses left: read on at once
        for turn in (2, 3, 4):
            worker._turn()
            assert worker.state.messages_in["client_pose"] == turn * per_room
            assert worker.counters["broadcasts_sent"] == 0  # the marker for this tick is not read yet
        worker._turn()  # the pipe is drained; the marker is still not read
        assert worker.counters["broadcasts_sent"] == 0
        assert worker._poll_timeout_ms(time.monotonic()) == 1  # holding: looks again shortly
        wall_due = time.time() - (time.monotonic() - worker.state.next_broadcast_at)
        push.send(period_marker(period_of_tick(wall_due, worker.state.broadcast_interval)))
        wait_for(lambda: worker.transform_inbox.poll(0), 5, what="period marker in the pipe")
        worker._turn()  # the marker: the broadcast, with every room's poses
        assert worker.counters["broadcasts_sent"] == len(rooms)
        assert (worker.counters["broadcast_holds"], worker.counters["broadcast_hold_expired"]) == (1, 0)
        assert all(len(worker.state.rooms[r.decode()].members) == per_room for r in rooms)
        phase = (time.time() + worker.state.next_broadcast_at - time.monotonic()) % worker.state.broadcast_interval
        assert min(phase, worker.state.broadcast_interval - phase) < 0.005
    finally:
        push.close()


def test_each_read_before_a_tick_ends_with_the_period_marker_even_with_no_poses(ingress: Ingress) -> None:
    """The shard holds a tick's broadcast until the marker for it is read, so
    the ingress sends one after every drained read, also an empty one, behind
    the poses it pushed."""
    import time

    from relay.frames import iter_batch, parse_period
    from relay.tick_grid import period_of_read

    pull = _socket(zmq.PULL, bind=ingress.endpoints.shard_inbox(0, Lane.TRANSFORM, ingress.shard_slots.slots[0]))
    client = _socket(zmq.DEALER, connect=f"tcp://127.0.0.1:{ingress.config.transform_port}")
    try:
        client.send_multipart([b"room", b"\x02pose"])
        wait_for(lambda: ingress.transform.poll(0), 5, what="transform readable")
        before = time.time()
        ingress._read_transforms(1000)
        ingress._read_transforms(1000)  # nothing waits: still a marker
        after = time.time()
        frames = []
        while pull.poll(2000) and len(frames) < 3:
            frames.append(pull.recv())
        assert [room for *_, room, _payload in iter_batch(frames[0])] == [b"room"]
        periods = [parse_period(f) for f in frames[1:]]
        interval, lead = ingress.tick_interval, ingress.transform_lead
        assert all(p in (period_of_read(before, interval, lead), period_of_read(after, interval, lead))
                   for p in periods), periods
    finally:
        pull.close()
        client.close()
