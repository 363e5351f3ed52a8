"""Where an RPC's latency is spent: join the ingress's and the load generator's
RPC traces (``relay/rpc_trace.py``) and split each receipt into hops.

    RELAY_RPC_TRACE=DIR python -m bench.run --scenarios heavy-nn ...
    python -m bench.rpc_trace DIR

Hops of one receipt (one clock, ``time.monotonic_ns``). A poll loop cannot
tell a message still on its way from one it has not come round to, so the
first hop of each side holds both:

- ``in_busy``: sent by the load generator -> the ingress loop entered the
  poll that returned it (the message on its way: the sender's I/O thread,
  TCP, the ingress's control I/O thread; or the ingress busy with earlier
  turns);
- ``in_wake``: -> that poll returned (the same, with the ingress waiting);
- ``in_turn``: that turn's earlier work before this message was read;
- ``fanout``: read -> its last copy handed to the ROUTER;
- ``rx_busy``: -> the receiver entered the poll that returned it (the copy
  on its way, or the receiver busy elsewhere);
- ``rx_wake``: -> that poll returned (the same, with the receiver waiting);
- ``in_poll``: -> the receiver read it (other sockets served first).

Only RPCs the ingress fanned out are joined; the others are counted.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict

from relay.rpc_trace import read

HOPS = ("in_busy", "in_wake", "in_turn", "fanout", "rx_busy", "rx_wake", "in_poll")


def hops(send: int, in_poll: int, turn: int, read_ns: int, done: int, rx_poll: int, rx_ret: int,
         recv: int) -> tuple[int, ...]:
    """Microseconds per hop: each hop ends at the later of its own mark and
    the previous hop's end, and no later than the receipt (a copy can arrive
    before the fan-out's last copy left), so the hops add up to the latency."""
    marks = [send]
    for t in (in_poll, turn, read_ns, done, rx_poll, rx_ret, recv):
        marks.append(min(max(t, marks[-1]), recv))
    return tuple((b - a) // 1000 for a, b in zip(marks, marks[1:], strict=False))


def join(directory: str) -> tuple[list[tuple[int, tuple[int, ...], int]], int]:
    """(total µs, hops, send ns) for every joined receipt, and the count not joined."""
    ingress: dict[int, tuple[int, ...]] = {}
    for path in glob.glob(os.path.join(directory, "ingress-*.trace")):
        for crc, *marks in read(path):
            ingress[crc] = tuple(marks)
    joined = []
    missing = 0
    for path in glob.glob(os.path.join(directory, "loadgen-*.trace")):
        for crc, send, rx_poll, rx_ret, recv in read(path):
            at = ingress.get(crc)
            if at is None or not (send <= at[2] <= recv):
                missing += 1
                continue
            joined.append(((recv - send) // 1000, hops(send, *at, rx_poll, rx_ret, recv), send))
    return joined, missing


def _pct(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def report(directory: str, worst: int = 10) -> str:
    joined, missing = join(directory)
    if not joined:
        return f"{directory}: nothing joined ({missing} receipts without an ingress record)"
    lines = [f"{directory}: {len(joined)} receipts joined, {missing} not"]
    lines.append("hop        p50 µs   p99 µs   max µs   share of the slowest 1 %")
    joined.sort()
    tail = joined[-max(1, len(joined) // 100):]
    tail_total = sum(t for t, _, _ in tail) or 1
    by_hop: dict[str, list[int]] = defaultdict(list)
    for _, h, _ in joined:
        for name, v in zip(HOPS, h, strict=True):
            by_hop[name].append(v)
    for i, name in enumerate(HOPS):
        share = sum(h[i] for _, h, _ in tail) / tail_total
        vals = by_hop[name]
        lines.append(f"{name:<9} {_pct(vals, .5):>8} {_pct(vals, .99):>8} {max(vals):>8}   {share:6.1%}")
    total = [t for t, _, _ in joined]
    lines.append(f"{'total':<9} {_pct(total, .5):>8} {_pct(total, .99):>8} {max(total):>8}")
    lines.append(f"slowest {worst}: total µs = " + " + ".join(HOPS))
    for t, h, send in joined[-worst:]:
        lines.append(f"  {t:>7} = " + " + ".join(f"{v}" for v in h) + f"   (sent at {send / 1e9:.3f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directories", nargs="+")
    ap.add_argument("--worst", type=int, default=10)
    args = ap.parse_args()
    for d in args.directories:
        print(report(d, args.worst))


if __name__ == "__main__":
    main()
