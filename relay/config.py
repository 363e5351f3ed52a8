"""Relay configuration: one immutable value resolved from four layers.

One job, one file (about 640 lines): the schema of every key, the four
layers that feed it and their validation belong together; splitting them
would scatter each key over several files.

Precedence, highest first: command line > ``RELAY_*`` environment variables >
TOML file (``--config FILE`` or ``RELAY_CONFIG``) > built-in defaults.

The keys shared with the reference server (BEHAVIOR §14) keep its names and
defaults, so an existing reference config file works unchanged; the relay's
own keys sit next to them in the same flat namespace.

Every problem found while resolving (a bad type in any layer, a value out of
range, a cross-field conflict) is collected and reported at once in a single
:class:`ConfigError`, so an operator fixes a config file in one round trip.

The command line is parsed by ``supervisor/cli_args.py`` (argparse lives
with ``relayctl``); this module takes its result as a plain mapping of config
keys, like the other layers.

Why hand-written rather than pydantic-settings (issue #14): the behaviour
that must stay exactly as it is does not fit a settings library's model
without about as much glue as this module has code --

- one report with every error of every layer, each naming where the bad value
  came from (``RELAY_X``, the file, the command line); a settings library
  merges its sources before validating, so its errors name fields, and a
  source it cannot parse ends the resolution;
- strict types per source: a TOML ``true`` or ``5555.0`` is not a port, while
  the environment's text is parsed (lax coercion turns ``5555.0`` into an int;
  strict mode would refuse the environment's text as well);
- reference-compatible aliases with per-layer rules: ``dealer_port`` must equal
  ``control_port`` within one file or environment, but ``--control-port``
  simply wins on the command line;
- ``transform_port`` follows ``control_port`` + 2 unless some layer set it;
- unknown TOML keys are warnings (reference files carry keys we do not use),
  unknown keys in an internal hand-over are errors;
- the reference's exact flag names, which are not derived from field names
  (``--no-server-discovery``, ``--log-json``).

Adding a field: one line in :class:`RelayConfig` (type and default), one
validation line (usually adding the key to one of the ``_*_KEYS`` tuples
below), and one flag line in ``supervisor/cli_args.py`` if it gets a flag.
The environment variable ``RELAY_<KEY>`` and the TOML key come for free.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "ALIASES",
    "ConfigError",
    "ENV_PREFIX",
    "FIELD_TYPES",
    "INPUT_KEYS",
    "LOG_LEVELS",
    "RelayConfig",
    "config_from_mapping",
    "parse_server_version",
    "resolve_config",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "RELAY_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_SHARDS = 64


class ConfigError(ValueError):
    """Invalid configuration; ``errors`` holds every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def _default_shards() -> int:
    # Clamped so the default is always valid, even on hosts with > 64 CPUs.
    return max(1, min(os.cpu_count() or 1, MAX_SHARDS))


