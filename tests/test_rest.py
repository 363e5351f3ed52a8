"""REST bridge (BEHAVIOR §12): API shape, validation, auth, CORS, shard failures.

The first half runs the app in-process against a fake shard (fast, exact
error shapes); the second half runs real nodes and checks that REST writes
reach real clients through the control lane.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import zmq

from relay.admin import Outcome
from relay.admin import ok as admin_ok
from relay.config import RelayConfig
from relay.hashing import shard_for_room
from relay.protocol.messages import ClientVarSync
from supervisor.rest import (
    ShardClient,
    ShardReplyError,
    ShardUnavailable,
    create_app,
    iter_log_lines,
    parse_timestamp,
)
from tests.support import RawClient, RelayNode, reference_clients, wait_for

with warnings.catch_warnings():
    # Starlette nags about httpx as its test transport; irrelevant here.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(120)

FOUR_BYTE = "\U0001f600"  # 4 bytes in UTF-8
ORIGIN = "https://dashboard.example"


# =====================================================================
# in-process: the app against a fake shard


class FakeShard:
    """Answers admin ops like a shard would, from dicts; records requests."""

    def __init__(self) -> None:
        self.globals: dict[str, dict[str, str]] = {}
        self.client_vars: dict[tuple[str, str], dict[str, str]] = {}
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.unavailable: set[int] = set()

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        self.requests.append((shard, body))
        if shard in self.unavailable:
            raise ShardUnavailable(shard, 0.5)
        op, room = body["op"], body.get("room")
        if op == "globals_set":
            store = self.globals.setdefault(room, {})
            if len(set(store) | set(body["variables"])) > 100:
                return Outcome.LIMIT_EXCEEDED, {"detail": "Too many global variables (> 100) for room"}
            store.update(body["variables"])
            return Outcome.OK, {
                "roomId": room,
                "result": {k: {"state": "applied"} for k in body["variables"]},
            }
        if op == "globals_get":
            return Outcome.OK, {"variables": dict(self.globals.get(room, {}))}
        key = (room, body.get("device"))
        if op == "client_vars_set":
            store = self.client_vars.setdefault(key, {})
            store.update(body["variables"])
            return Outcome.OK, {
                "roomId": room,
                "deviceId": key[1],
                "mapping": {"clientNo": None},
                "result": {k: {"state": "queued"} for k in body["variables"]},
            }
        if op == "client_vars_get":
            return Outcome.OK, {"clientNo": None, "variables": dict(self.client_vars.get(key, {}))}
        if op == "client_vars_delete":
            store = self.client_vars.get(key, {})
            if body["name"] is None:
                count = len(store)
                store.clear()
            else:
                count = 1 if store.pop(body["name"], None) is not None else 0
            return Outcome.OK, {"clientNo": None, "deletedCount": count}
        return Outcome.BAD_REQUEST, {"detail": f"unknown op {op!r}"}

    async def close(self) -> None:
        pass


def make_client(**overrides: Any) -> tuple[TestClient, FakeShard]:
    config = RelayConfig(shards=4, **overrides)
    fake = FakeShard()
    return TestClient(create_app(config, fake)), fake


@pytest.fixture()
def local() -> Iterator[tuple[TestClient, FakeShard]]:
    client, fake = make_client()
    with client:
        yield client, fake


def test_routes_each_room_to_its_owning_shard(local: tuple[TestClient, FakeShard]) -> None:
    client, fake = local
    for room in (f"room-{i}" for i in range(20)):
        assert client.post(
            f"/v1/rooms/{room}/global-variables", json={"variables": {"k": room}}
        ).status_code == 200
        assert fake.requests[-1][0] == shard_for_room(room.encode(), 4)
    assert len({shard for shard, _ in fake.requests}) > 1


def test_openapi_document_lists_every_endpoint(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    doc = client.get("/openapi.json").json()
    cv = "/v1/rooms/{room_id}/devices/{device_id}/client-variables"
    gv = "/v1/rooms/{room_id}/global-variables"
    expected = {
        "/": {"get"},
        cv: {"get", "post", "delete"},
        cv + "/{name}": {"get", "delete"},
        gv: {"get", "post"},
        gv + "/{name}": {"get"},
        "/logs/export": {"get"},
        # The operator console's API (tests/test_console_api.py).
        "/v1/cluster": {"get"},
        "/v1/rooms": {"get"},
        "/v1/rooms/{room_id}": {"get"},
        "/v1/rooms/{room_id}/actions": {"post"},
    }
    assert {path: set(ops) for path, ops in doc["paths"].items()} == expected
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"variables": {FOUR_BYTE * 64: "v"}}, 422, "256 bytes"),
        ({"variables": {"n" * 65: "v"}}, 422, "at most 64 characters"),
        ({"variables": {"": "v"}}, 422, "at least 1 character"),
        ({"variables": {"n": "v" * 1025}}, 422, "at most 1024 characters"),
        ({"variables": {"n": 5}}, 422, "valid string"),
        ({"variables": {"n": None}}, 422, "valid string"),
        ({"variables": {"n": ["a"]}}, 422, "valid string"),
        ({"variables": ["n", "v"]}, 422, "valid dictionary"),
        ({"variables": None}, 422, "valid dictionary"),
        ([1, 2], 422, "valid dictionary"),
        ({"variables": {}}, 400, "variables must not be empty"),
        ({}, 400, "variables must not be empty"),
        ({"other": 1}, 400, "variables must not be empty"),
    ],
)
@pytest.mark.parametrize("target", ["global", "client"])
def test_body_validation(
    local: tuple[TestClient, FakeShard], body: Any, status: int, needle: str, target: str
) -> None:
    client, fake = local
    path = (
        "/v1/rooms/r/global-variables"
        if target == "global"
        else "/v1/rooms/r/devices/d/client-variables"
    )
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if status == 422:
        assert isinstance(detail, list) and detail, detail
        assert all({"loc", "msg", "type"} <= set(item) for item in detail)
        assert needle in " ".join(item["msg"] for item in detail)
    else:
        assert detail == needle
    assert fake.requests == []  # nothing reached a shard


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "JSON decode error"),
        (b"", "Field required"),
        (b'{"variables": {"\\ud800": "x"}}', "unicode"),
        (b'{"variables": {"n": "\\udfff"}}', "unicode"),
    ],
)
def test_malformed_json_is_422(
    local: tuple[TestClient, FakeShard], content: bytes, needle: str
) -> None:
    client, fake = local
    response = client.post(
        "/v1/rooms/r/global-variables",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert needle in response.text
    assert fake.requests == []


def test_limits_at_the_edge_are_accepted(local: tuple[TestClient, FakeShard]) -> None:
    client, fake = local
    variables = {
        "n" * 64: "v" * 1024,
        FOUR_BYTE * 63 + "€": FOUR_BYTE * 1024,  # 64 chars, 255 bytes; values count chars
        "x": "",
    }
    response = client.post("/v1/rooms/r/global-variables", json={"variables": variables})
    assert response.status_code == 200, response.text
    assert fake.requests[-1][1]["variables"] == variables


def test_path_name_validation(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    for path in (
        "/v1/rooms/r/global-variables/",
        "/v1/rooms/r/devices/d/client-variables/",
    ):
        assert client.get(path + "n" * 65).status_code == 422
        response = client.get(path + FOUR_BYTE * 64)
        assert response.status_code == 422
        assert "bytes" in response.json()["detail"][0]["msg"]
    assert client.delete("/v1/rooms/r/devices/d/client-variables/" + "n" * 65).status_code == 422


def test_not_found_messages(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    response = client.get("/v1/rooms/r/global-variables/missing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Global variable 'missing' not found"}
    response = client.get("/v1/rooms/r/devices/dev-1/client-variables/hp")
    assert response.status_code == 404
    assert response.json() == {"detail": "Client variable 'hp' not found for device 'dev-1'"}


def test_shard_conflict_passes_through(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    variables = {f"g{i}": "v" for i in range(101)}
    response = client.post("/v1/rooms/r/global-variables", json={"variables": variables})
    assert response.status_code == 409
    assert response.json() == {"detail": "Too many global variables (> 100) for room"}


def test_unavailable_shard_is_503(local: tuple[TestClient, FakeShard]) -> None:
    client, fake = local
    shard = shard_for_room(b"r", 4)
    fake.unavailable.add(shard)
    response = client.get("/v1/rooms/r/global-variables")
    assert response.status_code == 503
    assert response.json() == {"detail": f"shard {shard} did not answer within 0.5s"}


def test_body_size_cap_is_413_json() -> None:
    client, fake = make_client(rest_max_body_bytes=200)
    with client:
        big = {"variables": {"n": "v" * 300}}
        response = client.post("/v1/rooms/r/global-variables", json=big)
        assert response.status_code == 413
        assert response.json() == {"detail": "request body exceeds 200 bytes"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"variables": {"n": "'
            for _ in range(10):
                yield b"v" * 50
            yield b'"}}'

        response = client.post(
            "/v1/rooms/r/global-variables",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json() == {"detail": "request body exceeds 200 bytes"}
        small = client.post("/v1/rooms/r/global-variables", json={"variables": {"n": "v"}})
        assert small.status_code == 200
    assert len(fake.requests) == 1


def test_bearer_token() -> None:
    # CORS is off unless origins are listed; with them, error replies stay readable.
    client, _ = make_client(rest_token="s3cret", rest_cors_origins="*")
    with client:
        missing = client.get("/")
        assert missing.status_code == 401
        assert missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer nope", "Bearer s3cret2", "Bearer ", "Basic s3cret", "s3cret"):
            response = client.get("/", headers={"Authorization": header})
            assert response.status_code in (401, 403), header
            assert response.json()["detail"]
        assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 403
        ok = client.get("/", headers={"Authorization": "bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        assert client.get("/openapi.json").status_code == 401
        # Preflights never carry credentials, so they must pass without a token.
        preflight = client.options(
            "/v1/rooms/r/global-variables",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        # Error replies stay readable by a browser.
        denied = client.get("/", headers={"Origin": ORIGIN})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == ORIGIN


def test_cors_preflight_and_simple_request() -> None:
    # "*" configures the reference's rule: any origin, with credentials.
    client, _ = make_client(rest_cors_origins="*")
    with client:
        check_cors(client.options, client.get, "/v1/rooms/r/global-variables")


def test_no_cors_headers_unless_origins_are_configured(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    path = "/v1/rooms/r/global-variables"
    preflight = client.options(
        path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get(path, headers={"Origin": ORIGIN})
    assert simple.status_code == 200
    assert not [h for h in simple.headers if h.startswith("access-control-")]


def test_cors_allows_only_the_listed_origins() -> None:
    client, _ = make_client(rest_cors_origins=f"{ORIGIN}/, http://localhost:3000")
    path = "/v1/rooms/r/global-variables"
    with client:
        for origin in (ORIGIN, "http://localhost:3000"):
            preflight = client.options(
                path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
            assert client.get(path, headers={"Origin": origin}).headers["access-control-allow-origin"] == origin
        other = client.get(path, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = client.options(
            path, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 400


def check_cors(options: Any, get: Any, path: str, **kwargs: Any) -> None:
    for origin in (ORIGIN, "http://localhost:3000", "null"):
        preflight = options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "Content-Type, Authorization",
            },
            **kwargs,
        )
        assert preflight.status_code == 200, preflight.text
        h = preflight.headers
        assert h["access-control-allow-origin"] == origin
        assert h["access-control-allow-credentials"] == "true"
        assert set(h["access-control-allow-methods"].split(", ")) == {
            "GET",
            "POST",
            "PUT",
            "DELETE",
            "OPTIONS",
        }
        allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization"} <= allowed
        assert h["access-control-max-age"] == "3600"
    refused = options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "X-Custom",
        },
        **kwargs,
    )
    assert refused.status_code == 400
    simple = get(path, headers={"Origin": ORIGIN}, **kwargs)
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert simple.headers["access-control-allow-credentials"] == "true"
    assert "origin" in simple.headers.get("vary", "").lower()
    plain = get(path, **kwargs)
    assert "access-control-allow-origin" not in plain.headers


# ----------------------------------------------------------- log export


def write_log(path: Path, events: list[tuple[datetime, str, str]]) -> None:
    lines = [
        orjson.dumps(
            {
                "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": level,
                "msg": msg,
            }
        ).decode()
        for ts, level, msg in events
    ]
    path.write_text("\n".join(lines) + "\nnot json\n\n{\"ts\": \"bad\", \"level\": \"INFO\"}\n")
    # As if written live: the exporter skips files last modified before the window.
    last = max(ts for ts, _, _ in events).timestamp()
    os.utime(path, (last, last))


@pytest.fixture()
def log_dir(tmp_path: Path) -> Path:
    t0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    at = [t0 + timedelta(seconds=s) for s in range(10)]
    write_log(tmp_path / "netsync-relay-shard-0.log.1", [(at[0], "INFO", "s0"), (at[3], "ERROR", "s3")])
    write_log(tmp_path / "netsync-relay-shard-0.log", [(at[5], "DEBUG", "s5"), (at[8], "WARNING", "s8")])
    write_log(tmp_path / "netsync-relay-rest.log", [(at[1], "INFO", "r1"), (at[4], "CRITICAL", "r4"), (at[9], "INFO", "r9")])
    write_log(tmp_path / "other.log", [(at[2], "ERROR", "foreign")])
    return tmp_path


def msgs(lines: list[str]) -> list[str]:
    return [orjson.loads(line)["msg"] for line in lines if line]


def test_iter_log_lines_merges_streams_in_time_order(log_dir: Path) -> None:
    t0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    every = list(iter_log_lines(log_dir, t0, t0 + timedelta(hours=1)))
    assert msgs(every) == ["s0", "r1", "s3", "r4", "s5", "s8", "r9"]
    window = iter_log_lines(log_dir, t0 + timedelta(seconds=3), t0 + timedelta(seconds=8), 30)
    assert msgs(list(window)) == ["s3", "r4", "s8"]  # inclusive bounds, WARNING and up
    assert parse_timestamp("2030-01-01T12:00:00", "from") == t0  # naive = UTC


def test_logs_export_endpoint(log_dir: Path) -> None:
    client, _ = make_client(log_dir=str(log_dir))
    with client:
        response = client.get(
            "/logs/export",
            params={"from": "2030-01-01T12:00:01Z", "to": "2030-01-01T14:00:00+01:00", "min_severity": "error"},
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert msgs(response.text.split("\n")) == ["s3", "r4"]
        assert response.text.endswith("\n")
        bad = [
            ({"from": "yesterday", "to": "2030-01-01"}, "from must be an ISO 8601 timestamp"),
            ({"from": "2030-01-01", "to": "x"}, "to must be an ISO 8601 timestamp"),
            ({"from": "2030-01-02", "to": "2030-01-01"}, "to must not be before from"),
            ({"from": "2030-01-01", "to": "2030-01-02", "min_severity": "LOUD"}, "min_severity"),
        ]
        for params, needle in bad:
            response = client.get("/logs/export", params=params)
            assert response.status_code == 400, params
            assert needle in response.json()["detail"]
        for params in ({"from": "2030-01-01"}, {"to": "2030-01-01"}, {}):
            response = client.get("/logs/export", params=params)
            assert response.status_code == 422
            assert isinstance(response.json()["detail"], list)


def test_logs_export_is_404_without_file_logging(local: tuple[TestClient, FakeShard]) -> None:
    client, _ = local
    response = client.get("/logs/export", params={"from": "2030-01-01", "to": "2030-01-02"})
    assert response.status_code == 404
    assert response.json()["detail"]


# ---------------------------------------------------------- ShardClient


def test_shard_client_times_out_and_discards_late_replies(tmp_path: Path) -> None:
    """A fake shard answers the first request only after the client gave up."""
    endpoint = f"ipc://{tmp_path}/admin.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    stop = threading.Event()

    def shard() -> None:
        held: list[list[bytes]] = []
        while not stop.is_set():
            if not router.poll(20):
                continue
            peer, request_id, body = router.recv_multipart()
            request = orjson.loads(body)
            reply = [peer, request_id, orjson.dumps(admin_ok({"echo": request["n"]}))]
            if request["n"] == -1:
                router.send_multipart([peer, request_id, b"not a reply"])
                continue
            if request["n"] == 0:
                held.append(reply)  # stall the first request...
                continue
            for late in held:  # ...and answer it just before the next one
                router.send_multipart(late)
            held.clear()
            router.send_multipart(reply)

    thread = threading.Thread(target=shard, daemon=True)
    thread.start()

    async def scenario() -> None:
        client = ShardClient([endpoint], timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(ShardUnavailable) as info:
                await client.request(0, {"n": 0})
            assert 0.25 < time.monotonic() - started < 1.0
            assert str(info.value) == "shard 0 did not answer within 0.3s"
            assert await client.request(0, {"n": 1}) == (Outcome.OK, {"echo": 1})
            replies = await asyncio.gather(*(client.request(0, {"n": n}) for n in range(2, 60)))
            assert [body["echo"] for _, body in replies] == list(range(2, 60))
            assert client.counts["late_replies"] == 1
            with pytest.raises(ShardReplyError):
                await client.request(0, {"n": -1})
        finally:
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(2)
        router.close(0)
        ctx.term()


# =====================================================================
# real processes


def rest_ready(node: RelayNode, headers: dict[str, str] | None = None) -> None:
    def ok() -> bool:
        try:
            return httpx.get(f"{base(node)}/", headers=headers, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ok, 20, interval=0.05, what="REST bridge")


def base(node: RelayNode) -> str:
    return f"http://127.0.0.1:{node.rest_port}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayNode]:
    logs = tmp_path_factory.mktemp("relay-logs")
    with RelayNode(
        shards=3,
        # CORS is off by default; test_cors_on_a_real_node checks the "*" rule.
        env={"RELAY_REST_REQUEST_TIMEOUT": "1.0", "RELAY_REST_CORS_ORIGINS": "*"},
        extra_args=["--log-dir", str(logs)],
    ) as relay_node:
        relay_node.logs = logs  # type: ignore[attr-defined]
        rest_ready(relay_node)
        yield relay_node


@pytest.fixture()
def api(node: RelayNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base(node), timeout=5.0) as client:
        yield client


def rooms_per_shard(shards: int, prefix: str) -> list[str]:
    """One room id per shard, so a test touches every shard."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < shards:
        room = f"{prefix}-{i}"
        found.setdefault(shard_for_room(room.encode("utf-8"), shards), room)
        i += 1
    return [found[k] for k in range(shards)]


