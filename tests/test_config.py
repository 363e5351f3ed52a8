"""Configuration resolution (relay/config.py).

Most cases go through the real flags (``supervisor/cli_args.py``) so that
every layer is exercised as an operator meets it; the command-line parsing on
its own is tested in tests/test_cli_args.py. Kept as one file (~600 lines)
because every case checks one contract, the value resolve_config returns;
most of its length is the table of validation rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import (
    ConfigError,
    RelayConfig,
    config_from_mapping,
    parse_server_version,
    resolve_config,
)
from supervisor.cli_args import add_config_arguments, config_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def _resolve(*argv: str, env: dict[str, str] | None = None) -> RelayConfig:
    return config_from_args(_parse(*argv), environ=env or {})


def _toml(tmp_path: Path, text: str, name: str = "relay.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _errors(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(values)
    return info.value.errors


# ---------------------------------------------------------------------------
# defaults


def test_defaults_match_reference_and_brief() -> None:
    c = _resolve()
    assert (c.control_port, c.transform_port, c.pub_port) == (5555, 5557, 5556)
    assert (c.server_discovery_port, c.rest_api_port) == (49999, 8800)
    assert c.server_name == "STYLY-NetSync-Server"
    assert c.enable_server_discovery is True
    assert c.transform_broadcast_rate == 10.0 and isinstance(c.transform_broadcast_rate, float)
    assert c.poll_timeout == 100 and isinstance(c.poll_timeout, int)
    assert c.client_timeout == 5.0 and isinstance(c.client_timeout, float)
    assert c.log_level_console == "INFO"
    assert c.server_version == "0.17.5"
    assert c.host == "0.0.0.0" and c.rest_host == "127.0.0.1"
    assert c.metrics_port == 9100
    assert c.transform_budget_bytes_per_sec == 60_000_000
    assert 1 <= c.shards <= 64
    assert c == RelayConfig()


def test_every_reference_key_is_a_field() -> None:
    # Keys of the reference default.toml (BEHAVIOR §14), dealer_port aside.
    reference_keys = {
        "control_port", "transform_port", "pub_port", "server_discovery_port",
        "rest_api_port", "server_name", "enable_server_discovery",
        "idle_broadcast_interval", "transform_broadcast_rate", "client_timeout",
        "cleanup_interval", "device_id_expiry_time", "empty_room_expiry_time",
        "status_log_interval", "main_loop_sleep", "poll_timeout", "max_global_vars",
        "max_client_vars", "max_var_name_length", "max_var_value_length",
        "nv_flush_interval", "nv_monitor_window_size", "nv_monitor_threshold",
        "max_virtual_transforms", "pub_queue_maxsize", "delta_ring_size", "log_dir",
        "log_level_console", "log_json_console", "log_rotation", "log_retention",
    }  # fmt: skip
    names = {f.name for f in dataclasses.fields(RelayConfig)}
    assert reference_keys <= names
    assert "dealer_port" not in names


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RelayConfig().control_port = 1  # type: ignore[misc]


def test_rest_token_not_in_repr() -> None:
    c = config_from_mapping({"rest_token": "s3cret"})
    assert c.rest_token == "s3cret"
    assert "s3cret" not in repr(c)


# ---------------------------------------------------------------------------
# precedence: CLI > env > file > defaults, each pair


def test_file_beats_defaults(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\nserver_name = 'filed'\n")
    c = _resolve("--config", path)
    assert c.pub_port == 6000 and c.server_name == "filed"


def test_env_beats_defaults() -> None:
    c = _resolve(env={"RELAY_PUB_PORT": "6001", "RELAY_REST_TOKEN": "tok"})
    assert c.pub_port == 6001 and c.rest_token == "tok"


def test_cli_beats_defaults() -> None:
    c = _resolve("--pub-port", "6002")
    assert c.pub_port == 6002


def test_env_beats_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\nshards = 3\n")
    c = _resolve("--config", path, env={"RELAY_PUB_PORT": "6001"})
    assert c.pub_port == 6001
    assert c.shards == 3  # untouched by env, file value stays


def test_cli_beats_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\n")
    assert _resolve("--config", path, "--pub-port", "6002").pub_port == 6002


def test_cli_beats_env() -> None:
    c = _resolve("--shards", "5", env={"RELAY_SHARDS": "7", "RELAY_HOST": "127.0.0.2"})
    assert c.shards == 5
    assert c.host == "127.0.0.2"


def test_all_three_layers_together(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\nrest_api_port = 6100\nmetrics_port = 6200\n")
    env = {"RELAY_REST_API_PORT": "6101", "RELAY_METRICS_PORT": "6201"}
    c = _resolve("--config", path, "--metrics-port", "6202", env=env)
    assert (c.pub_port, c.rest_api_port, c.metrics_port) == (6000, 6101, 6202)


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\n")
    assert _resolve(env={"RELAY_CONFIG": path}).pub_port == 6000
    other = _toml(tmp_path, "pub_port = 6003\n", name="other.toml")
    assert _resolve("--config", other, env={"RELAY_CONFIG": path}).pub_port == 6003


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SERVER_NAME", "from-os-env")
    assert config_from_args(_parse()).server_name == "from-os-env"


# ---------------------------------------------------------------------------
# environment parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True),
     ("0", False), ("False", False), ("no", False), (" off ", False)],
)  # fmt: skip
def test_env_booleans(text: str, expected: bool) -> None:
    c = _resolve(env={"RELAY_ENABLE_SERVER_DISCOVERY": text, "RELAY_LOG_JSON_CONSOLE": text})
    assert c.enable_server_discovery is expected
    assert c.log_json_console is expected


def test_env_typed_values() -> None:
    c = _resolve(
        env={
            "RELAY_CLIENT_TIMEOUT": "7.5",
            "RELAY_POLL_TIMEOUT": "50",
            "RELAY_LOG_DIR": "/var/log/relay",
            "RELAY_TRANSFORM_BUDGET_BYTES_PER_SEC": "0",
        }
    )
    assert c.client_timeout == 7.5
    assert c.poll_timeout == 50 and isinstance(c.poll_timeout, int)
    assert c.log_dir == "/var/log/relay"
    assert c.transform_budget_bytes_per_sec == 0


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("RELAY_CONTROL_PORT", "abc"),
        ("RELAY_CONTROL_PORT", "5555.0"),
        ("RELAY_CONTROL_PORT", ""),
        ("RELAY_CLIENT_TIMEOUT", "soon"),
        ("RELAY_ENABLE_SERVER_DISCOVERY", "maybe"),
    ],
)
def test_env_bad_values_name_the_variable(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        _resolve(env={name: text})
    assert len(info.value.errors) == 1
    assert name in info.value.errors[0]


def test_unrelated_env_is_ignored() -> None:
    c = _resolve(env={"CONTROL_PORT": "1", "PATH": "/bin", "RELAY_NOT_A_KEY": "x"})
    assert c.control_port == 5555


# ---------------------------------------------------------------------------
# transform_port derivation


def test_transform_port_follows_control_port_from_cli() -> None:
    c = _resolve("--control-port", "6000")
    assert (c.control_port, c.transform_port) == (6000, 6002)


def test_transform_port_follows_control_port_from_env_and_file(tmp_path: Path) -> None:
    assert _resolve(env={"RELAY_CONTROL_PORT": "6100"}).transform_port == 6102
    path = _toml(tmp_path, "control_port = 6200\n")
    assert _resolve("--config", path).transform_port == 6202


def test_transform_port_follows_dealer_alias() -> None:
    assert _resolve("--dealer-port", "6300").transform_port == 6302


def test_explicit_transform_port_is_kept_in_every_layer(tmp_path: Path) -> None:
    assert _resolve("--control-port", "6000", "--transform-port", "7000").transform_port == 7000
    env = {"RELAY_CONTROL_PORT": "6000", "RELAY_TRANSFORM_PORT": "7001"}
    assert _resolve(env=env).transform_port == 7001
    path = _toml(tmp_path, "transform_port = 7002\n")
    # Explicit in the file, control port moved on the CLI: the file's value wins.
    assert _resolve("--config", path, "--control-port", "6000").transform_port == 7002
    assert (
        config_from_mapping({"control_port": 6000, "transform_port": 7003}).transform_port == 7003
    )


def test_transform_port_derived_in_mapping() -> None:
    assert config_from_mapping({"control_port": 6000}).transform_port == 6002


def test_derived_transform_port_out_of_range_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        _resolve("--control-port", "65534")
    assert any("transform_port" in e and "65536" in e for e in info.value.errors)


# ---------------------------------------------------------------------------
# dealer_port alias


def test_dealer_port_alone_sets_control_port(tmp_path: Path) -> None:
    path = _toml(tmp_path, "dealer_port = 6400\n")
    assert _resolve("--config", path).control_port == 6400
    assert _resolve(env={"RELAY_DEALER_PORT": "6401"}).control_port == 6401
    assert _resolve("--dealer-port", "6402").control_port == 6402
    assert config_from_mapping({"dealer_port": 6403}).control_port == 6403


def test_control_port_flag_wins_over_dealer_flag() -> None:
    c = _resolve("--dealer-port", "6500", "--control-port", "6501")
    assert c.control_port == 6501


def test_equal_dealer_and_control_in_file_is_fine(tmp_path: Path) -> None:
    path = _toml(tmp_path, "dealer_port = 6600\ncontrol_port = 6600\n")
    assert _resolve("--config", path).control_port == 6600


def test_dealer_must_equal_control_in_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "dealer_port = 6600\ncontrol_port = 6601\n")
    with pytest.raises(ConfigError) as info:
        _resolve("--config", path)
    assert any("dealer_port" in e for e in info.value.errors)


def test_dealer_must_equal_control_in_env_and_mapping() -> None:
    with pytest.raises(ConfigError, match="dealer_port"):
        _resolve(env={"RELAY_DEALER_PORT": "6600", "RELAY_CONTROL_PORT": "6601"})
    with pytest.raises(ConfigError, match="dealer_port"):
        config_from_mapping({"dealer_port": 6600, "control_port": 6601})


def test_cli_control_port_overrides_file_dealer_mismatch_free(tmp_path: Path) -> None:
    # A reference-style file keeps dealer_port == control_port; moving the port on
    # the CLI must not trip the alias check.
    path = _toml(tmp_path, "dealer_port = 5555\ncontrol_port = 5555\n")
    assert _resolve("--config", path, "--control-port", "6700").control_port == 6700


# ---------------------------------------------------------------------------
# TOML file handling


def test_unknown_toml_key_warns_not_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _toml(tmp_path, "pub_port = 6000\ncontorl_port = 1\n")
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        c = _resolve("--config", path)
    assert c.pub_port == 6000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("contorl_port" in r.getMessage() for r in warnings)


def test_unknown_mapping_key_is_an_error() -> None:
    assert any("contorl_port" in e for e in _errors({"contorl_port": 1}))


def test_reference_default_toml_is_accepted(tmp_path: Path) -> None:
    # The reference's full default file, copied by a user, must load unchanged.
    text = """
