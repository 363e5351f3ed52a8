"""Relay configuration: one immutable value resolved from four layers.

Precedence, highest first: command line > ``RELAY_*`` environment variables >
TOML file (``--config FILE`` or ``RELAY_CONFIG``) > built-in defaults.

The keys shared with the reference server (BEHAVIOR §14) keep its names and
defaults, so an existing reference config file works unchanged; the relay's
own keys sit next to them in the same flat namespace.

Every problem found while resolving (a bad type in any layer, a value out of
range, a cross-field conflict) is collected and reported at once in a single
:class:`ConfigError`, so an operator fixes a config file in one round trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "RelayConfig",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "add_config_arguments",
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
    pub_queue_maxsize: int = 10000
    delta_ring_size: int = 10000
    log_dir: str = ""
    log_level_console: str = "INFO"
    log_json_console: bool = False
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
    ctrl_drain_batch: int = 256
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
    rest_request_timeout: float = 2.0
    rest_max_body_bytes: int = 65536
    object_idle_broadcast_interval: float = 2.0
    # Bounds against unbounded growth (W13): a flood of new room ids or object
    # ids is refused and counted instead of eating memory.
    max_rooms_per_shard: int = 10_000
    max_objects_per_room: int = 10_000
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

# Keys that are accepted on input but are not fields of their own.
_ALIASES = {"dealer_port": "control_port"}


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
    """Check a value that already has a Python type (TOML, dict, CLI).

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
    values: Mapping[str, Any], source: str, errors: list[str], *, unknown_is_error: bool
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
    _fold_alias(layer, source, errors, control_wins=False)
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
    for key in (*_FIELD_TYPES, *_ALIASES):
        name = ENV_PREFIX + key.upper()
        if name in environ:
            value = _coerce_text(key, environ[name], name, errors)
            if value is not _INVALID:
                layer[key] = value
    _fold_alias(layer, "environment", errors, control_wins=False)
    return layer


def _layer_from_args(args: argparse.Namespace, errors: list[str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key in (*_FIELD_TYPES, *_ALIASES):
        value = getattr(args, key, None)
        if value is not None:
            coerced = _coerce_typed(key, value, "command line", errors)
            if coerced is not _INVALID:
                layer[key] = coerced
    _fold_alias(layer, "command line", errors, control_wins=True)
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
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> RelayConfig:
    """Resolve the effective config from CLI args, environment and TOML file.

    ``environ`` defaults to ``os.environ``. The file comes from ``--config``,
    else from ``RELAY_CONFIG``. Raises :class:`ConfigError` with every problem.
    """
    env = os.environ if environ is None else environ
    errors: list[str] = []
    config_path = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG") or None
    file_layer = _load_toml(str(config_path), errors) if config_path else {}
    env_layer = _layer_from_env(env, errors)
    cli_layer = _layer_from_args(args, errors)
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
    "heartbeat_interval",
    "heartbeat_timeout",
    "rest_request_timeout",
    "object_idle_broadcast_interval",
)
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
    "rest_max_body_bytes",
    "max_rooms_per_shard",
    "max_objects_per_room",
    "max_message_bytes",
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
    return errors


# ---------------------------------------------------------------------------
# command line


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference server's flags plus the relay's own to ``parser``.

    Every option defaults to None so :func:`resolve_config` can tell "not given"
    from a value; dests are the config key names.
    """
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", default=None, help="TOML config file (flat keys)")
    g.add_argument(
        "--no-server-discovery",
        dest="enable_server_discovery",
        action="store_const",
        const=False,
        default=None,
        help="disable the UDP/TCP discovery service",
    )
    port_flags = {
        "control_port": "control ROUTER port (default 5555)",
        "dealer_port": "deprecated alias of --control-port (--control-port wins)",
        "transform_port": "transform ROUTER port (default: control port + 2)",
        "pub_port": "PUB port (default 5556)",
        "server_discovery_port": "discovery UDP+TCP port (default 49999)",
        "rest_api_port": "REST bridge port (default 8800)",
    }
    for key, text in port_flags.items():
        g.add_argument(
            "--" + key.replace("_", "-"),
            dest=key,
            type=int,
            metavar="PORT",
            default=None,
            help=text,
        )
    g.add_argument("--log-dir", default=None, metavar="DIR", help="write JSON log files here")
    g.add_argument("--log-rotation", default=None, metavar="RULE")
    g.add_argument("--log-retention", default=None, metavar="RULE")
    g.add_argument(
        "--log-json-console",
        "--log-json",
        dest="log_json_console",
        action="store_const",
        const=True,
        default=None,
        help="JSON lines on the console",
    )
    g.add_argument(
        "--log-level-console",
        default=None,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    g.add_argument("--shards", type=int, default=None, metavar="N", help="shard processes")
    g.add_argument("--host", default=None, metavar="ADDR", help="bind address of client ports")
    g.add_argument("--run-dir", default=None, metavar="DIR", help="ipc endpoint directory")
    g.add_argument(
        "--data-dir", default=None, metavar="DIR", help='durable state directory ("" = in memory only)'
    )
    g.add_argument(
        "--no-data-dir", dest="data_dir", action="store_const", const="", default=None,
        help="keep room state in memory only (same as --data-dir '')",
    )
    g.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT", help="0 disables /metrics"
    )
    g.add_argument("--rest-host", default=None, metavar="ADDR", help="REST bridge bind address")
    g.add_argument("--rest-token", default=None, metavar="TOKEN", help="REST bearer token")
    g.add_argument("--rest-token-file", default=None, metavar="FILE", help="file holding the REST bearer token")
    g.add_argument(
        "--rest-cors-origins", default=None, metavar="LIST",
        help="comma-separated origins allowed by CORS ('*' = any; default: none)",
    )
    g.add_argument("--metrics-host", default=None, metavar="ADDR", help="/metrics bind address (default 127.0.0.1)")
    g.add_argument("--server-name", default=None, metavar="NAME", help="name in discovery")
    g.add_argument(
        "--server-version",
        default=None,
        metavar="X.Y.Z",
        help="release announced to clients (0.0.x disables Unity's check)",
    )
    g.add_argument(
        "--max-message-bytes", type=int, default=None, metavar="BYTES",
        help="largest frame a client may send; bigger ones disconnect it (default 262144)",
    )
    g.add_argument(
        "--transform-budget-bytes-per-sec",
        type=int,
        default=None,
        metavar="BYTES",
        help="transform bandwidth per shard (0 = unlimited)",
    )