pytest_integration = pytest.mark.integration


@pytest_integration
def test_node_health_and_openapi(api: httpx.Client) -> None:
    assert api.get("/").json() == {"status": "ok"}
    doc = api.get("/openapi.json").json()
    assert "/v1/rooms/{room_id}/global-variables" in doc["paths"]


@pytest_integration
def test_globals_round_trip_on_every_shard(api: httpx.Client) -> None:
    rooms = rooms_per_shard(3, "g-room")
    for room in rooms:
        response = api.post(
            f"/v1/rooms/{room}/global-variables",
            json={"variables": {"scene": f"scene of {room}", "mode": "play"}},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "roomId": room,
            "result": {"scene": {"state": "applied"}, "mode": {"state": "applied"}},
        }
    for room in rooms:
        assert api.get(f"/v1/rooms/{room}/global-variables").json() == {
            "variables": {"scene": f"scene of {room}", "mode": "play"}
        }
        assert api.get(f"/v1/rooms/{room}/global-variables/scene").json() == {
            "value": f"scene of {room}"
        }
    # Overwrite; names with spaces and non-ASCII in the path round-trip too.
    room = rooms[0]
    api.post(f"/v1/rooms/{room}/global-variables", json={"variables": {"scene": "b", "ö k": "ü"}})
    assert api.get(f"/v1/rooms/{room}/global-variables/scene").json() == {"value": "b"}
    assert api.get(f"/v1/rooms/{room}/global-variables/ö k").json() == {"value": "ü"}
    missing = api.get(f"/v1/rooms/{room}/global-variables/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Global variable 'nothing' not found"}
    assert api.get("/v1/rooms/never-used-room/global-variables").json() == {"variables": {}}