control_port = 5555
dealer_port = 5555
transform_port = 5557
pub_port = 5556
server_discovery_port = 49999
rest_api_port = 8800
server_name = "STYLY-NetSync-Server"
enable_server_discovery = true
idle_broadcast_interval = 2.0
transform_broadcast_rate = 10
client_timeout = 5
cleanup_interval = 1.0
device_id_expiry_time = 86400.0
empty_room_expiry_time = 86400.0
status_log_interval = 10.0
main_loop_sleep = 0.02
poll_timeout = 100
max_global_vars = 100
max_client_vars = 100
max_var_name_length = 64
max_var_value_length = 1024
nv_flush_interval = 0.05
nv_monitor_window_size = 1.0
nv_monitor_threshold = 200
max_virtual_transforms = 50
pub_queue_maxsize = 10000
delta_ring_size = 10000
log_dir = ""
log_level_console = "INFO"
log_json_console = false
log_rotation = ""
log_retention = ""
"""
    c = _resolve("--config", _toml(tmp_path, text))
    assert c == dataclasses.replace(RelayConfig(), shards=c.shards)
    assert isinstance(c.client_timeout, float)  # TOML int accepted for a float key


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        _resolve("--config", missing)
    assert missing in str(info.value)


def test_corrupt_config_file_names_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "control_port = = 5\n[[[")
    with pytest.raises(ConfigError) as info:
        _resolve("--config", path)
    assert path in str(info.value)
    assert "TOML" in str(info.value)


def test_wrong_types_in_file_are_errors(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'control_port = "5555"\nenable_server_discovery = 1\npub_port = true\n'
        "shards = 2.5\nserver_name = 3\n",
    )
    with pytest.raises(ConfigError) as info:
        _resolve("--config", path)
    errors = info.value.errors
    for key in ("control_port", "enable_server_discovery", "pub_port", "shards", "server_name"):
        assert any(key in e and path in e for e in errors), key
    assert len(errors) == 5


def test_corrupt_file_and_bad_env_reported_together(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[[[")
    with pytest.raises(ConfigError) as info:
        _resolve("--config", path, "--shards", "0", env={"RELAY_PUB_PORT": "x"})
    text = str(info.value)
    assert path in text and "RELAY_PUB_PORT" in text and "shards" in text
    assert len(info.value.errors) == 3


# ---------------------------------------------------------------------------
# validation: every rule


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"control_port": 0}, "control_port"),
        ({"control_port": 65536, "transform_port": 5557}, "control_port"),
        ({"transform_port": 0}, "transform_port"),
        ({"pub_port": -1}, "pub_port"),
        ({"server_discovery_port": 70000}, "server_discovery_port"),
        ({"rest_api_port": 0}, "rest_api_port"),
        ({"metrics_port": -1}, "metrics_port"),
        ({"metrics_port": 65536}, "metrics_port"),
        ({"pub_port": 5555}, "must differ"),
        ({"rest_api_port": 5557}, "must differ"),
        ({"metrics_port": 8800}, "must differ"),
        ({"server_discovery_port": 5556}, "must differ"),
        ({"idle_broadcast_interval": 0.0}, "idle_broadcast_interval"),
        ({"client_timeout": -1.0}, "client_timeout"),
        ({"cleanup_interval": 0.0}, "cleanup_interval"),
        ({"device_id_expiry_time": 0.0}, "device_id_expiry_time"),
        ({"empty_room_expiry_time": -5.0}, "empty_room_expiry_time"),
        ({"status_log_interval": 0.0}, "status_log_interval"),
        ({"main_loop_sleep": 0.0}, "main_loop_sleep"),
        ({"main_loop_sleep": float("nan")}, "main_loop_sleep"),
        ({"client_timeout": float("inf")}, "client_timeout"),
        ({"nv_flush_interval": 0.0}, "nv_flush_interval"),
        ({"nv_monitor_window_size": 0.0}, "nv_monitor_window_size"),
        ({"transform_broadcast_rate": 0.4}, "transform_broadcast_rate"),
        ({"transform_broadcast_rate": 61.0}, "transform_broadcast_rate"),
        ({"transform_broadcast_rate": float("nan")}, "transform_broadcast_rate"),
        (
            {"transform_broadcast_rate": 0.5, "idle_broadcast_interval": 1.0},
            "idle_broadcast_interval",
        ),
        ({"transform_read_lead": -0.001}, "transform_read_lead"),
        ({"transform_read_lead": float("nan")}, "transform_read_lead"),
        # At 60 Hz a 10 ms lead is over half the tick: reads would serve the wrong one.
        ({"transform_broadcast_rate": 60.0, "transform_read_lead": 0.01}, "transform_read_lead"),
        ({"poll_timeout": 0}, "poll_timeout"),
        ({"max_global_vars": 0}, "max_global_vars"),
        ({"max_client_vars": 0}, "max_client_vars"),
        ({"max_var_name_length": 0}, "max_var_name_length"),
        ({"max_var_name_length": 256}, "max_var_name_length"),
        ({"max_var_value_length": 0}, "max_var_value_length"),
        ({"max_var_value_length": 65536}, "max_var_value_length"),
        ({"nv_monitor_threshold": 0}, "nv_monitor_threshold"),
        ({"max_virtual_transforms": 0}, "max_virtual_transforms"),
        ({"max_virtual_transforms": 256}, "max_virtual_transforms"),
        ({"pub_queue_maxsize": 0}, "pub_queue_maxsize"),
        ({"delta_ring_size": 0}, "delta_ring_size"),
        ({"log_level_console": "VERBOSE"}, "log_level_console"),
        ({"shards": 0}, "shards"),
        ({"shards": 65}, "shards"),
        ({"transform_budget_bytes_per_sec": -1}, "transform_budget_bytes_per_sec"),
        ({"ctrl_drain_batch": 0}, "ctrl_drain_batch"),
        ({"ctrl_queue_max": 0}, "ctrl_queue_max"),
        ({"ctrl_backlog_watermark": 0}, "ctrl_backlog_watermark"),
        ({"ctrl_backlog_watermark": 200, "ctrl_queue_max": 100}, "ctrl_backlog_watermark"),
        ({"transform_min_rate_hz": 0.0}, "transform_min_rate_hz"),
        ({"device_sweep_interval": 0.0}, "device_sweep_interval"),
        ({"mapping_throttle_interval": 0.0}, "mapping_throttle_interval"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval"),
        ({"heartbeat_timeout": 0.0}, "heartbeat_timeout"),
        ({"heartbeat_timeout": 0.5, "heartbeat_interval": 0.5}, "heartbeat_timeout"),
        ({"rest_request_timeout": 0.0}, "rest_request_timeout"),
        ({"rest_max_body_bytes": 0}, "rest_max_body_bytes"),
        ({"object_idle_broadcast_interval": 0.0}, "object_idle_broadcast_interval"),
        ({"server_version": "0.17"}, "server_version"),
        ({"server_version": "latest"}, "server_version"),
        ({"server_version": "0.256.0"}, "server_version"),
        ({"server_version": "-1.0.0"}, "server_version"),
        ({"host": ""}, "host"),
        ({"rest_host": " "}, "rest_host"),
        ({"server_name": ""}, "server_name"),
        ({"data_dir": "  "}, "data_dir"),
    ],
)
def test_each_rule_rejects(values: dict[str, Any], needle: str) -> None:
    errors = _errors(values)
    assert len(errors) == 1, errors
    assert needle in errors[0]


@pytest.mark.parametrize(
    "values",
    [
        {"control_port": 1, "transform_port": 65535, "pub_port": 2, "rest_api_port": 3},
        {"metrics_port": 0},
        {"enable_server_discovery": False, "server_discovery_port": 5556},
        # Reference-valid slow rate stays valid although below the default floor.
        {"transform_broadcast_rate": 0.5, "idle_broadcast_interval": 2.0},
        {"transform_broadcast_rate": 60.0},
        {"shards": 1},
        {"shards": 64},
        {"transform_budget_bytes_per_sec": 0},
        {"log_level_console": "debug"},
        {"server_version": "0.0.0"},
        {"server_version": "255.255.255"},
        {"server_version": "0.17.5-rc1"},
        {"max_virtual_transforms": 255, "max_var_name_length": 255},
        {"ctrl_backlog_watermark": 100, "ctrl_queue_max": 100},
    ],
)
def test_boundaries_accepted(values: dict[str, Any]) -> None:
    config_from_mapping(values)


def test_log_level_is_normalised() -> None:
    assert config_from_mapping({"log_level_console": " warning "}).log_level_console == "WARNING"
    assert _resolve("--log-level-console", "error").log_level_console == "ERROR"


def test_several_errors_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(
            {
                "control_port": 0,
                "shards": 0,
                "client_timeout": -1.0,
                "server_version": "x",
                "log_level_console": "LOUD",
                "ctrl_drain_batch": "many",
            }
        )
    errors = info.value.errors
    assert len(errors) == 6
    lines = str(info.value).splitlines()
    assert lines == errors
    for key in ("control_port", "shards", "client_timeout", "server_version", "log_level_console",
                "ctrl_drain_batch"):  # fmt: skip
        assert any(key in line for line in lines), key


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------
# round trip


def test_to_dict_from_dict_round_trip() -> None:
    c = config_from_mapping(
        {"control_port": 7000, "shards": 3, "rest_token": "t", "client_timeout": 2.5,
         "enable_server_discovery": False, "log_level_console": "debug"}
    )  # fmt: skip
    data = c.to_dict()
    assert data["transform_port"] == 7002
    wire = json.loads(orjson.dumps(data))
    assert RelayConfig.from_dict(wire) == c
    assert set(data) == {f.name for f in dataclasses.fields(RelayConfig)}


def test_from_dict_keeps_explicit_transform_port() -> None:
    c = config_from_mapping({"control_port": 7000, "transform_port": 9000})
    assert RelayConfig.from_dict(c.to_dict()).transform_port == 9000


def test_from_dict_validates() -> None:
    data = RelayConfig().to_dict()
    data["shards"] = 0
    data["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        RelayConfig.from_dict(data)
    assert len(info.value.errors) == 2


# ---------------------------------------------------------------------------
# server version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.17.5", (0, 17, 5)),
        ("1.2.3-beta", (1, 2, 3)),
        ("1.2.3+build.7", (1, 2, 3)),
        ("1.2", (1, 2, 0)),
        ("4", (4, 0, 0)),
        ("1.2.3.4", (1, 2, 3)),
        ("300.1.999", (255, 1, 255)),
        ("", (0, 0, 0)),
        ("latest", (0, 0, 0)),
        ("1.x.3", (0, 0, 0)),
        ("-1.0.0", (0, 0, 0)),
        ("1. 2.3", (0, 0, 0)),
    ],
)
def test_parse_server_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_server_version(text) == expected


def test_server_version_tuple_property() -> None:
    assert config_from_mapping({"server_version": "0.18.2"}).server_version_tuple == (0, 18, 2)


# ---------------------------------------------------------------------------
# the command-line layer as a plain mapping (how relay.config receives it)


def test_cli_mapping_beats_env_and_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "pub_port = 6000\nrest_api_port = 6100\n")
    c = resolve_config({"pub_port": 6002}, {"RELAY_PUB_PORT": "6001"}, path)
    assert (c.pub_port, c.rest_api_port) == (6002, 6100)


def test_cli_mapping_defaults_to_nothing() -> None:
    assert resolve_config(environ={}) == RelayConfig()


def test_cli_mapping_dealer_alias_loses_to_control_port() -> None:
    c = resolve_config({"dealer_port": 6500, "control_port": 6501}, {})
    assert (c.control_port, c.transform_port) == (6501, 6503)


def test_cli_mapping_unknown_key_and_bad_type_are_errors() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"contorl_port": 1, "shards": "two"}, {})
    errors = info.value.errors
    assert len(errors) == 2 and all(e.startswith("command line:") for e in errors)


def test_config_file_argument_beats_the_env_variable(tmp_path: Path) -> None:
    env_file = _toml(tmp_path, "pub_port = 6000\n")
    arg_file = _toml(tmp_path, "pub_port = 6003\n", name="arg.toml")
    assert resolve_config(None, {"RELAY_CONFIG": env_file}, arg_file).pub_port == 6003
    assert resolve_config(None, {"RELAY_CONFIG": env_file}).pub_port == 6000


def test_bounds_and_admission_keys_default_off_or_generous_and_are_validated() -> None:
    c = _resolve()
    assert (c.room_idle_evict_seconds, c.max_evicted_rooms_per_shard) == (60.0, 100_000)
    assert (c.max_queued_devices_per_room, c.queued_client_vars_expiry_time) == (1_000, 86400.0)
    assert (c.max_clients_per_room, c.max_control_rate_per_client, c.guard_device_takeover) == (0, 0.0, False)
    errors = _errors({
        "room_idle_evict_seconds": -1.0, "max_control_rate_per_client": float("nan"),
        "max_clients_per_room": 70_000, "max_queued_devices_per_room": 0,
        "queued_client_vars_expiry_time": 0.0, "max_evicted_rooms_per_shard": -5,
    })
    assert len(errors) == 6, errors
    on = _resolve(
        "--room-idle-evict-seconds", "0", "--max-clients-per-room", "8",
        "--max-control-rate-per-client", "50", "--guard-device-takeover",
        env={"RELAY_MAX_QUEUED_DEVICES_PER_ROOM": "10"},
    )  # fmt: skip
    assert (on.room_idle_evict_seconds, on.max_clients_per_room) == (0.0, 8)
    assert (on.max_control_rate_per_client, on.guard_device_takeover, on.max_queued_devices_per_room) == (50.0, True, 10)
