"""The ingress's per-recipient outbound allowance (supervisor/outbound.py), without sockets."""

from __future__ import annotations

from collections import Counter

import pytest

from supervisor.outbound import GONE, SENT, WOULDBLOCK, OutboundQueues


class Peer:
    """A fake ROUTER: per identity, how many more messages it accepts now."""

    def __init__(self) -> None:
        self.room: dict[bytes, int] = {}
        self.gone: set[bytes] = set()
        self.delivered: dict[bytes, list[bytes]] = {}
        self.attempts = 0

    def send(self, frames: list[bytes]) -> int:
        self.attempts += 1
        identity = frames[0]
        if identity in self.gone:
            return GONE
        if self.room.get(identity, 0) <= 0:
            return WOULDBLOCK
        self.room[identity] -= 1
        self.delivered.setdefault(identity, []).append(frames[2])
        return SENT


def make(**overrides: float) -> tuple[OutboundQueues, Counter[str]]:
    drops: Counter[str] = Counter()
    params = dict(
        per_recipient_messages=4,
        per_recipient_bytes=1000,
        total_messages=10,
        total_bytes=10_000,
        stall_timeout=10.0,
        retry_min=0.005,
        retry_max=0.2,
    )
    params.update(overrides)

    def on_drop(reason: str, count: int) -> None:
        drops[reason] += count

    return OutboundQueues(on_drop=on_drop, **params), drops


def msg(identity: bytes, n: int, size: int = 10) -> list[bytes]:
    return [identity, b"room", str(n).encode().ljust(size, b".")]


def test_per_recipient_allowance_drops_and_counts_what_does_not_fit() -> None:
    queues, drops = make()
    for n in range(6):
        queues.enqueue(b"slow", msg(b"slow", n), 0.0)
    assert queues.queued_messages == 4
    assert drops == {"unicast_client_full": 2}
    # Bytes count too: one big message fills what a small allowance holds.
    queues.enqueue(b"big", msg(b"big", 0, size=990), 0.0)
    queues.enqueue(b"big", msg(b"big", 1), 0.0)
    assert drops["unicast_client_full"] == 3


def test_total_ceiling_across_recipients() -> None:
    queues, drops = make(total_messages=5)
    for who in (b"a", b"b", b"c"):
        for n in range(2):
            queues.enqueue(who, msg(who, n), 0.0)
    assert queues.queued_messages == 5
    assert drops == {"unicast_total_full": 1}


def test_order_per_recipient_is_kept_across_retries() -> None:
    queues, _ = make(per_recipient_messages=100, total_messages=100)
    peer = Peer()
    for n in range(10):
        queues.enqueue(b"x", msg(b"x", n), 0.0)
    now = 0.0
    while queues.queues:
        peer.room[b"x"] = 3  # the reader takes three at a time
        now += 0.25
        queues.retry_due(peer.send, now)
    assert [int(p.rstrip(b".")) for p in peer.delivered[b"x"]] == list(range(10))
    assert queues.queued_messages == 0 and queues.queued_bytes == 0


def test_retry_is_timed_with_backoff_not_a_busy_loop() -> None:
    queues, _ = make(stall_timeout=1e9)
    peer = Peer()
    queues.enqueue(b"stuck", msg(b"stuck", 0), 0.0)
    # Nothing is due before the first interval: a caller may sleep until then.
    assert queues.next_due() == pytest.approx(0.005)
    assert queues.retry_due(peer.send, 0.001) == 0 and peer.attempts == 0
    # Polling as fast as possible for 10 s of a stuck reader costs a bounded
    # number of attempts: backoff doubles up to retry_max (0.2 s).
    now = 0.0
    while now < 10.0:
        now += 0.0005
        queues.retry_due(peer.send, now)
    assert peer.attempts < 10 / 0.2 + 10, peer.attempts
    # Progress resets the interval.
    peer.room[b"stuck"] = 1
    queues.enqueue(b"stuck", msg(b"stuck", 1), now)
    while not peer.delivered:
        now += 0.001
        queues.retry_due(peer.send, now)
    assert queues.next_due() == pytest.approx(now + 0.005)


def test_stalled_recipient_is_given_up_and_counted() -> None:
    queues, drops = make(stall_timeout=2.0)
    peer = Peer()
    for n in range(3):
        queues.enqueue(b"stuck", msg(b"stuck", n), 0.0)
    now = 0.0
    while now < 1.9:
        now += 0.01
        queues.retry_due(peer.send, now)
    assert drops == {} and queues.queued_messages == 3
    while now < 2.5:
        now += 0.01
        queues.retry_due(peer.send, now)
    assert drops == {"unicast_stalled": 3}
    assert not queues.queues and queues.next_due() is None
    assert queues.queued_messages == 0 and queues.queued_bytes == 0
    # A later message starts a fresh, equally bounded queue.
    assert queues.enqueue(b"stuck", msg(b"stuck", 9), now)
    assert queues.queued_messages == 1


def test_vanished_recipient_loses_its_queue() -> None:
    queues, drops = make()
    peer = Peer()
    for n in range(3):
        queues.enqueue(b"gone", msg(b"gone", n), 0.0)
    peer.gone.add(b"gone")
    queues.retry_due(peer.send, 1.0)
    assert drops == {"unicast_unreachable": 3}
    assert not queues.queues


def test_one_stuck_recipient_does_not_hold_back_another() -> None:
    queues, _ = make()
    peer = Peer()
    queues.enqueue(b"stuck", msg(b"stuck", 0), 0.0)
    queues.enqueue(b"fine", msg(b"fine", 0), 0.0)
    peer.room[b"fine"] = 10
    queues.retry_due(peer.send, 0.01)
    assert peer.delivered == {b"fine": [msg(b"fine", 0)[2]]}
    assert list(queues.queues) == [b"stuck"]