@pytest_integration
def test_client_variables_round_trip_and_delete(api: httpx.Client) -> None:
    for room in rooms_per_shard(3, "c-room"):
        url = f"/v1/rooms/{room}/devices/dev-offline/client-variables"
        response = api.post(url, json={"variables": {"hp": "10", "team": "red"}})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "roomId": room,
            "deviceId": "dev-offline",
            "mapping": {"clientNo": None},
            "result": {"hp": {"state": "queued"}, "team": {"state": "queued"}},
        }
        assert api.get(url).json() == {"clientNo": None, "variables": {"hp": "10", "team": "red"}}
        assert api.get(url + "/hp").json() == {"clientNo": None, "value": "10"}
        missing = api.get(url + "/mana")
        assert missing.status_code == 404
        assert missing.json() == {
            "detail": "Client variable 'mana' not found for device 'dev-offline'"
        }
        assert api.delete(url + "/hp").json() == {"clientNo": None, "deletedCount": 1}
        assert api.delete(url + "/hp").json() == {"clientNo": None, "deletedCount": 0}
        assert api.delete(url).json() == {"clientNo": None, "deletedCount": 1}
        assert api.get(url).json() == {"clientNo": None, "variables": {}}
    unknown = api.get("/v1/rooms/nobody-here/devices/ghost/client-variables")
    assert unknown.json() == {"clientNo": None, "variables": {}}