@dataclass(frozen=True)
class RelayConfig:
    # --- keys shared with the reference server (BEHAVIOR §14) ---
    control_port: int = 5555
    transform_port: int = 5557
    pub_port: int = 5556
    server_discovery_port: int = 49999
    rest_api_port: int = 8800
    server_name: str = "STYLY-NetSync-Server"
    enable_server_discovery: bool = True
    idle_broadcast_interval: float = 2.0
    transform_broadcast_rate: float = 10.0
    client_timeout: float = 5.0
    cleanup_interval: float = 1.0
    device_id_expiry_time: float = 86400.0
    empty_room_expiry_time: float = 86400.0
    status_log_interval: float = 10.0
    # Accepted and validated so reference config files load unchanged, but
    # not read: the relay's loops wait for their next deadline instead of a
    # fixed sleep or poll timeout (which is what bounded the reference's
    # unicast latency, W8).
    main_loop_sleep: float = 0.02
    poll_timeout: int = 100  # milliseconds
    max_global_vars: int = 100
    max_client_vars: int = 100
    max_var_name_length: int = 64
    max_var_value_length: int = 1024
    nv_flush_interval: float = 0.05
    nv_monitor_window_size: float = 1.0
    nv_monitor_threshold: int = 200
    max_virtual_transforms: int = 50
    # Reference keys the reference itself never uses (BEHAVIOR §14); accepted
    # for compatibility, read by nothing here either.
    pub_queue_maxsize: int = 10000
    delta_ring_size: int = 10000
    log_dir: str = ""
    log_level_console: str = "INFO"
    log_json_console: bool = False
    # loguru rule strings in the reference; accepted, and `relayctl start`
    # warns that the relay's own rotation (10 MB x 20 files) applies instead.
    log_rotation: str = ""
    log_retention: str = ""
    # --- the relay's own keys ---
    shards: int = field(default_factory=_default_shards)
    host: str = "0.0.0.0"
    run_dir: str = ""  # "" = the supervisor creates a fresh temporary directory
    data_dir: str = "./data"  # "" = in memory only: nothing survives a restart
    metrics_port: int = 9100  # 0 = metrics endpoint disabled
    # Loopback unless configured: the endpoint has no authentication.
    metrics_host: str = "127.0.0.1"
    rest_host: str = "127.0.0.1"
    # Kept out of repr so logging the config never leaks the secret.
    rest_token: str = field(default="", repr=False)
    # A file holding the token (compose/Kubernetes secrets); used when
    # rest_token is empty. REST beyond loopback needs one of the two.
    rest_token_file: str = ""
    # Comma-separated origins allowed by CORS; "*" = any origin (the
    # reference's rule). Empty: no CORS headers at all.
    rest_cors_origins: str = ""
    server_version: str = "0.17.5"
    # Per shard; 0 = unlimited. Cost = room pose bytes x room members, so this
    # is the fan-out bandwidth one shard may put on the wire (~480 Mbit/s).
    transform_budget_bytes_per_sec: int = 60_000_000
    # The ingress reads the transform port once per broadcast tick, this many
    # seconds before it (relay/tick_grid.py), and pushes what it read at once
    # (0 = whenever poses arrive). Poses become room-pose broadcasts only at
    # the tick, so a pose read then is in the same broadcast as one read on
    # arrival, and one ingress and shard wake-up covers the period. The
    # control port is always read.
    transform_read_lead: float = 0.005
    ctrl_drain_batch: int = 256
    # The ingress fans a room's RPCs out itself, from a route table the
    # owning shard keeps current, while nothing else of the room is in flight
    # to that shard (supervisor/rpc_fanout.py): one process crossing per RPC
    # instead of three. Shards publish no tables (so every RPC goes through
    # them) when this is off or max_control_rate_per_client is set.
    rpc_fast_path: bool = True
    ctrl_queue_max: int = 100_000
    ctrl_backlog_watermark: int = 5_000
    # Floor for room poses under control backlog; not checked against
    # transform_broadcast_rate because the reference accepts rates down to
    # 0.5 Hz -- users of it apply min(floor, rate).
    transform_min_rate_hz: float = 1.0
    device_sweep_interval: float = 60.0
    mapping_throttle_interval: float = 0.5
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    # A child that fails this many times in a row at start (exits before it
    # is ready, or within 10 s) stops the node with one error naming the cause.
    max_start_failures: int = 5
    rest_request_timeout: float = 2.0
    rest_max_body_bytes: int = 65536
    object_idle_broadcast_interval: float = 2.0
    # Bounds against unbounded growth (W13): a flood of new room ids or object
    # ids is refused and counted instead of eating memory. Rooms count while
    # in memory: empty ones make way (room_idle_evict_seconds below).
    max_rooms_per_shard: int = 10_000
    max_objects_per_room: int = 10_000
    # An empty room with nothing pending leaves the shard's memory after this
    # long without a touch (its durable state stays in the store and reloads
    # on the next message or REST call); least recently used first as soon as
    # max_rooms_per_shard is reached. 0 = only at the cap. Needs a store
    # (data_dir or store): without one, a room is dropped only at the cap.
    room_idle_evict_seconds: float = 60.0
    # Evicted rooms whose empty-room expiry the shard keeps counting down
    # (one small entry each); past it the oldest entry is forgotten (counted)
    # and that room's state stays stored until the room is touched again.
    max_evicted_rooms_per_shard: int = 100_000
    # REST client variables of devices without a number yet: at most this
    # many such devices per room (409 beyond), and deleted once no REST write
    # has reached them for queued_client_vars_expiry_time seconds.
    max_queued_devices_per_room: int = 1_000
    queued_client_vars_expiry_time: float = 86400.0
    # Admission control, off by default (README "Bounds"). Members per room
    # (0 = unlimited; a client beyond it gets no number).
    max_clients_per_room: int = 0
    # Control messages per second per control connection, burst = 1 s worth;
    # excess is dropped (0 = off).
    max_control_rate_per_client: float = 0.0
    # W14: refuse a new control connection for a device whose current one was
    # heard from within client_timeout. Off: a client whose socket reconnects
    # (network blip, node death) legitimately arrives with a new identity.
    guard_device_takeover: bool = False
    # --- cluster ---
    # "" = SQLite per shard in data_dir (one node, nothing to start);
    # redis://host:port/db = rooms and membership in a shared Valkey/Redis.
    store: str = ""
    # Unique among the live nodes of a cluster; "" = this host's name.
    node_id: str = ""
    # Address other nodes reach this node's internal endpoints on; "auto" =
    # the address this host's name resolves to (a container's IP in compose).
    advertise_host: str = "127.0.0.1"
    # A room's lease outlives a dead owner by at most this; renewed every ttl/3.
    lease_ttl: float = 4.0
    # A node that stops refreshing its registration leaves the view after this.
    membership_ttl: float = 3.0
    # Change records a shard buffers while the shared store is unreachable.
    store_buffer_max_records: int = 200_000
    # Node links (cluster mode): base of the inter-node ports on the advertise
    # address (egress, cluster XSUB, then per shard: control inlet,
    # transform inlet, admin), and the CURVE key pair every member shares.
    cluster_port: int = 7500
    cluster_key_file: str = ""
    # ZMQ_MAXMSGSIZE of every client-facing socket: a bigger frame makes
    # libzmq disconnect the peer before buffering it. The largest legitimate
    # v8 frame is an RPC whose argumentsJson fills its str16: 1 type + 2
    # sender + 256 deviceId + 1 + 255 x 2 targets + 256 functionName + 2 +
    # 65 535 = 66 563 bytes (a NV set is at most 66 054; a pose with 255
    # virtual transforms 2 853; a 1024-character value is only 4 KiB). 256 KiB
    # leaves about 4x room and caps what one frame can cost.
    max_message_bytes: int = 262_144

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (all values are scalars)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayConfig:
        """Rebuild a config handed over by :meth:`to_dict`, re-validating it.

        Unknown keys are an error here (unlike in a TOML file): this is an
        internal hand-over, so a mismatch means a bug, not a user typo.
        """
        return config_from_mapping(data)

    @property
    def server_version_tuple(self) -> tuple[int, int, int]:
        return parse_server_version(self.server_version)


