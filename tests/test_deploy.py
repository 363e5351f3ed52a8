"""deploy/: a cluster behind HAProxy that validates, and monitoring that sees every node.

The compose file passes `docker-compose config`, the HAProxy config passes
`haproxy -c` (as shipped and in its by-hand variant) and carries real clients,
REST calls and TCP discovery to a node, Prometheus finds every replica by DNS,
and the dashboard queries only metrics a node exports. No Docker engine is
needed. Outside CI a missing `docker-compose` or `haproxy` skips its tests;
with CI=true it fails them (.ci/run installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from relay.config import RelayConfig
from supervisor.cli import build_parser
from supervisor.cli_args import config_from_args
from supervisor.safety import secure_config
from tests.support import RawClient, RelayNode, free_ports, reference_clients, wait_for
from tests.test_metrics import join_all, keep_alive, scrape

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
HAPROXY = DEPLOY / "haproxy.cfg"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "netsync-relay.json"
METRIC_NAME = re.compile(r"\brelay_[a-z0-9_]+\b")
LONG_TOKEN = "d" * 40

DEFAULTS = RelayConfig()
# What clients reach through the balancer: the reference server's ports.
CLIENT_PORTS = {
    "control": DEFAULTS.control_port,
    "pub": DEFAULTS.pub_port,
    "transform": DEFAULTS.transform_port,
    "rest": DEFAULTS.rest_api_port,
    "discovery": DEFAULTS.server_discovery_port,
}
ZMQ_PORTS = ("control", "pub", "transform")


def require_tool(name: str) -> str:
    """The tool's path; skip without it, except in CI where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed: .ci/run installs it (apt-get install -y {name})")
        pytest.skip(f"{name} is not installed (apt-get install -y {name}); CI=true runs this test")
    return path


# ----------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def published(service: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(host ip or "", host port, container port, protocol) of every published port,
    from the short ("127.0.0.1:80:8080/tcp") or the long (mapping) syntax."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"]),
                        entry.get("protocol", "tcp")))
            continue
        text, _, protocol = str(entry).partition("/")
        parts = text.split(":")
        if len(parts) == 1:
            raise AssertionError(f"port {entry!r} leaves the host port to chance")
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return out


def relay_args() -> Any:
    return build_parser().parse_args(compose()["services"]["relay"]["command"])


def test_compose_file_validates() -> None:
    tool = require_tool("docker-compose")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"valkey", "relay", "haproxy", "prometheus", "grafana"}, set(services)
    # As docker-compose resolved it: only HAProxy publishes client ports, the
    # relay replicas nothing (so --scale never collides), /metrics nowhere.
    assert not services["relay"].get("ports"), services["relay"]["ports"]
    assert {port for _, port, _, _ in published(services["haproxy"])} >= set(CLIENT_PORTS.values())
    for name, service in services.items():
        for _, host_port, target, _ in published(service):
            assert 9100 not in (host_port, target), f"{name} publishes /metrics"
    assert services["relay"]["depends_on"]["valkey"]["condition"] == "service_healthy"
    assert set(config["secrets"]) == {"relay_rest_token", "relay_cluster_key"}
    for secret in config["secrets"].values():
        assert Path(secret["file"]).parent == DEPLOY / "secrets", secret


def test_compose_is_a_cluster_behind_haproxy() -> None:
    services = compose()["services"]

    valkey = services["valkey"]
    assert valkey["image"].startswith("valkey/valkey:8")
    command = " ".join(valkey["command"]) if isinstance(valkey["command"], list) else valkey["command"]
    assert "--appendonly yes" in command
    named_volumes = set(compose()["volumes"])
    assert any(v.split(":")[0] in named_volumes and v.split(":")[1] == "/data" for v in valkey["volumes"])
    assert "valkey-cli" in valkey["healthcheck"]["test"] and "ping" in valkey["healthcheck"]["test"]
    assert not valkey.get("ports"), "the store is for the nodes only"

    relay = services["relay"]
    assert "ports" not in relay, "replicas publish nothing: clients come through HAProxy"
    assert relay["depends_on"]["valkey"]["condition"] == "service_healthy"

    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:2.")
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    ports = published(haproxy)
    beyond_loopback = {(port, target, proto) for ip, port, target, proto in ports if ip != "127.0.0.1"}
    assert beyond_loopback == {(p, p, "tcp") for p in CLIENT_PORTS.values()}, beyond_loopback
    # UDP discovery cannot pass the balancer, and no service pretends it does.
    for name, service in services.items():
        assert all(proto != "udp" for *_, proto in published(service)), name
        if name != "haproxy":
            assert all(ip == "127.0.0.1" for ip, *_ in published(service)), f"{name} published beyond loopback"


