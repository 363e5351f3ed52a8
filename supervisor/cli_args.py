"""`relayctl start` flags: the command-line layer of the configuration.

The reference server's flags keep their exact names (BEHAVIOR §14), the
relay's own flags sit next to them. Every flag's dest is its config key and
its default is None, so "not given" is told apart from any value and the
lower layers (environment, TOML file, defaults) show through;
:func:`cli_layer` hands only the given ones to :func:`relay.config.resolve_config`.

A new config field gets its flag with one :func:`_flag` line; the flag's
type comes from the field's type in ``RelayConfig``, its name from the key
unless ``flag=`` says otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from relay.config import ALIASES, FIELD_TYPES, INPUT_KEYS, RelayConfig, resolve_config

__all__ = ["add_config_arguments", "cli_layer", "config_from_args"]


def _flag(
    group: Any, key: str, metavar: str, help_text: str | None = None, *, flag: str | None = None
) -> None:
    """``--key-with-dashes VALUE`` (or ``flag``) for config key ``key``, typed like its field."""
    field_type = FIELD_TYPES[ALIASES.get(key, key)]
    group.add_argument(
        flag or "--" + key.replace("_", "-"),
        dest=key,
        type=None if field_type is str else field_type,
        metavar=metavar,
        default=None,
        help=help_text,
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference server's flags plus the relay's own to ``parser``."""
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
    _flag(g, "control_port", "PORT", "control ROUTER port (default 5555)")
    _flag(g, "dealer_port", "PORT", "deprecated alias of --control-port (--control-port wins)")
    _flag(g, "transform_port", "PORT", "transform ROUTER port (default: control port + 2)")
    _flag(g, "pub_port", "PORT", "PUB port (default 5556)")
    _flag(g, "server_discovery_port", "PORT", "discovery UDP+TCP port (default 49999)")
    _flag(g, "rest_api_port", "PORT", "REST bridge port (default 8800)")
    _flag(g, "log_dir", "DIR", "write JSON log files here")
    _flag(g, "log_rotation", "RULE")
    _flag(g, "log_retention", "RULE")
    g.add_argument(
        "--log-json-console",
        "--log-json",
        dest="log_json_console",
        action="store_const",
        const=True,
        default=None,
        help="JSON lines on the console",
    )
    _flag(g, "log_level_console", "LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    _flag(g, "shards", "N", "shard processes")
    _flag(g, "host", "ADDR", "bind address of client ports")
    _flag(g, "run_dir", "DIR", "ipc endpoint directory")
    _flag(g, "data_dir", "DIR", 'durable state directory ("" = in memory only)')
    g.add_argument(
        "--no-data-dir", dest="data_dir", action="store_const", const="", default=None,
        help="keep room state in memory only (same as --data-dir '')",
    )
    _flag(g, "metrics_port", "PORT", "0 disables /metrics")
    _flag(g, "store", "URL", "redis://host:port/db: rooms and membership in a shared Valkey/Redis (cluster)")
    _flag(g, "node_id", "ID", "this node's id in the cluster (default: host name)")
    _flag(g, "advertise_host", "ADDR", "address other nodes reach this node on", flag="--advertise")
    _flag(g, "cluster_port", "PORT", "first of the node-link ports on the advertise address (default 7500)")
    _flag(g, "cluster_key_file", "FILE", "the cluster's CURVE key pair (relayctl keygen FILE)")
    _flag(g, "rest_host", "ADDR", "REST bridge bind address")
    _flag(g, "rest_token", "TOKEN", "REST bearer token")
    _flag(g, "rest_token_file", "FILE", "file holding the REST bearer token")
    _flag(g, "rest_cors_origins", "LIST", "comma-separated origins allowed by CORS ('*' = any; default: none)")
    _flag(g, "metrics_host", "ADDR", "/metrics bind address (default 127.0.0.1)")
    _flag(g, "max_start_failures", "N", "failed starts in a row after which a child stops the node (default 5)")
    _flag(g, "max_message_bytes", "BYTES", "largest frame a client may send; bigger ones disconnect it (default 262144)")
    _flag(g, "server_name", "NAME", "name in discovery")
    _flag(g, "server_version", "X.Y.Z", "release announced to clients (0.0.x disables Unity's check)")
    _flag(g, "room_idle_evict_seconds", "S", "evict empty, idle rooms from memory after S s (0 = only at the room cap)")
    _flag(g, "max_clients_per_room", "N", "members per room (0 = unlimited)")
    _flag(g, "max_control_rate_per_client", "N", "control messages per second per connection (0 = off)")
    g.add_argument(
        "--guard-device-takeover", dest="guard_device_takeover", action="store_const", const=True,
        default=None, help="refuse a second connection for a device whose first one is live (W14)",
    )
    g.add_argument(
        "--no-rpc-fast-path", dest="rpc_fast_path", action="store_const", const=False, default=None,
        help="send every RPC through its room's shard (no fan-out by the ingress)",
    )
    _flag(g, "transform_read_lead", "SECONDS",
          "read the transform port once per broadcast tick, this long before it (0 = on arrival)")
    _flag(
        g,
        "transform_budget_bytes_per_sec",
        "BYTES",
        "transform bandwidth per shard (0 = unlimited)",
    )


def cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The config values given on the command line, by config key.

    Attributes that are not config keys (``command``, ``config``, a caller's
    own flags) are left out, as are flags that were not given (None).
    """
    layer: dict[str, Any] = {}
    for key in INPUT_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            layer[key] = value
    return layer


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> RelayConfig:
    """Resolve the node's config from parsed flags, the environment and the file.

    Raises :class:`relay.config.ConfigError` with every problem found.
    """
    return resolve_config(cli_layer(args), environ, getattr(args, "config", None))