# With postponed annotations field.type is the annotation's text.
_TYPE_NAMES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_FIELD_TYPES: dict[str, type] = {
    f.name: (_TYPE_NAMES[f.type] if isinstance(f.type, str) else f.type)
    for f in dataclasses.fields(RelayConfig)
}
# Read-only views for the command-line layer, which derives flag types from them.
FIELD_TYPES: Mapping[str, type] = MappingProxyType(_FIELD_TYPES)

# Keys that are accepted on input but are not fields of their own.
_ALIASES = {"dealer_port": "control_port"}
ALIASES: Mapping[str, str] = MappingProxyType(_ALIASES)
# Every key a layer may carry: the fields, then the aliases.
INPUT_KEYS: tuple[str, ...] = (*_FIELD_TYPES, *_ALIASES)


# ---------------------------------------------------------------------------
# server version


_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?$")
_DIGITS_RE = re.compile(r"^\d+$")


def parse_server_version(text: str) -> tuple[int, int, int]:
    """``"major.minor.patch"`` -> the three bytes of MSG_DEVICE_ID_MAPPING.

    Lenient like the wire rule (PROTOCOL §9): a ``-pre``/``+build`` suffix is
    ignored, missing parts are 0, parts beyond the third are ignored, each
    part is clamped to 0..255, and anything unparsable gives (0, 0, 0) --
    which Unity treats as "do not check".
    """
    if not isinstance(text, str):
        return (0, 0, 0)
    base = text.strip().split("-", 1)[0].split("+", 1)[0]
    parts = base.split(".")
    nums: list[int] = []
    for part in parts[:3]:
        if not _DIGITS_RE.match(part):
            return (0, 0, 0)
        nums.append(min(int(part), 255))
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


# ---------------------------------------------------------------------------
# value coercion per source


