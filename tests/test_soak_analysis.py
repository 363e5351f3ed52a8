"""bench/soak.py's verdicts on synthetic samples (the soak itself runs in `make soak`)."""

from __future__ import annotations

from bench.soak import RSS_SLOPE_LIMIT_KIB_PER_MIN, Ledger, seq_of, slope_per_min, trends


def rows(minutes: int, leak_kib_per_min: float, restart_at: float | None = None) -> list[dict]:
    out = []
    for i in range(minutes * 6):
        t = i * 10.0
        pid = 200 if restart_at is not None and t >= restart_at else 100
        born = restart_at if pid == 200 else 0.0
        rss = 50_000 + leak_kib_per_min * (t - born) / 60 + (i % 3) * 100  # a little noise
        row = {"t_s": t}
        for name in ("supervisor", "ingress", "proxy", "rest", "shard-0"):
            row[f"{name}_pid"] = pid if name == "shard-0" else 10
            row[f"{name}_rss_kib"] = rss if name == "shard-0" else 40_000
            row[f"{name}_fds"] = 30
        out.append(row)
    return out


def test_slope_of_a_line() -> None:
    assert slope_per_min([(0.0, 0.0), (60.0, 5.0), (120.0, 10.0)]) == 5.0


def test_a_leak_is_flagged_and_a_flat_series_is_not() -> None:
    leaking = {e["process"]: e for e in trends(rows(10, 2048.0), warmup_s=120.0, shards=1)}
    assert leaking["shard-0"]["rss_kib_per_min"] > RSS_SLOPE_LIMIT_KIB_PER_MIN
    assert leaking["ingress"]["rss_kib_per_min"] == 0.0
    flat = {e["process"]: e for e in trends(rows(10, 0.0), warmup_s=120.0, shards=1)}
    assert abs(flat["shard-0"]["rss_kib_per_min"]) < 50


def test_a_killed_process_and_its_successor_are_separate_series() -> None:
    # The successor starts small again: across the kill this is no trend at all.
    series = [e for e in trends(rows(12, 300.0, restart_at=360.0), warmup_s=60.0, shards=1)
              if e["process"] == "shard-0"]
    assert [e["pid"] for e in series] == [100, 200]
    assert all(abs(e["rss_kib_per_min"] - 300.0) < 60 for e in series)


def test_ledger_keeps_the_highest_acknowledged_sequence() -> None:
    ledger = Ledger()
    for value in ("seq:3", "seq:7", "seq:5", "junk", None):
        ledger.ack(("room", "global", "g0"), value)
    assert ledger.acked == {("room", "global", "g0"): 7}
    assert seq_of("seq:12") == 12 and seq_of("12") == -1
