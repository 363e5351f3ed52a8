"""Prometheus metrics for a whole node, aggregated in the supervisor.

Children are separate processes that cannot share prometheus-client objects,
and prometheus-client's multiprocess mode needs a shared directory of mmapped
files, forbids custom collectors in the children and cannot express the
proxy's C-side counters. Instead every child already publishes a small JSON
status document in the run dir (``relay/status.py``); :class:`NodeCollector`
reads ``supervisor.json`` and every ``status-*.json`` on each scrape and turns
them into metric families. The proxy's counters come live from its steerable
control socket (``STATISTICS``). Values are therefore at most one status
interval (1 s) old.

Counters across child restarts
------------------------------
A restarted child starts its counters from zero. Prometheus would read that
as a counter reset of the node's series, and ``rate()`` would survive it, but
sums across series and ``increase()`` over the restart would not look right;
more importantly the node-level counters would go backwards. So the collector
remembers, per (child, series), the last raw value it saw and an offset. When
the ``pid`` inside a child's status file changes (a new instance wrote it),
every series of that child gets ``offset += last``; when a raw value goes down
without a pid change (the proxy, whose counters have no pid attached), that
series alone gets the same treatment. Exported value = offset + raw. Events
a dead instance counted after the last scrape before it died are lost: only
what some scrape saw is carried over. A restart of the supervisor itself
resets everything, which Prometheus handles as an ordinary counter reset.

Metrics (labels in braces)
--------------------------
Node and children (from ``supervisor.json``):

- ``relay_shards`` gauge: current shard count (``relayctl scale`` changes it).
- ``relay_node_start_time_seconds`` gauge: supervisor start, Unix time.
- ``relay_child_up{child}`` gauge: 1 if the child process is alive.
- ``relay_child_restarts_total{child}`` counter: restarts by the supervisor.
- ``relay_child_uptime_seconds{child}`` gauge: age of the current instance.
- ``relay_child_status_age_seconds{child}`` gauge: seconds since the child
  last wrote its status file (a stale file means a stuck child).

Shards (``shard`` = shard index):

- ``relay_rooms{shard}``, ``relay_devices{shard}``, ``relay_objects{shard}``
  gauges.
- ``relay_clients{shard,visibility}`` gauge, visibility = visible|stealth.
- ``relay_messages_received_total{shard,lane,type}`` counter: decoded client
  messages by protocol type (``rpc``, ``client_pose``, ...).
- ``relay_messages_sent_total{shard,lane,type}`` counter: lane=control counts
  unicasts per recipient (one RPC to a room of m members adds m); lane=transform
  counts PUB broadcasts (one per room snapshot; the fan-out to subscribers
  happens in the proxy, see ``relay_proxy_*``). RPCs the ingress fanned out
  from a shard's route table count for that shard, here, in
  ``relay_bytes_sent_total`` and in ``relay_room_events_total{event="rpc_fanout"}``.
- ``relay_bytes_sent_total{shard,lane}`` counter: payload bytes, control per
  recipient, transform per broadcast.
- ``relay_egress_frames_total{shard}`` / ``relay_egress_recipients_total{shard}``
  counters: control frames handed to the ingress egress, and the recipients
  they carry.
- ``relay_send_blocked_total{shard,socket}`` counter: sends that would have
  blocked (socket = egress|pub); the frame stays queued.
- ``relay_control_queue_depth{shard}`` / ``relay_control_queue_high_water{shard}``
  gauges, ``relay_control_queue_refused_total{shard}`` counter.
- ``relay_pending_broadcasts{shard}`` gauge: latest-only frames waiting.
- ``relay_transform_tokens_bytes{shard}`` gauge: token bucket balance.
- ``relay_transform_refunds_total{shard}``,
  ``relay_transform_skipped_ticks_total{shard}``,
  ``relay_transform_replaced_frames_total{shard}`` counters (shaping).
- ``relay_room_events_total{shard,event}`` counter: nv_writes_applied,
  nv_writes_refused (limits, unmapped target, name over 255 bytes),
  objects_refused (object limit), object_poses_refused (non-members),
  rpc_fanout (RPC recipients), queued_devices_refused (REST client variables
  for one more not-yet-joined device, over max_queued_devices_per_room),
  queued_devices_expired (such devices' variables deleted unclaimed).
- ``relay_bounds_events_total{shard,event}`` counter: bounded room state
  (W13): rooms_evicted_idle, rooms_evicted_at_cap (left memory, state kept
  in the store), rooms_dropped_at_cap (no store: deleted to make room),
  rooms_reloaded (an evicted room used again), evicted_rooms_expired (deleted
  after empty_room_expiry_time while out of memory), evicted_index_overflow
  (an evicted room's expiry no longer tracked). Admission refusals are
  message drops: ``relay_drops_total{reason="room_full"|
  "control_rate_limited"|"device_takeover_refused"}``.
- ``relay_evicted_rooms{shard}`` gauge: evicted rooms whose expiry the shard
  tracks.
- ``relay_rooms_expired_total{shard}``, ``relay_admin_requests_total{shard}``,
  ``relay_journal_records_total{shard}`` counters.
- ``relay_nv_sync_latency_seconds`` histogram, summed over shards: network
  variable set received -> sync handed out.
- ``relay_handovers_total{shard,event}`` counter: hand-over events (waits,
  loaded_after_wait, released, deposed); ``relay_rooms_handed_over_total{shard}``
  counter: rooms the shard handed over (scale, reload, cluster moves).
- ``relay_handover_wait_seconds`` histogram, summed over shards: how long
  messages for a room in hand-over were held before the room was loaded.

Ingress:

- ``relay_ingress_received_total{lane}`` counter: frames read from clients.
- ``relay_unicast_total{result}`` counter: result=sent (handed to the ROUTER,
  retries included) or wouldblock (first attempt deferred to a retry queue).
- ``relay_unicast_retry_recipients`` / ``relay_unicast_retry_queued`` /
  ``relay_unicast_retry_queued_bytes`` gauges: slow readers' queues.
- ``relay_ingress_inflight_messages{lane,shard}`` / ``..._bytes`` gauges:
  pushed to a shard and not yet read by it (bounded by credit).
- ``relay_ingress_route_cache_rooms`` gauge.
- ``relay_control_latency_seconds`` histogram: control message received by the
  ingress -> resulting unicast handed to the client ROUTER.
- ``relay_control_hop_seconds{hop}`` histogram: the same, hop by hop
  (ingress_batch, pipe_to_shard, shard_rules, shard_queue, egress_pipe,
  router_send; relay/histogram.py), for this node's shards.
- ``relay_rpc_fanout_total{path}`` counter: room RPCs the ingress delivered
  itself from a route table (``fast``), and those it sent to the shard
  because the room had a message in flight there (``slow_pending``) or the
  sender was not in the table (``slow_sender``; supervisor/rpc_fanout.py).
- ``relay_rpc_fanout_seconds`` histogram: such an RPC received -> handed to
  the ROUTER for its last recipient.

Every child: ``relay_drops_total{child,reason}`` counter;
``relay_slow_turns_total{child,over}`` counter of loop turns over 10 / 50 /
200 ms (the slowest, with their phases, are in the child's status file:
``slow_turns``, relay/slow_turns.py).

Other children (REST bridge, discovery): ``relay_child_events_total{child,
group,event}`` counter, one series per number in each dict of their status
(e.g. ``{child="rest",group="rest",event="requests"}``).

Proxy (``STATISTICS`` of ``zmq.proxy_steerable``; libzmq counts message
*parts*, so one broadcast ``[topic, payload]`` is two frames):

- ``relay_proxy_frames_total{socket,direction}`` and
  ``relay_proxy_bytes_total{socket,direction}`` counters, socket = xsub (the
  shards' side) | xpub (the clients' side), direction = in|out.
  ``{socket="xpub",direction="out"}`` is what left towards subscribers;
  ``{socket="xpub",direction="in"}`` are subscription messages.
- ``relay_proxy_statistics_up`` gauge: 1 if the last query was answered.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import zmq
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relay.endpoints import NodeEndpoints
from relay.protocol.messages import TRANSFORM_LANE_TYPES, MsgType
from relay.status import read_status

log = logging.getLogger("relay.metrics")

PROXY_TIMEOUT_MS = 250

# Names the shard uses in messages_in that differ from the protocol's names;
# exported labels use the protocol names so in/out series line up.
_RECEIVED_ALIASES = {"hello": "client_hello", "ownership_request": "object_ownership_request"}
_TRANSFORM_NAMES = frozenset(t.name.lower() for t in TRANSFORM_LANE_TYPES)
_PROXY_FIELDS = (
    ("xsub", "in"),
    ("xsub", "out"),
    ("xpub", "in"),
    ("xpub", "out"),
)

Labels = tuple[str, ...]
# (family, part, label values); part is "" for plain samples, "bucket"/"sum"
# for histogram components (bucket label values end with the `le` string).
SeriesKey = tuple[str, str, Labels]

_SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (kind, help, label names)
    "relay_shards": ("gauge", "Current number of shards (changes with relayctl scale).", ()),
    "relay_node_start_time_seconds": ("gauge", "Supervisor start time, Unix seconds.", ()),
    "relay_child_up": ("gauge", "1 if the child process is alive.", ("child",)),
    "relay_store_degraded": (
        "gauge", "1 while the shared store is unreachable (serving from memory).", ("scope",),
    ),
    "relay_cluster_nodes": ("gauge", "Live nodes in this node's cluster view.", ()),
    "relay_cluster_view_generation": ("gauge", "Generation of the cluster view.", ()),
    "relay_store_buffered_records": (
        "gauge", "Change records waiting for the shared store to come back.", ("shard",),
    ),
    "relay_store_records_total": (
        "counter", "Change records the store refused or could not keep, by outcome.", ("shard", "outcome"),
    ),
    "relay_handovers_total": ("counter", "Room hand-over events by kind.", ("shard", "event")),
    "relay_rooms_handed_over_total": (
        "counter", "Rooms this shard handed over to their new owner (scale, reload, cluster).", ("shard",),
    ),
    "relay_handover_wait_seconds": (
        "histogram", "Messages held for a room in hand-over: hold -> released to the loaded room.", (),
    ),
    "relay_child_restarts_total": ("counter", "Child restarts by the supervisor.", ("child",)),
    "relay_child_uptime_seconds": ("gauge", "Age of the child's current instance.", ("child",)),
    "relay_child_status_age_seconds": (
        "gauge", "Seconds since the child last wrote its status file.", ("child",),
    ),
    "relay_rooms": ("gauge", "Rooms held by the shard.", ("shard",)),
    "relay_clients": ("gauge", "Clients in the shard's rooms.", ("shard", "visibility")),
    "relay_devices": ("gauge", "Device id -> client number mappings.", ("shard",)),
    "relay_objects": ("gauge", "Network objects in the shard's rooms.", ("shard",)),
    "relay_messages_received_total": (
        "counter", "Client messages decoded by the shard.", ("shard", "lane", "type"),
    ),
    "relay_messages_sent_total": (
        "counter",
        "Messages sent: control unicasts per recipient, transform PUB broadcasts.",
        ("shard", "lane", "type"),
    ),
    "relay_bytes_sent_total": ("counter", "Payload bytes sent.", ("shard", "lane")),
    "relay_egress_frames_total": (
        "counter", "Control frames handed to the ingress egress.", ("shard",),
    ),
    "relay_egress_recipients_total": (
        "counter", "Recipients carried by control frames handed to the egress.", ("shard",),
    ),
    "relay_send_blocked_total": (
        "counter", "Sends that would block (frame kept queued).", ("shard", "socket"),
    ),
    "relay_control_queue_depth": ("gauge", "Control messages queued.", ("shard",)),
    "relay_control_queue_high_water": (
        "gauge", "Highest control queue depth since the shard started.", ("shard",),
    ),
    "relay_control_queue_refused_total": (
        "counter", "Control messages refused by a full queue.", ("shard",),
    ),
    "relay_pending_broadcasts": ("gauge", "Latest-only broadcasts waiting.", ("shard",)),
    "relay_transform_tokens_bytes": ("gauge", "Transform token bucket balance.", ("shard",)),
    "relay_transform_refunds_total": (
        "counter", "Token refunds after a would-block PUB send.", ("shard",),
    ),
    "relay_transform_skipped_ticks_total": (
        "counter", "Room pose ticks skipped under control backlog.", ("shard",),
    ),
    "relay_transform_replaced_frames_total": (
        "counter", "Pending broadcasts replaced by a newer snapshot.", ("shard",),
    ),
    "relay_rooms_expired_total": ("counter", "Empty rooms expired.", ("shard",)),
    "relay_bounds_events_total": (
        "counter",
        "Bounded room state: rooms evicted from memory, reloaded, expired while evicted, index overflow.",
        ("shard", "event"),
    ),
    "relay_evicted_rooms": ("gauge", "Rooms evicted from memory whose expiry the shard tracks.", ("shard",)),
    "relay_room_events_total": (
        "counter",
        "Room-level events: NV writes applied/refused, objects and object poses refused, RPC recipients,"
        " queued client variables refused/expired.",
        ("shard", "event"),
    ),
    "relay_admin_requests_total": ("counter", "REST bridge requests answered.", ("shard",)),
    "relay_journal_records_total": ("counter", "Durable changes journaled.", ("shard",)),
    "relay_nv_sync_latency_seconds": (
        "histogram", "Network variable set received -> sync handed out.", (),
    ),
    "relay_ingress_received_total": ("counter", "Frames read from clients.", ("lane",)),
    "relay_unicast_total": ("counter", "Unicast send attempts by result.", ("result",)),
    "relay_unicast_retry_recipients": ("gauge", "Recipients with a retry queue.", ()),
    "relay_unicast_retry_queued": ("gauge", "Unicasts waiting in retry queues.", ()),
    "relay_unicast_retry_queued_bytes": ("gauge", "Bytes of unicasts waiting in retry queues.", ()),
    "relay_ingress_inflight_messages": (
        "gauge", "Messages pushed to a shard and not yet read by it.", ("lane", "shard"),
    ),
    "relay_ingress_inflight_bytes": (
        "gauge", "Bytes pushed to a shard and not yet read by it.", ("lane", "shard"),
    ),
    "relay_ingress_route_cache_rooms": ("gauge", "Rooms in the ingress route cache.", ()),
    "relay_control_latency_seconds": (
        "histogram", "Control message received -> unicast handed to the ROUTER.", (),
    ),
    "relay_drops_total": ("counter", "Messages dropped, by reason.", ("child", "reason")),
    "relay_rpc_fanout_total": (
        "counter", "Room RPCs by path: delivered by the ingress, or sent to the shard and why.", ("path",),
    ),
    "relay_rpc_fanout_seconds": (
        "histogram", "Room RPC fanned out by the ingress: received -> last ROUTER send.", (),
    ),
    "relay_control_hop_seconds": (
        "histogram", "Control message time per hop (relay/histogram.py HOPS).", ("hop",),
    ),
    "relay_slow_turns_total": (
        "counter", "Loop turns slower than a threshold (10ms, 50ms, 200ms).", ("child", "over"),
    ),
    "relay_child_events_total": (
        "counter", "Counters of the other children, by group and event.", ("child", "group", "event"),
    ),
    "relay_proxy_frames_total": (
        "counter", "Frames (message parts) through the proxy.", ("socket", "direction"),
    ),
    "relay_proxy_bytes_total": ("counter", "Bytes through the proxy.", ("socket", "direction")),
    "relay_proxy_statistics_up": ("gauge", "1 if the proxy answered STATISTICS.", ()),
}

METRIC_NAMES = tuple(_SPECS)


def type_name(type_id: int | str) -> str:
    """Protocol name of a message type id ("3" or 3 -> "rpc")."""
    try:
        return MsgType(int(type_id)).name.lower()
    except ValueError:
        return f"type_{type_id}"


def _received_lane(name: str) -> str:
    return "transform" if name in _TRANSFORM_NAMES else "control"


class CounterOffsets:
    """Keeps counters monotonic when the process behind them restarts."""

    def __init__(self) -> None:
        self._instance: dict[str, Any] = {}
        # child -> key -> [last raw value, offset]
        self._series: dict[str, dict[SeriesKey, list[float]]] = defaultdict(dict)

    def adjust(
        self, child: str, instance: Any, raw: dict[SeriesKey, float]
    ) -> dict[SeriesKey, float]:
        """Node-lifetime values for every series this child ever reported."""
        series = self._series[child]
        previous = self._instance.get(child)
        if instance is not None:
            if previous is not None and previous != instance:
                for state in series.values():
                    state[1] += state[0]
                    state[0] = 0.0
            self._instance[child] = instance
        for key, value in raw.items():
            state = series.get(key)
            if state is None:
                series[key] = [value, 0.0]
            else:
                if value < state[0]:
                    state[1] += state[0]
                state[0] = value
        # A series the new instance has not produced yet still exports its
        # offset, so it never vanishes or drops to zero.
        return {key: state[1] + state[0] for key, state in series.items()}


class _Scrape:
    """Samples of one scrape, keyed by family then label values."""

    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.hist: dict[str, dict[Labels, dict[str, float]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(float))
        )

    def set(self, name: str, labels: Labels, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.values[name][labels] = float(value)

    def add(self, key: SeriesKey, value: float) -> None:
        name, part, labels = key
        if part == "":
            self.values[name][labels] += value
        elif part == "bucket":
            self.hist[name][labels[:-1]][labels[-1]] += value
        else:
            self.hist[name][labels]["sum"] += value

    def families(self) -> Iterator[Metric]:
        for name, (kind, doc, label_names) in _SPECS.items():
            if kind == "histogram":
                fam = HistogramMetricFamily(name, doc, labels=label_names)
                for labels, parts in sorted(self.hist.get(name, {}).items()):
                    total = parts.pop("sum", 0.0)
                    buckets = sorted(parts.items(), key=lambda kv: float(kv[0]))
                    if buckets:
                        fam.add_metric(list(labels), buckets, total)
                yield fam
                continue
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = cls(name, doc, labels=label_names)
            for labels, value in sorted(self.values.get(name, {}).items()):
                fam.add_metric(list(labels), value)
            yield fam


def _counter(raw: dict[SeriesKey, float], name: str, labels: Labels, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raw[(name, "", labels)] = raw.get((name, "", labels), 0.0) + float(value)


def _histogram(raw: dict[SeriesKey, float], name: str, labels: Labels, hist: Any) -> None:
    """Flatten a LatencyHistogram.to_dict() into bucket and sum series."""
    if not isinstance(hist, dict):
        return
    bounds, cumulative = hist.get("bounds") or [], hist.get("cumulative") or []
    if len(cumulative) != len(bounds) + 1:
        return
    for bound, value in zip([*bounds, float("inf")], cumulative, strict=True):
        raw[(name, "bucket", (*labels, floatToGoString(bound)))] = float(value)
    raw[(name, "sum", labels)] = float(hist.get("sum", 0.0))


def _shard_series(shard: str, st: dict[str, Any], scrape: _Scrape) -> dict[SeriesKey, float]:
    """Gauges go straight into the scrape; counters are returned for offsetting."""
    lab = (shard,)
    for name, field in (
        ("relay_rooms", "rooms"),
        ("relay_devices", "devices"),
        ("relay_objects", "objects"),
        ("relay_control_queue_depth", "ctrl_queue_depth"),
        ("relay_control_queue_high_water", "ctrl_queue_high_water"),
        ("relay_pending_broadcasts", "pending_broadcasts"),
        ("relay_transform_tokens_bytes", "tokens"),
        ("relay_evicted_rooms", "evicted_rooms"),
    ):
        scrape.set(name, lab, st.get(field))
    scrape.set("relay_clients", (shard, "visible"), st.get("visible"))
    scrape.set("relay_clients", (shard, "stealth"), st.get("stealth"))

    raw: dict[SeriesKey, float] = {}
    for name, field in (
        ("relay_control_queue_refused_total", "ctrl_queue_refused"),
        ("relay_transform_refunds_total", "refunds"),
        ("relay_transform_skipped_ticks_total", "skipped_ticks"),
        ("relay_transform_replaced_frames_total", "replaced_frames"),
        ("relay_rooms_expired_total", "rooms_expired"),
        ("relay_admin_requests_total", "admin_requests"),
        ("relay_journal_records_total", "journal_records"),
        ("relay_egress_frames_total", "unicast_frames_sent"),
        ("relay_egress_recipients_total", "unicast_recipients"),
        ("relay_rooms_handed_over_total", "rooms_handed_over"),
    ):
        _counter(raw, name, lab, st.get(field))
    store = st.get("store") or {}
    if store:
        scrape.set("relay_store_degraded", (f"shard-{shard}",), 1 if store.get("degraded") else 0)
        scrape.set("relay_store_buffered_records", lab, store.get("buffered_records"))
        for outcome in ("rejected_writes", "dropped_records", "unpersisted_announced"):
            _counter(raw, "relay_store_records_total", (shard, outcome), store.get(outcome))
    for event, count in (st.get("handovers") or {}).items():
        _counter(raw, "relay_handovers_total", (shard, str(event)), count)
    _counter(raw, "relay_bytes_sent_total", (shard, "control"), st.get("unicast_bytes"))
    _counter(raw, "relay_bytes_sent_total", (shard, "transform"), st.get("broadcast_bytes"))
    _counter(raw, "relay_send_blocked_total", (shard, "egress"), st.get("egress_again"))
    _counter(raw, "relay_send_blocked_total", (shard, "pub"), st.get("broadcast_again"))
    for name, count in (st.get("messages_in") or {}).items():
        name = _RECEIVED_ALIASES.get(name, name)
        _counter(raw, "relay_messages_received_total", (shard, _received_lane(name), name), count)
    for type_id, count in (st.get("unicast_out_by_type") or {}).items():
        _counter(raw, "relay_messages_sent_total", (shard, "control", type_name(type_id)), count)
    for type_id, count in (st.get("broadcast_out_by_type") or {}).items():
        _counter(raw, "relay_messages_sent_total", (shard, "transform", type_name(type_id)), count)
    for event, count in (st.get("room_counters") or {}).items():
        _counter(raw, "relay_room_events_total", (shard, event), count)
    for event, count in (st.get("bounds") or {}).items():
        _counter(raw, "relay_bounds_events_total", (shard, str(event)), count)
    # No shard label: shards share bucket bounds, so the node-wide sum is a
    # valid histogram and keeps the series count independent of --shards.
    _histogram(raw, "relay_nv_sync_latency_seconds", (), st.get("nv_sync_latency"))
    _histogram(raw, "relay_handover_wait_seconds", (), st.get("handover_wait"))
    return raw


def _ingress_series(st: dict[str, Any], scrape: _Scrape) -> dict[SeriesKey, float]:
    scrape.set("relay_unicast_retry_recipients", (), st.get("retry_recipients"))
    scrape.set("relay_unicast_retry_queued", (), st.get("retry_queued"))
    scrape.set("relay_unicast_retry_queued_bytes", (), st.get("retry_queued_bytes"))
    for name, key in (("relay_ingress_inflight_messages", "inflight"), ("relay_ingress_inflight_bytes", "inflight_bytes")):
        for lane, per_shard in (st.get(key) or {}).items():
            for shard, value in enumerate(per_shard if isinstance(per_shard, list) else []):
                scrape.set(name, (str(lane), str(shard)), value)
    scrape.set("relay_ingress_route_cache_rooms", (), st.get("route_cache"))
    counts = st.get("counts") or {}
    raw: dict[SeriesKey, float] = {}
    _counter(raw, "relay_ingress_received_total", ("control",), counts.get("received_control", 0))
    _counter(raw, "relay_ingress_received_total", ("transform",), counts.get("received_transform", 0))
    _counter(raw, "relay_unicast_total", ("sent",), counts.get("unicast_sent", 0))
    _counter(raw, "relay_unicast_total", ("wouldblock",), counts.get("unicast_wouldblock", 0))
    _histogram(raw, "relay_control_latency_seconds", (), st.get("control_latency"))
    for hop, hist in (st.get("control_hops") or {}).items():
        _histogram(raw, "relay_control_hop_seconds", (str(hop),), hist)
    fanout = st.get("rpc_fanout") or {}
    for path in ("fast", "slow_pending", "slow_sender"):
        _counter(raw, "relay_rpc_fanout_total", (path,), fanout.get(path, 0))
    # The ingress sent these for the shard that owns the room: counted with
    # what that shard sent itself, as if it had (the series add up).
    for shard, (recipients, nbytes) in (fanout.get("sent_by_shard") or {}).items():
        _counter(raw, "relay_messages_sent_total", (shard, "control", "rpc"), recipients)
        _counter(raw, "relay_room_events_total", (shard, "rpc_fanout"), recipients)
        _counter(raw, "relay_bytes_sent_total", (shard, "control"), nbytes)
    _histogram(raw, "relay_rpc_fanout_seconds", (), st.get("fanout_latency"))
    return raw


def _other_series(child: str, st: dict[str, Any]) -> dict[SeriesKey, float]:
    """Counter groups of the other children (REST bridge, discovery), generically.

    Each top-level dict of numbers in their status is a group of counters,
    so a child can add one without a change here.
    """
    raw: dict[SeriesKey, float] = {}
    for group, values in st.items():
        if group == "drops" or not isinstance(values, dict):
            continue
        for event, count in values.items():
            _counter(raw, "relay_child_events_total", (child, str(group), str(event)), count)
    return raw


class NodeCollector(Collector):
    """Collects a node's metrics from its run dir on every scrape."""

    def __init__(self, run_dir: str, proxy_timeout_ms: int = PROXY_TIMEOUT_MS) -> None:
        self.endpoints = NodeEndpoints(run_dir)
        self.proxy_timeout_ms = proxy_timeout_ms
        self.offsets = CounterOffsets()
        # Scrapes may arrive concurrently (threaded HTTP server); the offsets
        # and the REQ socket are not thread-safe.
        self._lock = threading.Lock()
        self._ctx: zmq.Context | None = None
        self._req: zmq.Socket | None = None

    # ---------------------------------------------------------------- proxy

    def _proxy_statistics(self) -> list[int] | None:
        """The proxy's 8 counters, or None if it did not answer in time."""
        if self._ctx is None:
            self._ctx = zmq.Context()
        if self._req is None:
            req = self._ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.setsockopt(zmq.SNDTIMEO, self.proxy_timeout_ms)
            req.setsockopt(zmq.RCVTIMEO, self.proxy_timeout_ms)
            # Without IMMEDIATE a request queues on a connection to a dead
            # proxy and is answered by nobody; with it the send times out.
            req.setsockopt(zmq.IMMEDIATE, 1)
            req.connect(self.endpoints.proxy_control)
            self._req = req
        try:
            self._req.send(b"STATISTICS")
            frames = self._req.recv_multipart()
        except zmq.ZMQError:
            # REQ is a strict send/recv state machine: after a lost reply it
            # can never send again, so start over with a fresh socket.
            self._req.close()
            self._req = None
            return None
        if len(frames) != 8 or any(len(f) != 8 for f in frames):
            return None
        return [struct.unpack("=Q", f)[0] for f in frames]

    def close(self) -> None:
        with self._lock:
            if self._req is not None:
                self._req.close()
                self._req = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None

    # -------------------------------------------------------------- collect

    def _status_files(self, children: Iterable[str]) -> dict[str, str]:
        paths = {name: self.endpoints.status_file(name) for name in children}
        prefix = os.path.join(self.endpoints.run_dir, "status-")
        for path in glob.glob(prefix + "*.json"):
            paths.setdefault(path[len(prefix):-len(".json")], path)
        return paths

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            scrape = self._collect_locked()
        yield from scrape.families()

    def _collect_locked(self) -> _Scrape:
        scrape = _Scrape()
        now = time.time()
        state = read_status(self.endpoints.supervisor_file) or {}
        children: dict[str, dict[str, Any]] = state.get("children") or {}
        scrape.set("relay_shards", (), state.get("shards"))
        scrape.set("relay_node_start_time_seconds", (), state.get("started_at"))
        cluster = state.get("cluster") or {}
        if cluster:
            scrape.set("relay_store_degraded", ("membership",), 1 if cluster.get("store_degraded") else 0)
            scrape.set("relay_cluster_nodes", (), len(cluster.get("nodes") or ()))
            scrape.set("relay_cluster_view_generation", (), cluster.get("generation"))
        for name, child in children.items():
            scrape.set("relay_child_up", (name,), 1 if child.get("alive") else 0)
            scrape.set("relay_child_uptime_seconds", (name,), child.get("uptime_s"))
            # The supervisor's own count is already monotonic for its lifetime.
            scrape.set("relay_child_restarts_total", (name,), child.get("restarts"))

        for name, path in self._status_files(children).items():
            st = read_status(path)
            if st is None:
                continue
            try:
                scrape.set("relay_child_status_age_seconds", (name,), max(0.0, now - os.stat(path).st_mtime))
            except OSError:
                pass
            if name.startswith("shard-"):
                raw = _shard_series(name[len("shard-"):], st, scrape)
            elif name == "ingress":
                raw = _ingress_series(st, scrape)
            else:
                raw = _other_series(name, st)
            for reason, count in (st.get("drops") or {}).items():
                _counter(raw, "relay_drops_total", (name, str(reason)), count)
            for over, count in (st.get("slow_turns") or {}).items():
                if over.startswith("over_") and isinstance(count, int):
                    _counter(raw, "relay_slow_turns_total", (name, over[len("over_"):]), count)
            # The pid inside the file ties the values to the instance that
            # wrote them; the supervisor's pid may already be the successor's
            # while the file still holds the predecessor's last values.
            for key, value in self.offsets.adjust(name, st.get("pid"), raw).items():
                scrape.add(key, value)

        stats = self._proxy_statistics()
        scrape.set("relay_proxy_statistics_up", (), 0 if stats is None else 1)
        raw = {}
        if stats is not None:
            for i, (socket_name, direction) in enumerate(_PROXY_FIELDS):
                raw[("relay_proxy_frames_total", "", (socket_name, direction))] = float(stats[2 * i])
                raw[("relay_proxy_bytes_total", "", (socket_name, direction))] = float(stats[2 * i + 1])
        # No pid: a proxy restart is detected by its counters going down. An
        # unanswered query reports the last known values (raw stays empty).
        for key, value in self.offsets.adjust("proxy:statistics", None, raw).items():
            scrape.add(key, value)
        return scrape