_TYPE_WORDS = {
    bool: "a boolean (1/0/true/false/yes/no/on/off)",
    int: "an integer",
    float: "a number",
    str: "a string",
}
# Marks a value that failed its type check (None is not usable: it means "unset").
_INVALID = object()


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _coerce_typed(key: str, value: Any, source: str, errors: list[str]) -> Any:
    """Check a value that already has a Python type (TOML, mapping, command line).

    Returns ``_INVALID`` (and records an error) when the type does not fit.
    """
    want = _FIELD_TYPES[_ALIASES.get(key, key)]
    # bool is an int subclass; a TOML ``true`` for a port is a mistake.
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif want is str:
        if isinstance(value, str):
            return value
    errors.append(
        f"{source}: {key} must be {_TYPE_WORDS[want]}, got {type(value).__name__} {value!r}"
    )
    return _INVALID


def _coerce_text(key: str, text: str, source: str, errors: list[str]) -> Any:
    """Parse an environment variable's text by the field's type."""
    want = _FIELD_TYPES[_ALIASES.get(key, key)]
    if want is str:
        return text
    stripped = text.strip()
    try:
        if want is bool:
            word = stripped.lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError
        if want is int:
            return int(stripped, 10)
        if want is float:
            return float(stripped)
    except ValueError:
        pass
    errors.append(f"{source}: expected {_TYPE_WORDS[want]}, got {text!r}")
    return _INVALID


def _fold_alias(
    layer: dict[str, Any], source: str, errors: list[str], *, control_wins: bool
) -> None:
    """Replace ``dealer_port`` in one layer by ``control_port``.

    Within one file/environment/mapping both keys must agree (the reference
    rejects a mismatch); on the command line ``--control-port`` simply wins.
    """
    if "dealer_port" not in layer:
        return
    dealer = layer.pop("dealer_port")
    if "control_port" not in layer:
        layer["control_port"] = dealer
    elif layer["control_port"] != dealer and not control_wins:
        errors.append(
            f"{source}: dealer_port is a deprecated alias of control_port and must "
            f"equal it ({dealer} != {layer['control_port']})"
        )


# ---------------------------------------------------------------------------
# layers


def _layer_from_typed(
    values: Mapping[str, Any],
    source: str,
    errors: list[str],
    *,
    unknown_is_error: bool,
    control_wins: bool = False,
) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _FIELD_TYPES and key not in _ALIASES:
            if unknown_is_error:
                errors.append(f"{source}: unknown key {key!r}")
            else:
                logger.warning("%s: unknown configuration key %r ignored", source, key)
            continue
        coerced = _coerce_typed(key, value, source, errors)
        if coerced is not _INVALID:
            layer[key] = coerced
    _fold_alias(layer, source, errors, control_wins=control_wins)
    return layer


def _load_toml(path: str, errors: list[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        errors.append(f"config file {path}: not found")
        return {}
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"config file {path}: invalid TOML: {exc}")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"config file {path}: cannot read: {exc}")
        return {}
    return _layer_from_typed(data, f"config file {path}", errors, unknown_is_error=False)