def test_compose_relay_command_parses_with_cluster_flags(tmp_path: Path) -> None:
    spec = compose()
    relay = spec["services"]["relay"]
    args = relay_args()
    assert args.command == "start"
    # The shared store is the compose service, by its DNS name.
    assert args.store == "redis://valkey:6379/0"
    assert args.store.split("//")[1].split(":")[0] in spec["services"]
    # Each replica advertises the address its own host name resolves to, and
    # takes the default node id (its host name: the container id).
    assert args.advertise_host == "auto"
    assert args.node_id is None
    # The cluster key and the REST token are compose secrets.
    env = {key: str(value) for key, value in relay["environment"].items()}
    for path in (args.cluster_key_file, env["RELAY_REST_TOKEN_FILE"]):
        name = path.removeprefix("/run/secrets/")
        assert path.startswith("/run/secrets/") and name in relay["secrets"], path
        assert spec["secrets"][name]["file"].startswith("./secrets/"), name
    assert args.host == "0.0.0.0" and args.rest_host == "0.0.0.0" and args.metrics_host == "0.0.0.0"

    # The whole configuration resolves as a node would resolve it.
    token = tmp_path / "rest_token"
    token.write_text(LONG_TOKEN)
    config = secure_config(config_from_args(args, {**env, "RELAY_REST_TOKEN_FILE": str(token)}))
    assert config.store == "redis://valkey:6379/0" and config.cluster_key_file == "/run/secrets/relay_cluster_key"
    # Node-link ports: listed (documentation), never published.
    link_ports = range(config.cluster_port, config.cluster_port + 2 + 3 * config.shards)
    assert f"{link_ports[0]}-{link_ports[-1]}" in [str(e) for e in relay.get("expose", [])]
    for name, service in spec["services"].items():
        for _, host_port, target, _ in published(service):
            assert host_port not in link_ports and target not in link_ports, f"{name} publishes a node link"
    # HAProxy's health checks and Prometheus use the metrics port the relay binds.
    assert config.metrics_port == 9100


def test_compose_mounts_and_prometheus_discovers_every_node() -> None:
    for path in (
        DEPLOY / "Dockerfile",
        PROMETHEUS,
        HAPROXY,
        DEPLOY / "grafana" / "provisioning" / "datasources",
        DEPLOY / "grafana" / "provisioning" / "dashboards",
        DASHBOARD,
    ):
        assert path.exists(), path
    metrics_port = int(relay_args().metrics_port)
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    relay_job = jobs["netsync-relay"]
    # One target per replica, found by DNS (`relay` resolves to all of them),
    # not one fixed name that would reach a single replica per scrape.
    assert "static_configs" not in relay_job, relay_job
    assert relay_job["dns_sd_configs"] == [
        {"names": ["relay"], "type": "A", "port": metrics_port, "refresh_interval": "15s"}
    ]
    assert "relay" in compose()["services"]
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"uid:\s*(\S+)", datasource).group(1)
    for panel in dashboard_panels():
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_dockerfile_is_slim_non_root_and_checked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), user
    assert re.search(r"^HEALTHCHECK .*healthz", text, re.M | re.S)
    # REST and metrics stay on loopback by default (tests/test_safe_defaults.py).
    for port in ("5555", "5556", "5557"):
        assert re.search(rf"^EXPOSE .*\b{port}\b", text, re.M), port


# ----------------------------------------------------------------- HAProxy


