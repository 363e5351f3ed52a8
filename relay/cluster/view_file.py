"""How children learn the cluster view: a small JSON file in the run dir.

The supervisor's cluster agent rewrites ``view.json`` atomically whenever the
view changes (and the store's health with it); children look at its mtime at
most every ``check_interval`` seconds, which costs one ``stat`` and survives
child restarts without any hand-shake: a restarted child reads the file.
"""

from __future__ import annotations

import os
import time

import orjson

from relay.cluster.view import ClusterView, local_view
from relay.status import write_status

__all__ = ["ViewFile", "view_path", "write_view"]


def view_path(run_dir: str) -> str:
    return os.path.join(run_dir, "view.json")


def write_view(run_dir: str, node_id: str, epoch: int, number: int, view: ClusterView, *,
               store_degraded: bool, detail: str = "", slots: list[int] | None = None) -> None:
    """``slots``: this node's shard layout, the incarnation that serves each
    slot (a rolling restart replaces one slot's worker by a new incarnation);
    its length is this node's shard count in ``view``."""
    data = orjson.loads(view.to_bytes())
    local = view.node(node_id)
    if slots is None:
        slots = [0] * (local.shards if local is not None else 1)
    data.update({"local": {"node_id": node_id, "epoch": epoch, "number": number, "slots": slots},
                 "store_degraded": store_degraded,
                 "detail": detail, "written_at": time.time()})
    write_status(view_path(run_dir), data)


class ViewFile:
    """The child side: the current view, re-read when the file changes."""

    def __init__(self, run_dir: str, check_interval: float = 0.1, *, shards: int | None = None) -> None:
        self.path = view_path(run_dir)
        self.check_interval = check_interval
        self._mtime = -1
        self._next_check = 0.0
        self.node_id = ""
        self.epoch = 0
        self.number = 0
        self.store_degraded = False
        self.view: ClusterView | None = None
        self.slots: list[int] = []
        self._load()
        if self.view is None:
            if shards is None:
                raise FileNotFoundError(f"no cluster view at {self.path}")
            # A child started without a supervisor (tools, unit tests): a node
            # alone; a view written later is picked up by poll().
            self.view = local_view("", shards)
            self.slots = [0] * shards

    def _load(self) -> bool:
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime:
                return False
            with open(self.path, "rb") as fh:
                raw = fh.read()
            data = orjson.loads(raw)
            view = ClusterView.from_bytes(raw)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False
        self._mtime = mtime
        self.node_id = str(data["local"]["node_id"])
        self.epoch = int(data["local"]["epoch"])
        self.number = int(data["local"].get("number", 0))
        self.store_degraded = bool(data.get("store_degraded", False))
        local = view.node(self.node_id)
        default = [0] * (local.shards if local is not None else 1)
        slots = [int(i) for i in data["local"].get("slots", default)]
        changed = view != self.view or slots != self.slots
        self.view = view
        self.slots = slots
        return changed

    def poll(self, now: float | None = None) -> ClusterView | None:
        """The new view if it (or this node's slot layout) changed since the last call, else None."""
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return None
        self._next_check = now + self.check_interval
        return self.view if self._load() else None