def _layer_from_env(environ: Mapping[str, str], errors: list[str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key in INPUT_KEYS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            value = _coerce_text(key, environ[name], name, errors)
            if value is not _INVALID:
                layer[key] = value
    _fold_alias(layer, "environment", errors, control_wins=False)
    return layer


def _build(layers: list[dict[str, Any]], errors: list[str]) -> RelayConfig:
    """Merge layers (lowest first) over the defaults, derive, validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    # Clients put the transform lane at control_port + 2, so moving only the
    # control port must move the transform port with it (as the reference does).
    if "transform_port" not in merged and "control_port" in merged:
        merged["transform_port"] = merged["control_port"] + 2
    if isinstance(merged.get("log_level_console"), str):
        merged["log_level_console"] = merged["log_level_console"].strip().upper()
    config = RelayConfig(**merged)
    errors.extend(_validate(config))
    if errors:
        raise ConfigError(errors)
    return config


def resolve_config(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> RelayConfig:
    """Resolve the effective config from the command line, environment and TOML file.

    ``cli`` holds the values given on the command line, keyed by config key
    (``dealer_port`` accepted; an unknown key is an error, since the caller
    built the mapping). ``environ`` defaults to ``os.environ``. The file is
    ``config_file``, else ``RELAY_CONFIG``. Raises :class:`ConfigError` with
    every problem.
    """
    env = os.environ if environ is None else environ
    errors: list[str] = []
    config_path = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    file_layer = _load_toml(str(config_path), errors) if config_path else {}
    env_layer = _layer_from_env(env, errors)
    cli_layer = _layer_from_typed(
        cli or {}, "command line", errors, unknown_is_error=True, control_wins=True
    )
    return _build([file_layer, env_layer, cli_layer], errors)


def config_from_mapping(values: Mapping[str, Any]) -> RelayConfig:
    """Build a validated config from typed values merged over the defaults.

    Accepts ``dealer_port`` as an alias; unknown keys are errors.
    """
    errors: list[str] = []
    layer = _layer_from_typed(values, "config", errors, unknown_is_error=True)
    return _build([layer], errors)


# ---------------------------------------------------------------------------
# validation

_PORT_KEYS = (
    "cluster_port",
    "control_port",
    "transform_port",
    "pub_port",
    "server_discovery_port",
    "rest_api_port",
)
_POSITIVE_FLOAT_KEYS = (
    "idle_broadcast_interval",
    "client_timeout",
    "cleanup_interval",
    "device_id_expiry_time",
    "empty_room_expiry_time",
    "status_log_interval",
    "main_loop_sleep",
    "nv_flush_interval",
    "nv_monitor_window_size",
    "transform_min_rate_hz",
    "device_sweep_interval",
    "mapping_throttle_interval",
    "lease_ttl",
    "membership_ttl",
    "heartbeat_interval",
    "heartbeat_timeout",
    "rest_request_timeout",
    "object_idle_broadcast_interval",
    "queued_client_vars_expiry_time",
)
# 0 switches the feature off (or, for room_idle_evict_seconds, to "only at the cap").
_NON_NEGATIVE_FLOAT_KEYS = ("room_idle_evict_seconds", "max_control_rate_per_client")
_POSITIVE_INT_KEYS = (
    "poll_timeout",
    "max_global_vars",
    "max_client_vars",
    "max_var_name_length",
    "max_var_value_length",
    "nv_monitor_threshold",
    "max_virtual_transforms",
    "pub_queue_maxsize",
    "delta_ring_size",
    "ctrl_drain_batch",
    "ctrl_queue_max",
    "ctrl_backlog_watermark",
    "store_buffer_max_records",
    "rest_max_body_bytes",
    "max_rooms_per_shard",
    "max_objects_per_room",
    "max_evicted_rooms_per_shard",
    "max_queued_devices_per_room",
    "max_message_bytes",
    "max_start_failures",
)
# Upper bounds imposed by wire field widths (PROTOCOL §5, §6): a larger
# limit would admit values the codec cannot encode.
_WIRE_MAXIMA = {
    "max_virtual_transforms": 255,  # virtualCount is u8
    "max_var_name_length": 255,  # name is str8
    "max_var_value_length": 65535,  # value is str16
}
_NON_EMPTY_STR_KEYS = ("server_name", "host", "rest_host", "metrics_host")


def _validate(c: RelayConfig) -> list[str]:
    errors: list[str] = []

    for key in _PORT_KEYS:
        port = getattr(c, key)
        if not 1 <= port <= 65535:
            errors.append(f"{key} must be between 1 and 65535, got {port}")
    if not (c.metrics_port == 0 or 1 <= c.metrics_port <= 65535):
        errors.append(
            f"metrics_port must be 0 (disabled) or between 1 and 65535, got {c.metrics_port}"
        )

    # Two listeners on one TCP port would fail at bind time in some child
    # process; catching it here gives one clear error instead.
    tcp_ports = {
        "control_port": c.control_port,
        "transform_port": c.transform_port,
        "pub_port": c.pub_port,
        "rest_api_port": c.rest_api_port,
    }
    if c.metrics_port:
        tcp_ports["metrics_port"] = c.metrics_port
    if c.enable_server_discovery:
        tcp_ports["server_discovery_port"] = c.server_discovery_port
    by_port: dict[int, list[str]] = {}
    for key, port in tcp_ports.items():
        by_port.setdefault(port, []).append(key)
    for port, keys in by_port.items():
        if len(keys) > 1:
            errors.append(f"{' and '.join(keys)} must differ (all are {port})")

    for key in _POSITIVE_FLOAT_KEYS:
        value = getattr(c, key)
        # Non-finite values are refused too: they would not survive the JSON
        # hand-over to child processes and make no sense as intervals.
        if not math.isfinite(value) or value <= 0:
            errors.append(f"{key} must be a positive finite number, got {value}")

    for key in _NON_NEGATIVE_FLOAT_KEYS:
        value = getattr(c, key)
        if not math.isfinite(value) or value < 0:
            errors.append(f"{key} must be 0 (off) or a positive finite number, got {value}")
    if not 0 <= c.max_clients_per_room <= 65535:
        errors.append(
            f"max_clients_per_room must be between 0 (unlimited) and 65535, got {c.max_clients_per_room}"
        )

    rate = c.transform_broadcast_rate
    if not math.isfinite(rate) or not 0.5 <= rate <= 60:
        errors.append(f"transform_broadcast_rate must be between 0.5 and 60 Hz, got {rate}")
    else:
        tick = 1.0 / rate
        idle = c.idle_broadcast_interval
        # A non-positive idle interval already has its own error above.
        if math.isfinite(idle) and idle > 0 and tick > idle:
            errors.append(
                f"transform_broadcast_rate {rate} Hz gives a {tick:.3f} s tick, longer than "
                f"idle_broadcast_interval {c.idle_broadcast_interval} s"
            )

    for key in _POSITIVE_INT_KEYS:
        value = getattr(c, key)
        if value <= 0:
            errors.append(f"{key} must be positive, got {value}")
    for key, maximum in _WIRE_MAXIMA.items():
        value = getattr(c, key)
        if value > maximum:
            errors.append(f"{key} must be at most {maximum} (wire format limit), got {value}")

    if not 1 <= c.shards <= MAX_SHARDS:
        errors.append(f"shards must be between 1 and {MAX_SHARDS}, got {c.shards}")
    lead = c.transform_read_lead
    if not (math.isfinite(lead) and 0.0 <= lead <= 0.05):
        errors.append(f"transform_read_lead must be between 0 and 0.05 s, got {lead}")
    elif math.isfinite(rate) and 0.5 <= rate <= 60 and lead > 0.5 / rate:
        errors.append(f"transform_read_lead {lead} s must be at most half the {1 / rate:.3f} s broadcast tick")
    if c.transform_budget_bytes_per_sec < 0:
        errors.append(
            "transform_budget_bytes_per_sec must be >= 0 (0 = unlimited), "
            f"got {c.transform_budget_bytes_per_sec}"
        )
    if c.ctrl_backlog_watermark > c.ctrl_queue_max > 0:
        errors.append(
            f"ctrl_backlog_watermark ({c.ctrl_backlog_watermark}) must not exceed "
            f"ctrl_queue_max ({c.ctrl_queue_max})"
        )
    if (
        math.isfinite(c.heartbeat_interval)
        and math.isfinite(c.heartbeat_timeout)
        and 0 < c.heartbeat_timeout <= c.heartbeat_interval
    ):
        errors.append(
            f"heartbeat_timeout ({c.heartbeat_timeout}) must be longer than "
            f"heartbeat_interval ({c.heartbeat_interval})"
        )

    if c.log_level_console not in LOG_LEVELS:
        errors.append(
            f"log_level_console must be one of {', '.join(LOG_LEVELS)}, got {c.log_level_console!r}"
        )
    match = _VERSION_RE.match(c.server_version)
    if match is None:
        errors.append(f"server_version must look like major.minor.patch, got {c.server_version!r}")
    elif any(int(part) > 255 for part in match.groups()):
        errors.append(
            f"server_version parts must each be between 0 and 255, got {c.server_version!r}"
        )
    for key in _NON_EMPTY_STR_KEYS:
        if not getattr(c, key).strip():
            errors.append(f"{key} must not be empty")
    if c.data_dir and not c.data_dir.strip():
        errors.append('data_dir must be a directory, or "" for a node that keeps state in memory only')
    if c.store and c.store.split("://", 1)[0] not in _STORE_SCHEMES:
        errors.append(
            f"store must be empty (SQLite in data_dir) or a {'/'.join(_STORE_SCHEMES)} URL, "
            f"got {c.store!r}"
        )
    if c.node_id and not _NODE_ID_RE.match(c.node_id):
        errors.append(
            f"node_id must be 1-64 letters, digits, '.', '_' or '-', got {c.node_id!r}"
        )
    if c.store and not c.cluster_key_file:
        errors.append(
            "cluster_key_file is required with a shared store: node links accept members only "
            "(create one with `relayctl keygen FILE` and give every node the same file)"
        )
    if c.cluster_port + 2 + 3 * c.shards > 65535:
        errors.append(f"cluster_port {c.cluster_port} leaves no room for {c.shards} shards' ports")
    if math.isfinite(c.lease_ttl) and 0 < c.lease_ttl < 1.0:
        errors.append(f"lease_ttl must be at least 1 s (renewed every third of it), got {c.lease_ttl}")
    return errors


_STORE_SCHEMES = ("redis", "rediss", "valkey", "valkeys", "unix")
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
