"""Safe defaults (issue #15): no unauthenticated REST beyond loopback, metrics on
loopback unless configured, deploy files that follow both."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from relay.config import ConfigError, RelayConfig
from supervisor.cli import build_parser
from supervisor.cli_args import config_from_args
from supervisor.safety import is_loopback, secure_config
from tests.support import RELAYCTL, REPO, RelayNode, free_ports

pytestmark = pytest.mark.timeout(90)

DEPLOY = REPO / "deploy"
LONG_TOKEN = "t" * 40


def relayctl(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        RELAYCTL + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------ REST


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("relay.example", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_rest_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="needs a bearer token"):
        secure_config(RelayConfig(rest_host="0.0.0.0"))
    with pytest.raises(ConfigError, match="at least 16 characters"):
        secure_config(RelayConfig(rest_host="0.0.0.0", rest_token="short"))
    assert secure_config(RelayConfig(rest_host="0.0.0.0", rest_token=LONG_TOKEN)).rest_token == LONG_TOKEN
    # Loopback needs nothing.
    assert secure_config(RelayConfig()).rest_token == ""


def test_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(LONG_TOKEN + "\n")
    config = secure_config(RelayConfig(rest_host="0.0.0.0", rest_token_file=str(secret)))
    assert config.rest_token == LONG_TOKEN
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        secure_config(RelayConfig(rest_host="0.0.0.0", rest_token_file=str(secret)))
    with pytest.raises(ConfigError, match="cannot read"):
        secure_config(RelayConfig(rest_token_file=str(tmp_path / "missing")))
    # Kept out of repr and logs like the token itself.
    assert LONG_TOKEN not in repr(config)


def test_cors_origins_are_checked() -> None:
    with pytest.raises(ConfigError, match="not an origin"):
        secure_config(RelayConfig(rest_cors_origins="dashboard.example"))
    secure_config(RelayConfig(rest_cors_origins="https://a.example, http://localhost:3000/, *"))


def test_relayctl_refuses_to_start_rest_beyond_loopback_without_a_token() -> None:
    control, rest, metrics = free_ports(3)
    args = ["start", "--shards", "1", "--host", "127.0.0.1", "--control-port", str(control),
            "--rest-api-port", str(rest), "--metrics-port", str(metrics), "--no-server-discovery",
            "--no-data-dir", "--rest-host", "0.0.0.0"]
    result = relayctl(*args, env={"RELAY_REST_TOKEN": "", "RELAY_REST_TOKEN_FILE": ""})
    assert result.returncode == 2, result.stderr
    assert "needs a bearer token" in result.stderr
    assert "RELAY_REST_TOKEN_FILE" in result.stderr


def test_metrics_bind_loopback_unless_configured() -> None:
    assert RelayConfig().metrics_host == "127.0.0.1"
    # Client ports on every interface must not take /metrics with them.
    with RelayNode(shards=1, extra_args=["--host", "0.0.0.0"]) as node:
        pid = node.proc.pid
        listening = listening_addresses(pid)
        assert listening.get(node.metrics_port) == "127.0.0.1", listening
        assert listening.get(node.control_port) is None  # the ingress's, not the supervisor's
        assert httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).status_code == 200


def listening_addresses(pid: int) -> dict[int, str]:
    """port -> address of the IPv4 TCP sockets ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = {}
    with open(f"/proc/{pid}/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                octets = [str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)]
                out[int(port, 16)] = ".".join(octets)
    return out


# --------------------------------------------------------------- deploy


def test_compose_relay_starts_only_with_its_token_secret(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    relay = compose["services"]["relay"]
    args = build_parser().parse_args(relay["command"])
    env = {key: str(value) for key, value in relay["environment"].items()}
    # The REST port is published -- by HAProxy, which passes it to every
    # replica's REST bridge on the compose network -- so the relay's own
    # check must demand the secret.
    haproxy = compose["services"]["haproxy"]
    assert any(str(p).split("/")[0].split(":")[-1] == "8800" for p in haproxy["ports"])
    assert "server-template relay 10 relay:8800 " in (DEPLOY / "haproxy.cfg").read_text()
    assert not is_loopback(args.rest_host)
    secret_path = env["RELAY_REST_TOKEN_FILE"]
    assert secret_path.startswith("/run/secrets/")
    assert secret_path.rsplit("/", 1)[1] in relay["secrets"]
    assert compose["secrets"][secret_path.rsplit("/", 1)[1]]["file"].startswith("./secrets/")
    without = {k: v for k, v in env.items() if k != "RELAY_REST_TOKEN_FILE"}
    with pytest.raises(ConfigError, match="needs a bearer token"):
        secure_config(config_from_args(args, without))
    with pytest.raises(ConfigError, match="cannot read"):
        secure_config(config_from_args(args, {**env, "RELAY_REST_TOKEN_FILE": str(tmp_path / "absent")}))
    secret = tmp_path / "rest_token"
    secret.write_text(LONG_TOKEN)
    config = secure_config(config_from_args(args, {**env, "RELAY_REST_TOKEN_FILE": str(secret)}))
    assert config.rest_token == LONG_TOKEN and config.rest_host == "0.0.0.0"
    # The node links of a shared store admit members only: the relay refuses
    # the store without the cluster key, which compose hands over as a secret.
    assert config.store and config.cluster_key_file.startswith("/run/secrets/")
    assert config.cluster_key_file.rsplit("/", 1)[1] in relay["secrets"]
    no_key = [a for a in relay["command"] if a not in ("--cluster-key-file", config.cluster_key_file)]
    with pytest.raises(ConfigError, match="cluster_key_file is required"):
        config_from_args(build_parser().parse_args(no_key), {**env, "RELAY_REST_TOKEN_FILE": str(secret)})


def test_compose_publishes_no_metrics_and_unauthenticated_uis_on_loopback_only() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # Beyond loopback only the clients' ports, all through HAProxy: control,
    # pub, transform, REST (token required, above) and TCP discovery.
    client_ports = {"5555", "5556", "5557", "8800", "49999"}
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            text = str(mapping)
            container_port = text.split("/")[0].split(":")[-1]
            assert container_port != "9100", f"{name} publishes /metrics: {text}"
            if name != "haproxy" or container_port not in client_ports:
                # Prometheus, Grafana and HAProxy's stats page are unauthenticated.
                assert text.startswith("127.0.0.1:"), f"{name} published beyond loopback: {text}"
    # The relay replicas publish nothing (--scale); the stats page binds
    # loopback unless the compose file moves it inside the container.
    assert "ports" not in compose["services"]["relay"]
    assert 'bind "${HAPROXY_STATS_ADDR-127.0.0.1}:8404"' in (DEPLOY / "haproxy.cfg").read_text()
    secrets_dir = DEPLOY / "secrets"
    assert (secrets_dir / ".gitignore").read_text().splitlines()[1] == "*"


def test_dockerfile_keeps_rest_and_metrics_on_loopback_by_default() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M).group(1)
    assert "--rest-host" not in cmd and "--metrics-host" not in cmd, cmd
    expose = " ".join(re.findall(r"^EXPOSE (.*)$", text, re.M))
    assert "8800" not in expose and "9100" not in expose, expose
    # The container's default command passes the relay's own exposure check.
    secure_config(config_from_args(build_parser().parse_args(json.loads(cmd)), {}))
