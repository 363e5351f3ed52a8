"""`relayctl start` flags (supervisor/cli_args.py): the command-line layer of the config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from relay.config import FIELD_TYPES, INPUT_KEYS, RelayConfig
from supervisor.cli import build_parser
from supervisor.cli_args import _flag, add_config_arguments, cli_layer, config_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def _resolve(*argv: str, env: dict[str, str] | None = None) -> RelayConfig:
    return config_from_args(_parse(*argv), environ=env or {})


def test_every_flag_parses() -> None:
    ns = _parse(
        "--config", "x.toml", "--no-server-discovery", "--control-port", "1",
        "--dealer-port", "2", "--transform-port", "3", "--pub-port", "4",
        "--server-discovery-port", "5", "--rest-api-port", "6", "--log-dir", "d",
        "--log-rotation", "r", "--log-retention", "t", "--log-json-console",
        "--log-level-console", "DEBUG", "--shards", "7", "--host", "h", "--run-dir", "rd",
        "--data-dir", "dd", "--metrics-port", "8", "--rest-host", "rh", "--rest-token", "tk",
        "--server-name", "sn", "--server-version", "1.2.3",
        "--transform-budget-bytes-per-sec", "9",
    )  # fmt: skip
    assert ns.config == "x.toml"
    assert ns.enable_server_discovery is False
    assert (ns.control_port, ns.dealer_port, ns.transform_port, ns.pub_port) == (1, 2, 3, 4)
    assert (ns.server_discovery_port, ns.rest_api_port, ns.metrics_port) == (5, 6, 8)
    assert (ns.log_dir, ns.log_rotation, ns.log_retention) == ("d", "r", "t")
    assert ns.log_json_console is True and ns.log_level_console == "DEBUG"
    assert (ns.shards, ns.host, ns.run_dir, ns.data_dir) == (7, "h", "rd", "dd")
    assert (ns.rest_host, ns.rest_token, ns.server_name) == ("rh", "tk", "sn")
    assert ns.server_version == "1.2.3" and ns.transform_budget_bytes_per_sec == 9


def test_unset_flags_are_none() -> None:
    ns = _parse()
    for key, value in vars(ns).items():
        assert value is None, key


def test_flags_reach_the_config() -> None:
    c = _resolve(
        "--no-server-discovery", "--log-json", "--shards", "3", "--run-dir", "/tmp/r",
        "--server-version", "0.18.0", "--rest-token", "abc", "--log-dir", "/tmp/l",
    )  # fmt: skip
    assert c.enable_server_discovery is False
    assert c.log_json_console is True
    assert (c.shards, c.run_dir, c.server_version, c.rest_token, c.log_dir) == (
        3, "/tmp/r", "0.18.0", "abc", "/tmp/l",
    )  # fmt: skip


def test_cli_false_beats_env_true() -> None:
    # store_const False must count as "given", not be mistaken for "unset".
    c = _resolve("--no-server-discovery", env={"RELAY_ENABLE_SERVER_DISCOVERY": "true"})
    assert c.enable_server_discovery is False


def test_cli_does_not_reset_env_booleans_when_absent() -> None:
    c = _resolve(env={"RELAY_ENABLE_SERVER_DISCOVERY": "false", "RELAY_LOG_JSON_CONSOLE": "1"})
    assert c.enable_server_discovery is False and c.log_json_console is True


def test_resolve_accepts_foreign_namespace() -> None:
    # The lead's CLI may build its own Namespace with other attributes.
    ns = argparse.Namespace(command="start", shards=2, verbose=True)
    assert config_from_args(ns, environ={}).shards == 2


def test_every_flag_is_a_config_key_typed_like_its_field() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = [a for a in parser._actions if a.dest not in ("help", "config")]
    assert flags and all(a.dest in INPUT_KEYS for a in flags)
    for action in flags:
        if action.const is not None:  # store_const switches carry a value of the field's type
            assert isinstance(action.const, FIELD_TYPES[action.dest]), action.dest
        elif FIELD_TYPES.get(action.dest, int) is str:
            assert action.type is None, action.dest
        else:
            assert action.type is FIELD_TYPES.get(action.dest, int), action.dest


def test_reference_flag_names_are_kept() -> None:
    # BEHAVIOR §14: the reference's command line must start the relay unchanged.
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    names = {opt for action in parser._actions for opt in action.option_strings}
    assert {
        "--config", "--no-server-discovery", "--control-port", "--dealer-port",
        "--transform-port", "--pub-port", "--server-discovery-port", "--rest-api-port",
        "--log-dir", "--log-rotation", "--log-retention", "--log-json-console",
        "--log-level-console",
    } <= names  # fmt: skip


def test_bad_flag_value_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _parse("--shards", "many")


def test_cli_layer_holds_only_given_config_keys() -> None:
    ns = _parse("--config", "x.toml", "--shards", "3", "--no-server-discovery", "--dealer-port", "6000")
    assert cli_layer(ns) == {"shards": 3, "enable_server_discovery": False, "dealer_port": 6000}
    foreign = argparse.Namespace(command="start", verbose=True, pub_port=None, host="h")
    assert cli_layer(foreign) == {"host": "h"}


def test_relayctl_start_takes_the_config_flags() -> None:
    args = build_parser().parse_args(["start", "--shards", "2", "--rest-token", "t"])
    c = config_from_args(args, environ={})
    assert (c.shards, c.rest_token) == (2, "t")
    assert dataclasses.replace(c, shards=1, rest_token="") == dataclasses.replace(RelayConfig(), shards=1)


def test_a_flag_may_be_named_apart_from_its_key() -> None:
    parser = argparse.ArgumentParser()
    _flag(parser, "shards", "N", flag="--workers")
    ns = parser.parse_args(["--workers", "4"])
    assert ns.shards == 4 and cli_layer(ns) == {"shards": 4}