def haproxy_sections(text: str) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the section's lines, comments and blank lines left out."""
    sections: dict[tuple[str, str], list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw[0].isspace():
            kind, _, name = line.partition(" ")
            current = sections.setdefault((kind, name.strip()), [])
        else:
            current.append(line)
    return sections


def by_hand_variant(text: str) -> str:
    """haproxy.cfg as its header tells a by-hand user to edit it: each
    `server-template` line replaced by the commented `server` lines after it."""
    out = []
    for line in text.splitlines():
        if line.strip().startswith("server-template "):
            continue
        match = re.match(r"^(\s+)#\s+(server \S+ \S+:\d+.*)$", line)
        out.append(match.group(1) + match.group(2) if match else line)
    return "\n".join(out) + "\n"


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 0.001}[unit]


def test_haproxy_balances_each_client_port_with_health_checks() -> None:
    sections = haproxy_sections(HAPROXY.read_text())
    defaults = sections[("defaults", "")]
    assert "mode tcp" in defaults
    timeouts = dict(line.split()[1:3] for line in defaults if line.startswith("timeout "))
    # ZeroMQ connections live for hours: a TCP proxy sees them as tunnels.
    for kind in ("tunnel", "client", "server"):
        assert seconds(timeouts[kind]) >= 3600, (kind, timeouts)
    # Health: each node's /healthz on its metrics port, for every server.
    metrics_port = relay_args().metrics_port
    assert "option httpchk" in defaults
    assert any(re.match(r"http-check send .*\buri /healthz\b", line) for line in defaults), defaults
    assert "http-check expect status 200" in defaults
    default_server = next(line for line in defaults if line.startswith("default-server "))
    assert re.search(rf"\bcheck\b.*\bport {metrics_port}\b", default_server), default_server
    assert "on-marked-down shutdown-sessions" in default_server

    frontends = {name: lines for (kind, name), lines in sections.items() if kind == "frontend"}
    for role, port in CLIENT_PORTS.items():
        binding = [name for name, lines in frontends.items() if f"bind :{port}" in lines]
        assert len(binding) == 1, f"{role} port {port} is bound by {binding}"
        backend_name = next(
            line.split()[1] for line in frontends[binding[0]] if line.startswith("default_backend ")
        )
        backend = sections[("backend", backend_name)]
        # Each port on its own: one backend per client port, nobody else's.
        template = [line for line in backend if line.startswith("server-template ")]
        assert len(template) == 1 and re.match(rf"server-template \S+ \d+ relay:{port}\b", template[0]), backend
        assert "resolvers docker" in template[0] and "init-addr none" in template[0], template
        assert not any(line.startswith("server ") for line in backend), "fixed servers are the by-hand variant"
        expected = ("balance leastconn",) if role in ZMQ_PORTS else ("balance leastconn", "balance roundrobin")
        assert any(line in expected for line in backend), (role, backend)
    backends = [name for (kind, name) in sections if kind == "backend"]
    assert len(backends) == len(CLIENT_PORTS), backends

    resolvers = sections[("resolvers", "docker")]
    assert "nameserver dns 127.0.0.11:53" in resolvers
    assert any(line.startswith("hold valid ") for line in resolvers)
    assert any(line.startswith("hold obsolete ") for line in resolvers)

    # The stats page listens on loopback unless told otherwise.
    stats = [lines for lines in frontends.values() if "stats enable" in lines]
    assert len(stats) == 1
    binds = [line for line in stats[0] if line.startswith("bind ")]
    assert binds == ['bind "${HAPROXY_STATS_ADDR-127.0.0.1}:8404"'], binds

    # The by-hand variant lists fixed servers for every backend (several nodes).
    hand = haproxy_sections(by_hand_variant(HAPROXY.read_text()))
    for name in backends:
        servers = [line for line in hand[("backend", name)] if line.startswith("server ")]
        assert len(servers) >= 2, (name, servers)
        assert not any(line.startswith("server-template ") for line in hand[("backend", name)])


