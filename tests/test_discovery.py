"""Discovery service (PROTOCOL §8, BEHAVIOR §13): exact bytes, robustness, start-up."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from relay.config import RelayConfig
from supervisor import discovery as discovery_mod
from supervisor.discovery import (
    DISCOVERY_REQUEST,
    DiscoveryService,
    discovery_bind_host,
    discovery_response,
)
from tests.support import RelayNode, free_ports, rest_healthy, wait_for

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent
VECTORS_DIR = Path(
    os.environ.get("NETSYNC_VECTORS_DIR") or REPO / ".." / "shared" / "spec" / "vectors"
)
VECTORS = {
    entry["id"]: entry
    for entry in map(
        json.loads,
        filter(str.strip, (VECTORS_DIR / "discovery.jsonl").read_text().splitlines()),
    )
}


def vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[f"discovery/{name}"]["hex"])


def expected_for(control: int, transform: int, pub: int, rest: int, name: str) -> bytes:
    """The defaults vector with this node's ports and name substituted field by field."""
    parts = vector("udp_response_defaults").decode("utf-8").split("|")
    assert parts[1:5] == ["5555", "5557", "5556", "8800"]
    parts[1:6] = [str(control), str(transform), str(pub), str(rest), name]
    return "|".join(parts).encode("utf-8")


# ------------------------------------------------------------------ helpers


def udp_probe(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            return None
        return data


def tcp_probe(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    """Send, then read everything until the server closes (b"" = no answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def tcp_single_read(port: int, payload: bytes, timeout: float = 1.0) -> bytes:
    """Unity's probe: one write, one read with a 1 s timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


# --------------------------------------------------------------- pure parts


def test_response_matches_vectors_for_default_config() -> None:
    config = RelayConfig()
    assert discovery_response(config) == vector("udp_response_defaults")
    assert discovery_response(config, tcp=True) == vector("tcp_response_defaults")
    assert DISCOVERY_REQUEST == vector("udp_request") == vector("tcp_request")


def test_response_matches_custom_unicode_vector() -> None:
    config = RelayConfig(
        control_port=6000,
        transform_port=6002,
        pub_port=6001,
        rest_api_port=9000,
        server_name="会場サーバー",
    )
    assert discovery_response(config) == vector("udp_response_custom_unicode")


def test_bind_host_follows_only_loopback_hosts() -> None:
    assert discovery_bind_host(RelayConfig(host="127.0.0.1")) == "127.0.0.1"
    assert discovery_bind_host(RelayConfig(host="127.0.0.2")) == "127.0.0.2"
    assert discovery_bind_host(RelayConfig(host="::1")) == "::1"
    assert discovery_bind_host(RelayConfig(host="localhost")) == "localhost"
    # LAN clients broadcast: a NIC-specific or wildcard host still listens everywhere.
    assert discovery_bind_host(RelayConfig(host="0.0.0.0")) == "0.0.0.0"
    assert discovery_bind_host(RelayConfig(host="192.168.1.20")) == "0.0.0.0"


# ---------------------------------------------------- in-process service


@pytest.fixture()
def service():
    port = free_ports(1)[0]
    config = RelayConfig(
        host="127.0.0.1",
        server_discovery_port=port,
        control_port=7001,
        transform_port=7003,
        pub_port=7002,
        rest_api_port=7800,
        server_name="unit|node",
    )
    svc = DiscoveryService(config)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_service_udp_and_tcp_answers(service: DiscoveryService) -> None:
    expected = b"STYLY-NETSYNC3|7001|7003|7002|7800|unit|node"
    assert udp_probe(service.port, DISCOVERY_REQUEST) == expected
    assert tcp_probe(service.port, DISCOVERY_REQUEST) == expected + b"\n"
    # TCP strips surrounding whitespace; UDP does not.
    assert tcp_probe(service.port, b" \t" + DISCOVERY_REQUEST + b"\r\n") == expected + b"\n"
    assert udp_probe(service.port, DISCOVERY_REQUEST + b"\n", timeout=0.3) is None
    # One read of at most 1024 bytes, then strip: whitespace padding is tolerated.
    assert tcp_probe(service.port, DISCOVERY_REQUEST + b" " * 1000) == expected + b"\n"
    # The whole TCP answer arrives in the first read.
    assert tcp_single_read(service.port, DISCOVERY_REQUEST) == expected + b"\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"STYLY-NETSYNC-DISCOVE",
        b"styly-netsync-discover",
        b"STYLY-NETSYNC-DISCOVERX",
        b"\x00" + DISCOVERY_REQUEST,
        DISCOVERY_REQUEST * 2,
        DISCOVERY_REQUEST + b"\x00",
        b"\xff\xfe\xfd" * 100,
        DISCOVERY_REQUEST + b"X" * 2000,  # oversized: the one 1024-byte read does not match
        b"A" * 60000,
    ],
)
def test_service_ignores_malformed_requests(service: DiscoveryService, payload: bytes) -> None:
    if payload:
        assert udp_probe(service.port, payload, timeout=0.3) is None
    try:
        assert tcp_probe(service.port, payload) == b""
    except ConnectionResetError:
        pass  # unread bytes at close make Linux reset: still no answer
    # Still serving afterwards.
    assert udp_probe(service.port, DISCOVERY_REQUEST) is not None
    assert tcp_probe(service.port, DISCOVERY_REQUEST).startswith(b"STYLY-NETSYNC3|")