@pytest_integration
def test_reference_client_sees_rest_writes(node: RelayNode, api: httpx.Client) -> None:
    room = "rest-live-room"
    with reference_clients(node, [room]) as (client,):
        wait_for(lambda: client.client_no is not None, 10, what="client number")
        response = api.post(
            f"/v1/rooms/{room}/global-variables", json={"variables": {"weather": "rain"}}
        )
        assert response.status_code == 200
        wait_for(lambda: client.get_global_variable("weather") == "rain", 5, what="global sync")

        url = f"/v1/rooms/{room}/devices/{client.device_id}/client-variables"
        response = api.post(url, json={"variables": {"color": "blue"}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["mapping"] == {"clientNo": client.client_no}
        assert body["result"] == {"color": {"state": "applied"}}
        wait_for(
            lambda: client.get_client_variable(client.client_no, "color") == "blue",
            5,
            what="client var sync",
        )
        assert api.get(url).json() == {"clientNo": client.client_no, "variables": {"color": "blue"}}
        assert api.delete(url).json() == {"clientNo": client.client_no, "deletedCount": 1}
        wait_for(
            lambda: client.get_all_client_variables(client.client_no) == {},
            5,
            what="delete sync",
        )


@pytest_integration
def test_queued_client_variables_reach_the_device_when_it_joins(
    node: RelayNode, api: httpx.Client
) -> None:
    room, device = "rest-queue-room", "dev-joins-later"
    url = f"/v1/rooms/{room}/devices/{device}/client-variables"
    assert api.post(url, json={"variables": {"seat": "A7"}}).json()["result"] == {
        "seat": {"state": "queued"}
    }
    raw = RawClient(node, room, device, subscribe=False)
    try:
        number = raw.join()

        def has_seat(msg: Any) -> bool:
            return isinstance(msg, ClientVarSync) and any(
                c.client_no == number and [(v.name, v.value) for v in c.variables] == [("seat", "A7")]
                for c in msg.clients
            )

        assert raw.recv_control_until(has_seat, 5) is not None
        assert api.get(url).json() == {"clientNo": number, "variables": {"seat": "A7"}}
        response = api.post(url, json={"variables": {"seat": "B1"}})
        assert response.json()["result"] == {"seat": {"state": "applied"}}
        assert response.json()["mapping"] == {"clientNo": number}
    finally:
        raw.close()


@pytest_integration
def test_limits_and_malformed_bodies_on_a_real_node(api: httpx.Client) -> None:
    room = "limits-room"
    cv = f"/v1/rooms/{room}/devices/dev-lim/client-variables"
    gv = f"/v1/rooms/{room}/global-variables"
    # W11: 64 characters but 256 bytes -> refused, with the reason.
    response = api.post(gv, json={"variables": {FOUR_BYTE * 64: "v"}})
    assert response.status_code == 422
    assert "255 bytes" in response.json()["detail"][0]["msg"]
    response = api.post(cv, json={"variables": {FOUR_BYTE * 64: "v"}})
    assert response.status_code == 422
    # 63 four-byte characters fit (252 bytes) and round-trip.
    name = FOUR_BYTE * 63
    assert api.post(gv, json={"variables": {name: "ok"}}).status_code == 200
    assert api.get(f"{gv}/{name}").json() == {"value": "ok"}
    for body, status in (
        ({"variables": {"n" * 65: "v"}}, 422),
        ({"variables": {"n": "v" * 1025}}, 422),
        ({"variables": {"n": 1}}, 422),
        ({"variables": {}}, 400),
    ):
        response = api.post(gv, json=body)
        assert response.status_code == status
        assert response.json()["detail"]
    response = api.post(gv, content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 422
    response = api.post(gv, json={"variables": {"big": "v" * 1000, **{f"k{i}": "v" * 1000 for i in range(70)}}})
    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]

    # 100 distinct names fit; the 101st is refused as a whole, nothing applied.
    first = {f"v{i:03d}": "x" for i in range(100)}
    assert api.post(cv, json={"variables": first}).status_code == 200
    response = api.post(cv, json={"variables": {"v000": "changed", "extra": "x"}})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("Too many client variables (> 100) for device")
    assert api.get(f"{cv}/v000").json()["value"] == "x"
    assert api.post(cv, json={"variables": {"v000": "updated"}}).status_code == 200
    more = {f"g{i:03d}": "x" for i in range(101)}
    response = api.post(f"/v1/rooms/{room}-g/global-variables", json={"variables": more})
    assert response.status_code == 409
    assert response.json()["detail"]
    assert api.get(f"/v1/rooms/{room}-g/global-variables").json() == {"variables": {}}


@pytest_integration
def test_concurrent_requests_get_their_own_replies(api: httpx.Client, node: RelayNode) -> None:
    rooms = [f"conc-{i}" for i in range(24)]

    def roundtrip(room: str) -> tuple[str, Any]:
        with httpx.Client(base_url=base(node), timeout=5.0) as client:
            client.post(f"/v1/rooms/{room}/global-variables", json={"variables": {"who": room}})
            return room, client.get(f"/v1/rooms/{room}/global-variables/who").json()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(roundtrip, rooms * 2))
    assert all(body == {"value": room} for room, body in results)


@pytest_integration
def test_cors_on_a_real_node(api: httpx.Client) -> None:
    check_cors(api.options, api.get, "/v1/rooms/cors-room/global-variables")


@pytest_integration
def test_log_export_on_a_real_node(node: RelayNode, api: httpx.Client) -> None:
    now = datetime.now(UTC)
    params = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    wait_for(lambda: api.get("/logs/export", params=params).text.strip(), 5, what="log lines")
    lines = [orjson.loads(x) for x in api.get("/logs/export", params=params).text.splitlines()]
    assert {"supervisor", "rest"} & {event.get("child") for event in lines}
    stamps = [parse_timestamp(event["ts"], "ts") for event in lines]
    assert stamps == sorted(stamps)
    assert all(now - timedelta(hours=1) <= s <= now + timedelta(hours=1) for s in stamps)
    warnings = api.get("/logs/export", params={**params, "min_severity": "WARNING"}).text.splitlines()
    assert all(orjson.loads(x)["level"] in ("WARNING", "ERROR", "CRITICAL") for x in warnings)
    assert len(warnings) < len(lines)
    assert api.get("/logs/export", params={"from": "soon", "to": "later"}).status_code == 400


@pytest_integration
def test_stalled_shard_gives_503_and_others_keep_working(
    node: RelayNode, api: httpx.Client
) -> None:
    rooms = rooms_per_shard(3, "stall-room")
    stalled, healthy = rooms[1], rooms[2]
    api.post(f"/v1/rooms/{stalled}/global-variables", json={"variables": {"k": "before"}})
    pid = node.child_pid("shard-1")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = api.post(f"/v1/rooms/{stalled}/global-variables", json={"variables": {"k": "during"}})
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json() == {"detail": "shard 1 did not answer within 1s"}
        assert 0.9 < elapsed < 2.0
        # Other shards do not wait for the stalled one (which would cost its 1 s timeout).
        started = time.monotonic()
        assert api.get(f"/v1/rooms/{healthy}/global-variables").status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    # The stalled request's late reply must not answer this GET (different shape).
    response = api.get(f"/v1/rooms/{stalled}/global-variables")
    assert response.status_code == 200
    assert set(response.json()) == {"variables"}
    assert response.json()["variables"]["k"] in ("before", "during")
    assert api.get("/").json() == {"status": "ok"}


@pytest_integration
def test_token_protected_node() -> None:
    with RelayNode(shards=1, env={"RELAY_REST_TOKEN": "tok-123", "RELAY_REST_CORS_ORIGINS": ORIGIN}) as secured:
        good = {"Authorization": "Bearer tok-123"}
        rest_ready(secured, good)
        with httpx.Client(base_url=base(secured), timeout=5.0) as client:
            url = "/v1/rooms/secure/global-variables"
            missing = client.post(url, json={"variables": {"a": "1"}})
            assert missing.status_code == 401
            assert missing.json()["detail"]
            wrong = client.post(url, json={"variables": {"a": "1"}}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            assert wrong.json()["detail"]
            assert client.get(url, headers=good).json() == {"variables": {}}  # nothing applied
            assert client.post(url, json={"variables": {"a": "1"}}, headers=good).status_code == 200
            assert client.get(url, headers=good).json() == {"variables": {"a": "1"}}
            assert client.get("/").status_code == 401
            preflight = client.options(
                url,
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            # Without a log dir the export endpoint exists but answers 404.
            export = client.get(
                "/logs/export", params={"from": "2020-01-01", "to": "2030-01-01"}, headers=good
            )
            assert export.status_code == 404


# =====================================================================
# the rest child on its own: start-up failure, signals, heartbeat


def spawn_frontdesk(config: RelayConfig, run_dir: str) -> tuple[Any, Any]:
    import multiprocessing

    from supervisor.frontdesk import run_frontdesk

    ctx = multiprocessing.get_context("spawn")
    heartbeat = ctx.RawValue("d", 0.0)
    process = ctx.Process(
        target=run_frontdesk, args=(config.to_dict(), run_dir, heartbeat), daemon=True
    )
    process.start()
    return process, heartbeat


def test_frontdesk_exits_1_when_rest_port_is_taken(tmp_path: Path) -> None:
    import socket

    from tests.support import free_ports

    rest_port, discovery_port = free_ports(2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", rest_port))
    holder.listen(1)
    try:
        config = RelayConfig(
            shards=1, rest_api_port=rest_port, server_discovery_port=discovery_port, host="127.0.0.1"
        )
        process, _ = spawn_frontdesk(config, str(tmp_path))
        process.join(15)
        assert process.exitcode == 1
    finally:
        holder.close()


def test_frontdesk_signals_heartbeat_and_discovery(tmp_path: Path) -> None:
    from tests.support import free_ports, rest_healthy
    from tests.test_discovery import udp_probe

    rest_port, discovery_port = free_ports(2)
    config = RelayConfig(
        shards=1, rest_api_port=rest_port, server_discovery_port=discovery_port, host="127.0.0.1"
    )
    process, heartbeat = spawn_frontdesk(config, str(tmp_path))
    try:
        wait_for(lambda: rest_healthy(rest_port), 15, interval=0.05, what="REST up")
        wait_for(lambda: heartbeat.value > 0, 2, what="first heartbeat (= ready)")
        assert wait_for(lambda: udp_probe(discovery_port, b"STYLY-NETSYNC-DISCOVER", 0.2), 5)
        first = heartbeat.value
        time.sleep(0.6)
        assert heartbeat.value > first  # refreshed at least every 0.5 s
        os.kill(process.pid, signal.SIGINT)  # the supervisor orders shutdown, not Ctrl-C
        time.sleep(0.5)
        assert process.is_alive() and rest_healthy(rest_port)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        process.join(5)
        assert process.exitcode == 0
        assert time.monotonic() - started < 3
        assert not rest_healthy(rest_port)
    finally:
        if process.is_alive():
            process.kill()
            process.join(2)


@pytest_integration
def test_node_start_fails_with_status_1_when_rest_port_is_taken() -> None:
    import socket

    n = RelayNode(shards=1)
    holder = socket.socket()
    holder.bind(("127.0.0.1", n.rest_port))
    holder.listen(1)
    try:
        n.start(wait=False)
        assert n.proc is not None
        assert n.proc.wait(15) == 1
        assert "cannot bind REST bridge" in n.log_text()
    finally:
        n.stop()
        holder.close()


@pytest_integration
def test_rest_recovers_after_a_shard_restart(node: RelayNode, api: httpx.Client) -> None:
    room = rooms_per_shard(3, "restart-room")[0]
    url = f"/v1/rooms/{room}/global-variables"
    assert api.post(url, json={"variables": {"kept": "yes"}}).status_code == 200
    old_pid = node.child_pid("shard-0")
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    wait_for(
        lambda: node.child_pid("shard-0") not in (None, old_pid), 15, what="shard-0 restarted"
    )

    def answered() -> bool:
        response = api.get(url)
        return response.status_code == 200 and response.json() == {"variables": {"kept": "yes"}}

    wait_for(answered, 15, interval=0.2, what="REST answers from the restarted shard")
