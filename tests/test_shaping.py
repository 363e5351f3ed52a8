"""Transform shaping and the control queue (shard_worker/shaping.py, control_queue.py),
and the worker's real broadcast send path (ShardWorker._send_broadcasts) driven
without sockets: the PUB socket is a double that refuses (zmq.Again) or records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from relay.config import RelayConfig
from relay.protocol import decode, encode
from relay.protocol.messages import (
    FLAG_HEAD_VALID,
    FLAG_VIRTUALS_VALID,
    PROTOCOL_VERSION,
    ClientHello,
    ClientPose,
    Lane,
    PlacedRotation,
    PoseBody,
    RoomPose,
)
from shard_worker.control_queue import ControlQueue
from shard_worker.room import RoomSettings
from shard_worker.shaping import LatestOnly, TokenBucket
from shard_worker.shard import ShardState
from shard_worker.worker import ShardWorker

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- TokenBucket


def test_bucket_starts_full_and_try_take_returns_the_amount_deducted() -> None:
    bucket = TokenBucket(1000, now=0.0)
    assert bucket.tokens == bucket.capacity == 1000
    assert bucket.try_take(300, 0.0) == 300
    assert bucket.tokens == 700


def test_bucket_refuses_what_it_cannot_afford_without_deducting() -> None:
    bucket = TokenBucket(1000, now=0.0)
    bucket.try_take(900, 0.0)
    assert bucket.try_take(200, 0.0) is None
    assert bucket.tokens == 100
    assert bucket.try_take(200, 0.1) == 200  # refilled 100 in 0.1 s
    assert bucket.tokens == pytest.approx(0.0)


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    bucket = TokenBucket(1000, now=0.0)
    bucket.try_take(1000, 0.0)
    bucket.refill(0.25)
    assert bucket.tokens == pytest.approx(250)
    bucket.refill(10.0)
    assert bucket.tokens == 1000
    bucket.refill(5.0)  # a clock that does not advance adds nothing
    assert bucket.tokens == 1000


def test_refund_restores_exactly_the_amount_and_is_counted() -> None:
    bucket = TokenBucket(1000, now=0.0)
    taken = bucket.try_take(123.5, 0.0)
    assert taken == 123.5
    bucket.refund(taken)
    assert bucket.tokens == 1000 and bucket.refunds == 1


def test_frame_larger_than_capacity_goes_out_only_when_the_bucket_is_full() -> None:
    bucket = TokenBucket(1000, now=0.0)
    bucket.try_take(1, 0.0)
    assert bucket.try_take(5000, 0.0) is None  # not full: wait
    assert bucket.seconds_until(5000) == pytest.approx(0.001)  # time to full, not to 5000
    assert bucket.try_take(5000, 0.001) == 5000  # full: goes, balance goes negative
    assert bucket.tokens == pytest.approx(-4000)
    assert bucket.try_take(1, 4.0) is None  # still paying it back
    assert bucket.try_take(1, 4.01) == 1


def test_zero_rate_means_unlimited() -> None:
    bucket = TokenBucket(0, now=0.0)
    assert bucket.unlimited
    before = bucket.tokens
    assert bucket.try_take(10**12, 0.0) == 0.0
    assert bucket.try_take(10**12, 0.0) == 0.0
    assert bucket.tokens == before
    assert bucket.seconds_until(10**12) == 0.0


# ----------------------------------------------------------------- LatestOnly


def test_latest_only_keeps_one_frame_per_topic_and_counts_replacements() -> None:
    pending = LatestOnly()
    pending.put(b"a", b"1", 2)
    pending.put(b"b", b"x", 1)
    pending.put(b"a", b"2", 3)
    pending.put(b"a", b"3", 4)

    assert len(pending) == 2
    assert pending.replaced == 2
    assert [(t, f.payload, f.fanout) for t, f in pending.frames.items()] == [
        (b"a", b"3", 4),  # replaced in place: keeps its turn
        (b"b", b"x", 1),
    ]
    pending.drop_topic(b"a")
    pending.drop_topic(b"missing")
    assert list(pending.frames) == [b"b"]


# --------------------------------------------------------------- ControlQueue


def test_control_queue_is_fifo() -> None:
    queue = ControlQueue(10)
    for i in range(3):
        assert queue.push([b"id", b"room", bytes([i])])
    assert queue.peek() == [b"id", b"room", b"\x00"]
    assert len(queue) == 3
    assert [queue.pop()[2] for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
    assert len(queue) == 0


def test_control_queue_refuses_the_newest_on_overflow_and_keeps_a_high_water_mark() -> None:
    queue = ControlQueue(2)
    assert queue.push([b"1"]) and queue.push([b"2"])
    assert queue.push([b"3"]) is False
    assert queue.push([b"4"]) is False
    assert queue.refused == 2
    assert [queue.pop(), queue.pop()] == [[b"1"], [b"2"]]  # the oldest were kept
    assert queue.high_water == 2
    assert queue.push([b"5"])
    assert queue.high_water == 2  # a mark, not the current depth
    assert queue.pop() == [b"5"]


# --------------------------------------------------- worker send path (no sockets)


class BlockedPub:
    """A PUB socket whose send buffer is full: every send raises zmq.Again."""

    def __init__(self, during_send: Callable[[], None] | None = None) -> None:
        self.attempts: list[tuple[list[bytes], int]] = []
        self.during_send = during_send

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.attempts.append((list(frames), flags))
        if self.during_send is not None:
            self.during_send()
        raise zmq.Again()


class RecordingPub:
    def __init__(self) -> None:
        self.sent: list[tuple[list[bytes], int]] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append((list(frames), flags))


@pytest.fixture
def make_worker(tmp_path: Path) -> Callable[..., ShardWorker]:
    """A real ShardWorker (its constructor opens no socket) with a PUB double.

    No data_dir, so no store; the bucket is replaced by one on the test's clock.
    """

    def make(rate: float, pub: object, now: float = 0.0) -> ShardWorker:
        worker = ShardWorker(RelayConfig(data_dir=""), 0, str(tmp_path))
        assert worker.store is None
        worker.bucket = TokenBucket(rate, now)
        worker.pub = pub  # type: ignore[attr-defined]
        return worker

    return make


def test_failed_send_refunds_exactly_what_was_deducted_and_keeps_the_frame(
    make_worker: Callable[..., ShardWorker],
) -> None:
    worker = make_worker(10_000, RecordingPub())
    worker.pending.put(b"warm", b"w" * 250, 1)
    worker._send_broadcasts(0.0)  # leaves a non-trivial balance
    assert worker.bucket.tokens == 9_750

    # While the send fails, a newer, much costlier frame replaces the pending
    # one: a refund recomputed from the pending frame would be 900 * 5, not 300.
    def replace_during_send() -> None:
        worker.pending.put(b"r", b"y" * 900, 5)

    blocked = BlockedPub(replace_during_send)
    worker.pub = blocked  # type: ignore[assignment]
    worker.pending.put(b"r", b"x" * 100, 3)
    worker.bucket.refill(0.5)
    before = worker.bucket.tokens

    worker._send_broadcasts(0.5)

    assert worker.bucket.tokens == before
    assert worker.bucket.refunds == 1
    assert blocked.attempts == [([b"r", b"x" * 100], zmq.NOBLOCK)]
    assert list(worker.pending.frames) == [b"r"]
    assert worker.counters["broadcast_again"] == 1
    assert worker.counters["broadcasts_sent"] == 1

    # The PUB side drains: the newest payload goes out, paid once.
    worker.pending.put(b"r", b"z" * 120, 2)
    ok = RecordingPub()
    worker.pub = ok  # type: ignore[assignment]
    worker._send_broadcasts(0.5)

    assert ok.sent == [([b"r", b"z" * 120], zmq.NOBLOCK)]
    assert worker.bucket.tokens == before - 240
    assert len(worker.pending) == 0
    assert worker.counters["broadcasts_sent"] == 2
    assert worker.counters["broadcast_bytes"] == 250 + 120


def test_failed_send_with_an_unlimited_bucket_leaves_it_untouched(
    make_worker: Callable[..., ShardWorker],
) -> None:
    worker = make_worker(0, BlockedPub())
    worker.pending.put(b"r", b"p" * 10_000, 100)
    before = worker.bucket.tokens
    worker._send_broadcasts(0.0)
    assert worker.bucket.tokens == before
    assert list(worker.pending.frames) == [b"r"]


def _pose(device: str, seq: int, virtuals: int = 0) -> bytes:
    flags = FLAG_HEAD_VALID | (FLAG_VIRTUALS_VALID if virtuals else 0)
    body = PoseBody(
        pose_seq=seq,
        flags=flags,
        encoding_flags=0x1F,
        head=PlacedRotation(seq, 0, 0, 0xE0080200),
        virtuals=tuple(PlacedRotation(i, i, i, 0xE0080200) for i in range(virtuals)),
    )
    return encode(ClientPose(PROTOCOL_VERSION, device, body))


def _room_with_members(count: int, virtuals: int = 0) -> ShardState:
    state = ShardState(RoomSettings(), now=0.0)
    for i in range(count):
        device = f"dev{i}"
        state.handle(Lane.CONTROL, device.encode(), b"r", encode(ClientHello(8, 0, device)), 0.0)
        state.handle(Lane.TRANSFORM, b"x" + device.encode(), b"r", _pose(device, 0, virtuals), 0.0)
    return state


def test_coalescing_while_pub_is_blocked_then_the_newest_snapshot_is_sent(
    make_worker: Callable[..., ShardWorker],
) -> None:
    state = _room_with_members(2)
    blocked = BlockedPub()
    worker = make_worker(1_000_000, blocked)
    for step in range(1, 31):
        now = round(step * 0.1, 6)
        state.handle(Lane.TRANSFORM, b"xdev0", b"r", _pose("dev0", step), now)
        _, broadcasts = state.tick(now)
        for topic, payload, fanout in broadcasts:
            worker.pending.put(topic, payload, fanout)
        worker._send_broadcasts(now)
        assert len(worker.pending) <= 1  # one topic, one pending frame
    assert worker.pending.replaced >= 20
    assert worker.bucket.tokens == worker.bucket.capacity  # every attempt refunded
    assert worker.counters["broadcasts_sent"] == 0

    ok = RecordingPub()
    worker.pub = ok  # type: ignore[assignment]
    worker._send_broadcasts(3.0)

    assert len(ok.sent) == 1
    (topic, payload), _ = ok.sent[0]
    assert topic == b"r"
    msg = decode(payload)
    assert isinstance(msg, RoomPose)
    seqs = {e.client_no: e.body.pose_seq for e in msg.clients}
    assert seqs[1] == max(
        step for step in range(1, 31) if round(step * 0.1, 6) <= msg.broadcast_time
    )
    assert msg.broadcast_time >= 2.9  # the newest snapshot, not a stale one


def test_room_pose_bigger_than_the_bucket_capacity_is_delivered_when_full(
    make_worker: Callable[..., ShardWorker],
) -> None:
    state = _room_with_members(4, virtuals=50)
    _, broadcasts = state.tick(0.0)
    ((topic, payload, fanout),) = [b for b in broadcasts if b[0] == b"r"]
    cost = len(payload) * fanout
    rate = cost // 4  # capacity is a quarter of the frame's cost
    ok = RecordingPub()
    worker = make_worker(rate, ok)

    # Not full: the oversized frame waits (head of line) ...
    worker.bucket.try_take(1, 0.0)
    worker.pending.put(topic, payload, fanout)
    worker._send_broadcasts(0.0)
    assert ok.sent == [] and len(worker.pending) == 1

    # ... and goes out as soon as the bucket is full again (W9 avoided).
    worker._send_broadcasts(1.0 / rate + 1e-6)
    assert ok.sent == [([topic, payload], zmq.NOBLOCK)]
    assert len(worker.pending) == 0
    decoded = decode(ok.sent[0][0][1])
    assert isinstance(decoded, RoomPose) and len(decoded.clients) == 4
    assert worker.bucket.tokens < 0  # paid for in full, refills later

    # The debt is repaid before the next frame: it waits roughly cost/rate.
    worker.pending.put(topic, payload, fanout)
    worker._send_broadcasts(2.0)
    assert len(ok.sent) == 1
    worker._send_broadcasts(4.1)
    assert len(ok.sent) == 2
