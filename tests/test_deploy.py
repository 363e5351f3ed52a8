"""deploy/: the compose file validates, and the dashboard only queries metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import RawClient, RelayNode, reference_clients, wait_for
from tests.test_metrics import join_all, keep_alive, scrape

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "netsync-relay.json"
METRIC_NAME = re.compile(r"\brelay_[a-z0-9_]+\b")


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


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (CI: apt-get install -y docker-compose)",
)
def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for service in ("relay:", "prometheus:", "grafana:"):
        assert f"\n  {service}" in config, service
    # Client ports must listen beyond loopback inside the container.
    assert re.search(r"- --host\s+- 0\.0\.0\.0", config), config
    assert re.search(r"- --rest-host\s+- 0\.0\.0\.0", config), config
    # ... which is only allowed with a token: the compose secret.
    assert "RELAY_REST_TOKEN_FILE: /run/secrets/relay_rest_token" in config, config
    assert re.search(r"(^|\n)secrets:\n  relay_rest_token:\n    file: \S+/secrets/rest_token", config), config
    # Prometheus scrapes over the compose network; nothing publishes 9100.
    assert re.search(r"- --metrics-host\s+- 0\.0\.0\.0", config), config
    assert "published: 9100" not in config and ":9100:" not in config, config


def test_compose_mounts_and_scrape_target_exist() -> None:
    for path in (
        DEPLOY / "Dockerfile",
        DEPLOY / "prometheus" / "prometheus.yml",
        DEPLOY / "grafana" / "provisioning" / "datasources",
        DEPLOY / "grafana" / "provisioning" / "dashboards",
        DASHBOARD,
    ):
        assert path.exists(), path
    assert "relay:9100" in (DEPLOY / "prometheus" / "prometheus.yml").read_text()
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


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_example_validates() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_only_exported_metrics() -> None:
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
    ):
        assert required in wanted, required

    with RelayNode(shards=2) as node:
        with reference_clients(node, ["deploy-room"] * 2) as clients, keep_alive(clients):
            join_all(clients)
            clients[0].rpc("Ping", [])
            clients[1].set_global_variable("k", "v")
            # A one-frame message is dropped by the ingress (frame_count), so
            # drop series exist to be queried.
            bad = RawClient(node, "deploy-room", "bad-peer", subscribe=False)
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