def test_service_silent_tcp_client_does_not_block_others(service: DiscoveryService) -> None:
    opened = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(5)]
    try:
        assert tcp_single_read(service.port, DISCOVERY_REQUEST).startswith(b"STYLY-NETSYNC3|")
        assert udp_probe(service.port, DISCOVERY_REQUEST) is not None
        # Answered before the first silent connection's 2 s read timeout, which
        # a server serving one connection at a time would have to wait out.
        assert time.monotonic() - opened < 1.5
        # Silent connections are closed, unanswered, after the 2 s read timeout.
        idle[0].settimeout(4.0)
        assert idle[0].recv(16) == b""
        assert 1.5 < time.monotonic() - opened < 3.5
    finally:
        for sock in idle:
            sock.close()


def test_service_caps_open_connections(
    service: DiscoveryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery_mod, "MAX_TCP_CONNECTIONS", 3)
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(3)]
    try:
        wait_for(lambda: len(service._conns) == 3, 2, what="3 idle connections accepted")
        # Over the cap: closed at once, without an answer; UDP unaffected.
        assert tcp_probe(service.port, DISCOVERY_REQUEST) == b""
        assert udp_probe(service.port, DISCOVERY_REQUEST) is not None
        assert service.counts["tcp_refused"] >= 1
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: len(service._conns) == 0, 4, what="slots freed")
    assert tcp_probe(service.port, DISCOVERY_REQUEST).startswith(b"STYLY-NETSYNC3|")


def test_start_raises_when_port_taken_and_stop_is_safe() -> None:
    port = free_ports(1)[0]
    holders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()]
    try:
        for sock in holders:
            sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: ours cannot share
        holders[1].listen(1)
        svc = DiscoveryService(RelayConfig(host="127.0.0.1", server_discovery_port=port))
        with pytest.raises(OSError):
            svc.start()
        svc.stop()
        assert not svc.running
    finally:
        for sock in holders:
            sock.close()


# ---------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def node():
    with RelayNode(shards=2, discovery=True, extra_args=["--server-name", "会場 relay"]) as n:
        wait_for(
            lambda: udp_probe(n.discovery_port, DISCOVERY_REQUEST, timeout=0.2),
            15,
            what="discovery up",
        )
        yield n


def node_expected(n: RelayNode) -> bytes:
    return expected_for(n.control_port, n.transform_port, n.pub_port, n.rest_port, "会場 relay")


@pytest.mark.integration
def test_node_answers_udp_and_tcp_with_exact_bytes(node: RelayNode) -> None:
    expected = node_expected(node)
    assert udp_probe(node.discovery_port, DISCOVERY_REQUEST) == expected
    assert tcp_probe(node.discovery_port, DISCOVERY_REQUEST) == expected + b"\n"
    assert tcp_single_read(node.discovery_port, DISCOVERY_REQUEST) == expected + b"\n"
    # What a client does with it (PROTOCOL §8): >= 6 parts, part 0 is the prefix.
    parts = expected.decode("utf-8").split("|")
    assert len(parts) >= 6 and parts[0] == "STYLY-NETSYNC3"
    assert [int(p) for p in parts[1:5]] == [
        node.control_port,
        node.transform_port,
        node.pub_port,
        node.rest_port,
    ]


@pytest.mark.integration
def test_node_ignores_malformed_and_oversized_requests_and_keeps_serving(
    node: RelayNode,
) -> None:
    for payload in (
        b"garbage",
        DISCOVERY_REQUEST + b"\n",
        b" " + DISCOVERY_REQUEST,
        b"x" * 5000,
        DISCOVERY_REQUEST + b"\x00" * 1500,
    ):
        assert udp_probe(node.discovery_port, payload, timeout=0.3) is None, payload[:40]
    for payload in (b"garbage\n", b"x" * 5000, b"STYLY-NETSYNC2"):
        try:
            assert tcp_probe(node.discovery_port, payload) == b"", payload[:40]
        except ConnectionResetError:
            pass
    # A half-open connection and a reset one.
    half = socket.create_connection(("127.0.0.1", node.discovery_port))
    reset = socket.create_connection(("127.0.0.1", node.discovery_port))
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.close()
    try:
        expected = node_expected(node)
        assert udp_probe(node.discovery_port, DISCOVERY_REQUEST) == expected
        assert tcp_probe(node.discovery_port, DISCOVERY_REQUEST) == expected + b"\n"
    finally:
        half.close()
    assert node.child_pid("rest") is not None


@pytest.mark.integration
def test_node_without_discovery_does_not_answer() -> None:
    with RelayNode(shards=1, discovery=False) as n:
        wait_for(lambda: n.child_pid("rest"), 10, what="rest child")
        time.sleep(0.5)
        assert udp_probe(n.discovery_port, DISCOVERY_REQUEST, timeout=0.3) is None
        with pytest.raises(OSError):
            tcp_probe(n.discovery_port, DISCOVERY_REQUEST, timeout=0.5)


@pytest.mark.integration
def test_discovery_bind_failure_is_logged_and_relay_keeps_running() -> None:
    n = RelayNode(shards=1, discovery=True)
    holders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()]
    try:
        for sock in holders:
            sock.bind(("127.0.0.1", n.discovery_port))
        holders[1].listen(1)
        with n:
            wait_for(lambda: rest_healthy(n.rest_port), 15, what="REST health")
            wait_for(lambda: "discovery" in n.log_text() and "cannot bind" in n.log_text(), 5)
            time.sleep(0.5)
            state = n.supervisor_state()
            assert state is not None
            assert state["children"]["rest"]["restarts"] == 0
            assert rest_healthy(n.rest_port)
    finally:
        for sock in holders:
            sock.close()