def haproxy_check(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    tool = require_tool("haproxy")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run(
        [tool, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Valid and clean: a warning is a setting HAProxy ignores or will drop.
    assert "[WARNING]" not in output and "[ALERT]" not in output, output


def test_haproxy_config_validates(tmp_path: Path) -> None:
    text = HAPROXY.read_text()
    # As shipped (Docker's DNS at 127.0.0.11 is not contacted by -c) ...
    haproxy_check(text, tmp_path)
    # ... as the compose file runs it ...
    haproxy_check(text, tmp_path, {"HAPROXY_STATS_ADDR": "0.0.0.0"})
    # ... and in the by-hand variant with fixed servers.
    haproxy_check(by_hand_variant(text), tmp_path)


def local_variant(text: str, node: RelayNode, listen: dict[int, int], stats_port: int) -> str:
    """The by-hand variant with one server (``node``), listening on loopback ports."""
    node_ports = {
        CLIENT_PORTS["control"]: node.control_port,
        CLIENT_PORTS["pub"]: node.pub_port,
        CLIENT_PORTS["transform"]: node.transform_port,
        CLIENT_PORTS["rest"]: node.rest_port,
        CLIENT_PORTS["discovery"]: node.discovery_port,
    }
    out = []
    for line in by_hand_variant(text).splitlines():
        server = re.match(r"^(\s+server) (\S+) \S+:(\d+)(.*)$", line)
        if server:
            if server.group(2) != "n1":
                continue
            line = f"{server.group(1)} n1 127.0.0.1:{node_ports[int(server.group(3))]}{server.group(4)}"
        line = re.sub(r"^(\s+bind) :(\d+)$", lambda m: f"{m.group(1)} 127.0.0.1:{listen[int(m.group(2))]}", line)
        line = line.replace("}:8404", f"}}:{stats_port}")
        line = re.sub(r"\bport 9100\b", f"port {node.metrics_port}", line)
        out.append(line)
    return "\n".join(out) + "\n"


@contextmanager
def running_haproxy(config: Path, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [require_tool("haproxy"), "-f", str(config)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "HAPROXY_STATS_ADDR": "127.0.0.1"},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def server_states(stats_port: int) -> dict[str, str]:
    """backend -> status of its server n1, from the stats page's CSV."""
    try:
        text = httpx.get(f"http://127.0.0.1:{stats_port}/;csv", timeout=2).text
    except httpx.HTTPError:
        return {}
    rows = [line.split(",") for line in text.splitlines()]
    header = rows[0]
    status = header.index("status")
    return {row[0]: row[status] for row in rows[1:] if len(row) > status and row[1] == "n1"}


def wait_states(stats_port: int, want: str, timeout: float = 20.0) -> None:
    """Wait until the node's server is ``want`` in every backend."""

    def reached() -> bool:
        states = server_states(stats_port)
        return len(states) == len(CLIENT_PORTS) and set(states.values()) == {want}

    try:
        wait_for(reached, timeout, interval=0.2, what=f"haproxy servers {want}")
    except AssertionError:
        raise AssertionError(f"haproxy servers not {want}: {server_states(stats_port)}") from None


def test_haproxy_carries_clients_rest_and_discovery_to_a_node(tmp_path: Path) -> None:
    require_tool("haproxy")
    ports = free_ports(len(CLIENT_PORTS) + 1)
    listen = dict(zip(CLIENT_PORTS.values(), ports, strict=False))
    stats_port = ports[-1]
    lb = {role: listen[port] for role, port in CLIENT_PORTS.items()}
    node = RelayNode(shards=2, discovery=True, extra_args=["--rest-token", LONG_TOKEN])
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_variant(HAPROXY.read_text(), node, listen, stats_port))
    with node, running_haproxy(config, tmp_path / "haproxy.log"):
        # Every backend's health check (GET /healthz on the metrics port) passes.
        wait_states(stats_port, "UP")

        # ZeroMQ clients through the balancer: join, see each other, sync a variable.
        via_lb = SimpleNamespace(control_port=lb["control"], transform_port=lb["transform"], pub_port=lb["pub"])
        with reference_clients(via_lb, ["lb-room"] * 2) as clients, keep_alive(clients):
            join_all(clients)
            clients[0].set_global_variable("weather", "rain")
            wait_for(lambda: clients[1].get_global_variable("weather") == "rain", 10, what="sync via haproxy")

            # REST through the balancer, bearer token end to end.
            rest = f"http://127.0.0.1:{lb['rest']}/v1/rooms/lb-room/global-variables"
            headers = {"Authorization": f"Bearer {LONG_TOKEN}"}
            assert httpx.post(rest, json={"variables": {"scene": "forest"}}, timeout=5).status_code == 401
            answer = httpx.post(rest, json={"variables": {"scene": "forest"}}, headers=headers, timeout=5)
            assert answer.status_code == 200, answer.text
            wait_for(lambda: clients[0].get_global_variable("scene") == "forest", 10, what="REST write synced")
            assert httpx.get(f"{rest}/scene", headers=headers, timeout=5).json() == {"value": "forest"}

        # TCP discovery through the balancer answers with the node's ports.
        with socket.create_connection(("127.0.0.1", lb["discovery"]), timeout=5) as probe:
            probe.sendall(b"STYLY-NETSYNC-DISCOVER")
            reply = probe.makefile("rb").readline()
        assert reply.startswith(b"STYLY-NETSYNC3|"), reply

        # A node that stops answering /healthz is taken out of every backend.
        node.stop()
        wait_states(stats_port, "DOWN")


# ----------------------------------------------------------------- Grafana


def dashboard_panels() -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])  # collapsed rows nest theirs

    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def dashboard_metric_names() -> set[str]:
    names = set()
    for panel in dashboard_panels():
        for target in panel.get("targets") or []:
            names |= set(METRIC_NAME.findall(target.get("expr", "")))
    return names


def test_dashboard_breaks_down_per_node() -> None:
    per_node: dict[str, str] = {}
    for panel in dashboard_panels():
        for target in panel.get("targets") or []:
            expr = target.get("expr", "")
            # Grouped by instance (one per node), or a bare gauge that keeps it.
            if re.search(r"\bby \((instance|[^)]*, instance)\b", expr) or re.fullmatch(r"relay_[a-z_]+", expr):
                for name in METRIC_NAME.findall(expr):
                    per_node.setdefault(name, panel["title"])
    for required in (
        "relay_control_latency_seconds_bucket",
        "relay_clients",
        "relay_store_degraded",
        "relay_cluster_nodes",
        "relay_cluster_view_generation",
        "relay_store_buffered_records",
        "relay_store_records_total",
    ):
        assert required in per_node, required
    # A per-shard series names its node too: shard 0 exists on every node.
    for panel in dashboard_panels():
        for target in panel.get("targets") or []:
            legend = target.get("legendFormat", "")
            if "{{shard}}" in legend or "{{child}}" in legend:
                assert "{{instance}}" in legend, (panel["title"], legend)
                expr = target["expr"]
                if " by (" in expr:
                    assert re.search(r"\bby \([^)]*\binstance\b", expr), (panel["title"], expr)


def test_dashboard_queries_only_exported_metrics(valkey: Any) -> None:
    wanted = dashboard_metric_names()
    # The panels the issue asks for are all there.
    for required in (
        "relay_control_latency_seconds_bucket",
        "relay_nv_sync_latency_seconds_bucket",
        "relay_transform_tokens_bytes",
        "relay_transform_replaced_frames_total",
        "relay_transform_skipped_ticks_total",
        "relay_transform_refunds_total",
        "relay_clients",
        "relay_drops_total",
        "relay_child_restarts_total",
        "relay_store_degraded",
        "relay_cluster_nodes",
    ):
        assert required in wanted, required

    # A node of a cluster (shared store), so the cluster series exist too.
    with RelayNode(shards=2, store=valkey.fresh_db_url()) as node:
        room = node.local_room("deploy-room-")
        with reference_clients(node, [room] * 2) as clients, keep_alive(clients):
            join_all(clients)
            clients[0].rpc("Ping", [])
            clients[1].set_global_variable("k", "v")
            # A one-frame message is dropped by the ingress (frame_count), so
            # drop series exist to be queried.
            bad = RawClient(node, room, "bad-peer", subscribe=False)
            try:
                bad.send_control_raw([b"only-one-frame"])
                missing: set[str] = set()

                def all_exported() -> bool:
                    missing.clear()
                    missing.update(wanted - scrape(node).names)
                    return not missing

                try:
                    wait_for(all_exported, 15.0, interval=0.5, what="dashboard metrics exported")
                except AssertionError:
                    raise AssertionError(f"dashboard queries metrics nobody exports: {sorted(missing)}") from None
            finally:
                bad.close()
