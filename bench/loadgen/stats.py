"""Merging worker results into one summary (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .config import LoadConfig


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _ms(values_us: list[int]) -> dict[str, Any]:
    values = sorted(values_us)
    out: dict[str, Any] = {"n": len(values)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        v = percentile(values, q)
        out[name] = None if v is None else v / 1000.0
    # 101-point quantile curve for CDF plots (ms)
    if values:
        out["cdf"] = [values[min(len(values) - 1, int(i / 100 * (len(values) - 1)))] / 1000.0 for i in range(101)]
    else:
        out["cdf"] = []
    return out


def merge(cfg: LoadConfig, results: list[dict[str, Any]], window: float) -> dict[str, Any]:
    """One summary dict for a run from the per-worker result dicts."""
    members: dict[int, int] = {}
    nv_max: dict[int, list[int]] = {}
    receipts: dict[int, int] = {}
    nv_writes: dict[int, int] = {}
    rpc_sent: list[tuple[int, int]] = []
    rpc_lat: list[int] = []
    nv_lat: list[int] = []
    fresh: list[int] = []
    lag: list[int] = []
    join_ms: list[int] = []
    ctl_by_type: dict[int, int] = {}
    tot: dict[str, float] = {}
    min_incomplete = 1 << 30
    for r in results:
        min_incomplete = min(min_incomplete, r["rp_min_count"])
        for room, k in r["members_at_ws"].items():
            members[room] = members.get(room, 0) + k
        for room, lst in r["nv_max"].items():
            nv_max.setdefault(room, []).extend(lst)
        for key, k in r["rpc_receipts"].items():
            receipts[key] = receipts.get(key, 0) + k
        nv_writes.update(r["nv_writes"])
        rpc_sent.extend(r["rpc_sent"])
        rpc_lat.extend(r["rpc_lat_us"])
        nv_lat.extend(r["nv_lat_us"])
        fresh.extend(r["fresh_us"])
        lag.extend(r["lag_us"])
        join_ms.extend(r["join_ms"])
        for t, k in r["ctl_by_type"].items():
            ctl_by_type[t] = ctl_by_type.get(t, 0) + k
        for name in (
            "clients",
            "joined",
            "subs",
            "poses_sent_window",
            "poses_dropped_hwm",
            "poses_skipped",
            "poses_dropped_hwm_window",
            "poses_skipped_window",
            "rp_recv",
            "rp_complete",
            "rp_other_topic",
            "ctl_sent_window",
            "recv_window",
            "cpu_window_s",
            "cpu_total_s",
            "sweep_drains",
            "loops",
        ):
            tot[name] = tot.get(name, 0) + r[name]

    # RPC: every RPC must reach every member (sender included).
    rpc_expected = sum(members.get(room, 0) for _, room in rpc_sent)
    rpc_got = 0
    rpc_dup = 0
    for key, room in rpc_sent:
        got = receipts.get(key, 0)
        want = members.get(room, 0)
        rpc_got += min(got, want)
        rpc_dup += max(0, got - want)
    # NV: latest-wins; write s is lost at member m only if m never saw any
    # value with seq >= s (nv_max[m] < s).
    nv_expected = nv_lost = 0
    for room, writes in nv_writes.items():
        for seen in nv_max.get(room, []):
            nv_expected += writes
            nv_lost += max(0, writes - seen)
    nv_direct = len(nv_lat)

    expected_rp = window * cfg.broadcast_hz * tot.get("subs", 0)
    expected_poses = window * cfg.pose_hz * tot.get("joined", 0)
    rpc = _ms(rpc_lat)
    # p99 over every expected delivery, a lost RPC counting as infinitely
    # late: None when more than 1 % were lost (the SLO then fails).
    rank = math.ceil(0.99 * rpc_expected)
    rpc_sorted = sorted(rpc_lat)
    rpc["p99_incl_loss"] = (
        rpc_sorted[rank - 1] / 1000.0 if rpc_expected and rank <= len(rpc_sorted) else None
    )
    rpc.update(
        sent=len(rpc_sent),
        expected=rpc_expected,
        received=rpc_got,
        duplicates=rpc_dup,
        loss_pct=100.0 * (rpc_expected - rpc_got) / rpc_expected if rpc_expected else None,
    )
    nv = _ms(nv_lat)
    nv.update(
        writes=sum(nv_writes.values()),
        expected=nv_expected,
        lost=nv_lost,
        superseded=max(0, nv_expected - nv_lost - nv_direct),
        loss_pct=100.0 * nv_lost / nv_expected if nv_expected else None,
    )
    msgs_window = tot.get("poses_sent_window", 0) + tot.get("ctl_sent_window", 0) + tot.get(
        "recv_window", 0
    )
    lag_sorted = sorted(lag)
    join_sorted = sorted(join_ms)
    return {
        "config": cfg.to_dict(),
        "window_s": window,
        "clients": int(tot.get("clients", 0)),
        "joined": int(tot.get("joined", 0)),
        "join_ms_p50": percentile(join_sorted, 50),
        "join_ms_max": percentile(join_sorted, 100),
        "subs": int(tot.get("subs", 0)),
        "room_pose": {
            "received": int(tot.get("rp_recv", 0)),
            "expected": expected_rp,
            "ratio": tot.get("rp_recv", 0) / expected_rp if expected_rp else None,
            "complete": int(tot.get("rp_complete", 0)),
            "completeness": (tot["rp_complete"] / tot["rp_recv"]) if tot.get("rp_recv") else None,
            "other_topic": int(tot.get("rp_other_topic", 0)),
            # fewest entries seen in an incomplete room pose (None: all complete)
            "min_incomplete_count": min_incomplete if min_incomplete < (1 << 30) else None,
        },
        "freshness": _ms(fresh),
        "rpc": rpc,
        "nv": nv,
        "poses": {
            "sent_window": int(tot.get("poses_sent_window", 0)),
            "expected_window": expected_poses,
            "send_ratio": tot.get("poses_sent_window", 0) / expected_poses if expected_poses else None,
            "dropped_hwm": int(tot.get("poses_dropped_hwm", 0)),
            "skipped_late": int(tot.get("poses_skipped", 0)),
            "dropped_hwm_window": int(tot.get("poses_dropped_hwm_window", 0)),
            "skipped_late_window": int(tot.get("poses_skipped_window", 0)),
            "lag_ms_p99": (percentile(lag_sorted, 99) or 0.0) / 1000.0,
            "lag_ms_max": (percentile(lag_sorted, 100) or 0.0) / 1000.0,
        },
        "ctl_by_type": {str(k): v for k, v in sorted(ctl_by_type.items())},
        "messages_window": int(msgs_window),
        "loadgen": {
            "workers": len(results),
            "cpu_window_s": tot.get("cpu_window_s", 0.0),
            "cpu_total_s": tot.get("cpu_total_s", 0.0),
            "cpu_util_window": tot.get("cpu_window_s", 0.0) / window if window else None,
            "loops": int(tot.get("loops", 0)),
            "sweep_drains": int(tot.get("sweep_drains", 0)),
            "threads": [t for r in results for t in r.get("threads", [])],
        },
    }
