"""The node as its status files describe it: supervisor state, shard counters and rates.

Every child publishes a small JSON document in the run dir once a second
(``relay/status.py``); the supervisor publishes its children's pids, uptimes
and restarts. The console's node view reads them here instead of asking each
child, so a stalled shard still shows its last known numbers.

Rates come from two successive snapshots of a shard's file and the file's
modification times, so they describe the shard's own last second whatever the
number of consoles polling, and a restarted shard (counters back to zero)
shows no rate for a second instead of a negative one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from relay.endpoints import NodeEndpoints
from relay.status import read_status

__all__ = ["LOCAL_NODE", "NodeStatusReader", "StatusSnapshot"]

# What a node without a configured id calls itself in the console.
LOCAL_NODE = "local"

# Counters whose per-second rate the node view shows (a dict counter is totalled).
RATE_COUNTERS = ("messages_in", "unicast_recipients", "broadcasts_sent")
# Status files are rewritten every second; older than this, a rate is history.
STALE_AFTER_S = 5.0


@dataclass(slots=True)
class StatusSnapshot:
    mtime: float
    data: dict[str, Any]


def _counter(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if isinstance(value, dict):  # per-type counters: the total
        return float(sum(v for v in value.values() if isinstance(v, int | float)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass
class _History:
    older: StatusSnapshot | None = None
    newer: StatusSnapshot | None = None

    def add(self, snap: StatusSnapshot) -> None:
        if self.newer is None or snap.mtime > self.newer.mtime:
            self.older, self.newer = self.newer, snap


@dataclass
class NodeStatusReader:
    """Reads one node's run dir; remembers the previous shard snapshots for rates."""

    run_dir: str | None
    _histories: dict[str, _History] = field(default_factory=dict)

    def _read(self, path: str) -> StatusSnapshot | None:
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        data = read_status(path)
        return StatusSnapshot(mtime, data) if isinstance(data, dict) else None

    def supervisor(self) -> dict[str, Any] | None:
        if not self.run_dir:
            return None
        snap = self._read(NodeEndpoints(self.run_dir).supervisor_file)
        return snap.data if snap else None

    def node_id(self, shards: int) -> str:
        """This node's id as its status documents state it, else ``"local"``."""
        candidates = [self.supervisor() or {}]
        if self.run_dir:
            endpoints = NodeEndpoints(self.run_dir)
            candidates += [read_status(endpoints.status_file(f"shard-{k}")) or {} for k in range(shards)]
        for document in candidates:
            value = document.get("node_id") or (document.get("cluster") or {}).get("node_id")
            if isinstance(value, str) and value:
                return value
        return LOCAL_NODE

    def child(self, name: str) -> StatusSnapshot | None:
        """The child's latest status (and, for rates, remember it)."""
        if not self.run_dir:
            return None
        snap = self._read(NodeEndpoints(self.run_dir).status_file(name))
        if snap is not None:
            self._histories.setdefault(name, _History()).add(snap)
        return snap

    def rates(self, name: str) -> dict[str, float | None]:
        """Per-second rates of ``RATE_COUNTERS`` between the child's last two snapshots."""
        history = self._histories.get(name)
        rates: dict[str, float | None] = dict.fromkeys(RATE_COUNTERS)
        if history is None or history.older is None or history.newer is None:
            return rates
        dt = history.newer.mtime - history.older.mtime
        # A gap of more than a few status periods means the shard stalled or
        # the console was away: that average would describe nothing current.
        stale = time.time() - history.newer.mtime > STALE_AFTER_S
        if stale or not 0 < dt <= STALE_AFTER_S:
            return rates
        if history.newer.data.get("pid") != history.older.data.get("pid"):
            return rates  # restarted in between: counters started again
        for name_ in RATE_COUNTERS:
            new, old = _counter(history.newer.data, name_), _counter(history.older.data, name_)
            if new is not None and old is not None and new >= old:
                rates[name_] = round((new - old) / dt, 1)
        return rates

    @staticmethod
    def age(snap: StatusSnapshot | None) -> float | None:
        return round(max(0.0, time.time() - snap.mtime), 2) if snap is not None else None
