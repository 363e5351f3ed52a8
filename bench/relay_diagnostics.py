"""What a relay node says about its own control path, read after a benchmark point.

The ingress publishes the per-hop breakdown of control latency
(``control_hops``: ingress receive -> shard read -> rules done -> shard send
-> egress receive -> ROUTER send, relay/histogram.py) and every child its
slowest loop turns with where their time went (``slow_turns``,
relay/slow_turns.py). Room RPCs the ingress fanned out itself
(supervisor/rpc_fanout.py) take none of those hops: their receive -> last
ROUTER send time and how many took which path are ``fanout``. All are
cumulative since the node started, which in ``bench.run`` is just before the
point's warm-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

__all__ = ["collect", "hop_line", "quantile"]


def quantile(hist: dict[str, Any], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile ``q``; max for the +Inf bucket."""
    count = hist.get("count", 0)
    if not count:
        return None
    target = q * count
    for bound, cumulative in zip(hist["bounds"], hist["cumulative"], strict=False):
        if cumulative >= target:
            return min(bound, hist.get("max", bound)) * 1000
    return hist.get("max", float("inf")) * 1000


def _read(path: Path) -> dict[str, Any]:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def collect(run_dir: Path, window_start: float | None = None) -> dict[str, Any]:
    """``window_start`` (wall time): marks maxima that fell in the warm-up."""
    ingress = _read(run_dir / "status-ingress.json")
    hops = {
        name: {"p50_ms": quantile(h, 0.5), "p99_ms": quantile(h, 0.99), "max_ms": h.get("max", 0.0) * 1000,
               "count": h.get("count", 0), "max_at": h.get("max_at"),
               "max_in_warmup": bool(window_start and h.get("max_at") and h["max_at"] < window_start)}
        for name, h in (ingress.get("control_hops") or {}).items()
    }
    fan = ingress.get("fanout_latency") or {}
    paths = ingress.get("rpc_fanout") or {}
    fanout = {"p50_ms": quantile(fan, 0.5), "p99_ms": quantile(fan, 0.99), "max_ms": fan.get("max", 0.0) * 1000,
              "count": fan.get("count", 0), "max_at": fan.get("max_at"),
              **{k: paths.get(k, 0) for k in ("fast", "slow_pending", "slow_sender")}}
    turns: dict[str, Any] = {}
    for path in sorted(run_dir.glob("status-*.json")):
        slow = _read(path).get("slow_turns")
        if slow:
            child = path.stem.removeprefix("status-")
            turns[child] = {**{k: v for k, v in slow.items() if k != "worst"}, "worst": slow.get("worst", [])[:3]}
    return {"hops": hops, "fanout": fanout, "slow_turns": turns}


def hop_line(diag: dict[str, Any]) -> str:
    """One line: p50/p99/max per hop, and the worst turn of any child."""
    parts = []
    for name, h in diag.get("hops", {}).items():
        if h["count"]:
            warm = " (max in warm-up)" if h.get("max_in_warmup") else ""
            parts.append(f"{name} {h['p50_ms']:.2f}/{h['p99_ms']:.2f}/{h['max_ms']:.1f}{warm}")
    fan = diag.get("fanout") or {}
    if fan.get("count"):
        parts.append(f"ingress RPC fan-out {fan['p50_ms']:.2f}/{fan['p99_ms']:.2f}/{fan['max_ms']:.1f} "
                     f"({fan['fast']} fast, {fan['slow_pending']} behind a message in flight, "
                     f"{fan['slow_sender']} new sender)")
    worst = max(((child, t["worst"][0]) for child, t in diag.get("slow_turns", {}).items() if t["worst"]),
                key=lambda item: item[1]["ms"], default=None)
    if worst is not None:
        child, turn = worst
        parts.append(f"worst turn {child} {turn['ms']:.0f} ms {turn['phases']} gc {turn['gc_ms']} ms")
    return "hops p50/p99/max ms: " + "; ".join(parts) if parts else "no relay diagnostics"
