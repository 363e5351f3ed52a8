"""The operator console's API, in process: the bridge endpoints (/v1/cluster,
/v1/rooms, room page, actions, static files) against real ``ShardState``
objects without sockets (the shard ops themselves: tests/test_room_admin_ops.py).

The same endpoints on a real node, with real clients and a real browser, are
in tests/test_console.py.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.admin import Outcome
from relay.config import RelayConfig
from relay.hashing import shard_for_room
from relay.protocol.messages import Lane
from supervisor.rest import ShardUnavailable, create_app
from supervisor.rest.console import CONSOLE_DIR
from supervisor.rest.routes_actions import NO_TOKEN_DETAIL
from tests.test_rest_outcomes import InProcessShards
from tests.test_shard_state import hello

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(60)

CTRL = Lane.CONTROL
TOKEN = "console-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ===================================================================== bridge


class RecordingShards(InProcessShards):
    """Real ShardStates; records requests; shards in ``down`` do not answer."""

    def __init__(self, shards: int) -> None:
        super().__init__(shards)
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.down: set[int] = set()

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        self.requests.append((shard, body))
        if shard in self.down:
            raise ShardUnavailable(shard, 0.5)
        return await super().request(shard, body)

    def join(self, room: str, device: str) -> None:
        state = self.states[shard_for_room(room.encode(), len(self.states))]
        state.handle(CTRL, device.encode(), room.encode(), hello(device), 0.5)


def make(shards: int = 3, run_dir: str | None = None, **config: Any) -> tuple[TestClient, RecordingShards]:
    backend = RecordingShards(shards)
    app = create_app(RelayConfig(shards=shards, **config), backend, run_dir)
    return TestClient(app), backend


def test_room_list_pages_across_shards_in_id_order() -> None:
    client, backend = make(3)
    rooms = [f"room-{i:03d}" for i in range(130)]
    for room in reversed(rooms):
        backend.join(room, f"dev-{room}")
    with client:
        seen = []
        for offset in (0, 50, 100):
            page = client.get("/v1/rooms", params={"offset": offset, "limit": 50}).json()
            assert page["total"] == 130 and page["offset"] == offset and page["limit"] == 50
            assert page["unavailableShards"] == []
            seen += page["rooms"]
        assert [r["roomId"] for r in seen] == rooms
        assert all(r["shard"] == shard_for_room(r["roomId"].encode(), 3) for r in seen)
        assert all(r["members"] == 1 for r in seen)
        assert len({r["shard"] for r in seen}) == 3
        # Each shard was asked for no more than the page's end.
        assert {body["limit"] for _, body in backend.requests if body["op"] == "rooms_list"} == {50, 100, 150}

        found = client.get("/v1/rooms", params={"search": "ROOM-01", "limit": 4}).json()
        assert found["total"] == 10
        assert [r["roomId"] for r in found["rooms"]] == ["room-010", "room-011", "room-012", "room-013"]
        past = client.get("/v1/rooms", params={"offset": 500}).json()
        assert past["rooms"] == [] and past["total"] == 130
        for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"search": "x" * 256}):
            assert client.get("/v1/rooms", params=params).status_code == 422, params


def test_room_list_shows_what_answering_shards_have() -> None:
    client, backend = make(3)
    for i in range(9):
        backend.join(f"r{i}", f"d{i}")
    with client:
        backend.down = {1}
        page = client.get("/v1/rooms").json()
        on_others = [f"r{i}" for i in range(9) if shard_for_room(f"r{i}".encode(), 3) != 1]
        assert [r["roomId"] for r in page["rooms"]] == on_others
        assert page["total"] == len(on_others) and page["unavailableShards"] == [1]
        backend.down = {0, 1, 2}
        response = client.get("/v1/rooms")
        assert response.status_code == 503
        assert response.json() == {"detail": "shard 0 did not answer within 0.5s"}


def test_room_page_is_404_for_a_missing_room_and_creates_nothing() -> None:
    client, backend = make(3)
    backend.join("here", "dev-1")
    with client:
        response = client.get("/v1/rooms/elsewhere")
        assert response.status_code == 404
        assert response.json() == {"detail": "Room 'elsewhere' not found"}
        assert all("elsewhere" not in s.rooms for s in backend.states)
        page = client.get("/v1/rooms/here").json()
        assert page["shard"] == shard_for_room(b"here", 3)
        assert page["memberList"][0]["deviceId"] == "dev-1"
        assert page["memberList"][0]["node"] == "local"


def test_actions_refuse_without_a_server_token(caplog: pytest.LogCaptureFixture) -> None:
    client, backend = make(2)
    backend.join("r", "dev-1")
    caplog.set_level(logging.INFO, logger="relay.rest.operator")
    with client:
        for action in (
            {"action": "set_global", "name": "scene", "value": "x"},
            {"action": "set_client_variable", "deviceId": "dev-1", "name": "hp", "value": "1"},
            {"action": "delete_client_variable", "deviceId": "dev-1", "name": "hp"},
            {"action": "evict_member", "deviceId": "dev-1"},
        ):
            response = client.post("/v1/rooms/r/actions", json=action)
            assert response.status_code == 403
            assert response.json() == {"detail": NO_TOKEN_DETAIL}
        assert backend.requests == []  # nothing reached a shard
        assert "dev-1" in backend.states[shard_for_room(b"r", 2)].rooms["r"].members
        # The reference's own endpoints stay open without a token, as there.
        assert client.get("/v1/rooms/r/global-variables").status_code == 200
    refused = [r.getMessage() for r in caplog.records if r.name == "relay.rest.operator"]
    assert len(refused) == 4
    assert refused[-1] == (
        "operator action refused (server has no token): room='r' target=device 'dev-1' action=evict_member"
    )


def test_actions_with_a_token_apply_and_log_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    client, backend = make(2, rest_token=TOKEN)
    backend.join("r", "dev-1")
    state = backend.states[shard_for_room(b"r", 2)]
    caplog.set_level(logging.INFO, logger="relay.rest.operator")
    with client:
        url = "/v1/rooms/r/actions"
        body = {"action": "set_global", "name": "scene", "value": "forest"}
        assert client.post(url, json=body).status_code == 401
        assert client.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert state.rooms["r"].globals == {}

        reply = client.post(url, json=body, headers=AUTH)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "roomId": "r",
            "action": "set_global",
            "target": "global 'scene'",
            "result": {"roomId": "r", "result": {"scene": {"state": "applied"}}},
        }
        assert state.rooms["r"].globals["scene"].value == "forest"

        set_cv = {"action": "set_client_variable", "deviceId": "dev-1", "name": "hp", "value": "9"}
        assert client.post(url, json=set_cv, headers=AUTH).json()["result"]["mapping"] == {"clientNo": 1}
        assert state.rooms["r"].client_vars["dev-1"]["hp"].value == "9"
        delete = {"action": "delete_client_variable", "deviceId": "dev-1", "name": "hp"}
        assert client.post(url, json=delete, headers=AUTH).json()["result"]["deletedCount"] == 1
        evict = {"action": "evict_member", "deviceId": "dev-1"}
        assert client.post(url, json=evict, headers=AUTH).json()["result"]["clientNo"] == 1
        assert state.rooms["r"].members == {}

        missing = client.post("/v1/rooms/nowhere/actions", json=body, headers=AUTH)
        assert missing.status_code == 404
        assert all("nowhere" not in s.rooms for s in backend.states)
        again = client.post(url, json=evict, headers=AUTH)
        assert again.status_code == 404
        assert again.json() == {"detail": "Device 'dev-1' is not a member of room 'r'"}

        for bad in (
            {"action": "delete_global", "name": "scene"},  # globals cannot be deleted on the wire
            {"action": "set_global", "name": "", "value": "x"},
            {"action": "set_global", "name": "n" * 65, "value": "x"},
            {"action": "evict_member", "deviceId": ""},
            {"action": "evict_member", "deviceId": "\U0001f600" * 64},
            {"name": "scene", "value": "x"},
        ):
            assert client.post(url, json=bad, headers=AUTH).status_code == 422, bad
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.rest.operator"]
    assert lines[:4] == [
        "operator action: room='r' target=global 'scene' action=set_global",
        "operator action: room='r' target=device 'dev-1' variable 'hp' action=set_client_variable",
        "operator action: room='r' target=device 'dev-1' variable 'hp' action=delete_client_variable",
        "operator action: room='r' target=device 'dev-1' action=evict_member",
    ]
    assert lines[4].startswith("operator action failed: room='nowhere' target=global 'scene'")
    assert len(lines) == 6


def test_console_files_load_without_the_token_and_nothing_else_does() -> None:
    client, _ = make(1, rest_token=TOKEN)
    with client:
        redirect = client.get("/console", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/console/")
        page = client.get("/console/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        for name in ("main.js", "api.js", "dom.js", "console.css"):
            assert client.get(f"/console/{name}").status_code == 200
        assert client.get("/console/missing.js").status_code == 404
        # Only reads of the static files are public.
        assert client.post("/console/").status_code == 401
        assert client.get("/v1/cluster").status_code == 401
        assert client.get("/v1/rooms").status_code == 401
        assert client.get("/console-not/").status_code == 401


def test_console_files_need_nothing_from_the_internet() -> None:
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name
        assert "innerHTML" not in text, path.name  # client-controlled strings are text only


def _write(path: Path, data: dict[str, Any], mtime: float) -> None:
    path.write_bytes(orjson.dumps(data))
    os.utime(path, (mtime, mtime))


def test_cluster_view_combines_live_stats_status_files_and_rates(tmp_path: Path) -> None:
    client, backend = make(2, run_dir=str(tmp_path))
    for i in range(6):
        backend.join(f"room-{i}", f"dev-{i}")
    now = time.time()
    _write(tmp_path / "supervisor.json", {
        "supervisor_pid": 11, "started_at": now - 60, "node_id": "node-a",
        "ports": {"control": 5555, "discovery": None},
        "children": {
            "shard-0": {"pid": 21, "alive": True, "uptime_s": 30.0, "restarts": 2, "last_exit": -9},
            "shard-1": {"pid": 22, "alive": True, "uptime_s": 60.0, "restarts": 0, "last_exit": None},
            "ingress": {"pid": 23, "alive": False, "uptime_s": 0.0, "restarts": 1, "last_exit": 1},
        },
    }, now)
    first = {"pid": 21, "messages_in": {"hello": 10, "client_pose": 90}, "unicast_recipients": 100,
             "broadcasts_sent": 5, "ctrl_queue_depth": 3, "ctrl_queue_high_water": 40,
             "pending_broadcasts": 1, "store_degraded": False}
    _write(tmp_path / "status-shard-0.json", first, now - 1.0)
    _write(tmp_path / "status-shard-1.json", {"pid": 22, "rooms": 99, "clients": 98, "store_degraded": True}, now)
    with client:
        view = client.get("/v1/cluster").json()
        shard0 = view["nodes"][0]["shards"][0]
        assert shard0["messagesInPerS"] is None  # one snapshot: no rate yet
        second = {**first, "messages_in": {"hello": 10, "client_pose": 110}, "unicast_recipients": 300,
                  "broadcasts_sent": 15, "ctrl_queue_depth": 7}
        _write(tmp_path / "status-shard-0.json", second, now)
        backend.down = {1}
        view = client.get("/v1/cluster").json()
    assert view["operatorActions"] is False
    (node,) = view["nodes"]
    assert node["nodeId"] == "node-a" and node["local"] is True
    assert node["supervisorPid"] == 11 and node["ports"] == {"control": 5555, "discovery": None}
    assert node["storeDegraded"] is True  # shard 1 says so
    assert {c["name"]: (c["alive"], c["restarts"], c["lastExit"]) for c in node["children"]} == {
        "shard-0": (True, 2, -9), "shard-1": (True, 0, None), "ingress": (False, 1, 1),
    }
    shard0, shard1 = node["shards"]
    live0 = backend.states[0].stats()
    assert shard0["available"] and shard0["rooms"] == live0["rooms"] and shard0["clients"] == live0["clients"]
    assert (shard0["messagesInPerS"], shard0["controlOutPerS"], shard0["broadcastsPerS"]) == (20.0, 200.0, 10.0)
    assert (shard0["ctrlQueueDepth"], shard0["ctrlQueueHighWater"], shard0["pendingBroadcasts"]) == (7, 40, 1)
    assert (shard0["restarts"], shard0["uptimeS"], shard0["storeDegraded"]) == (2, 30.0, False)
    assert 0 <= shard0["statusAgeS"] < 5
    # A shard that does not answer shows its last published numbers.
    assert shard1["available"] is False and "did not answer" in shard1["detail"]
    assert (shard1["rooms"], shard1["clients"], shard1["storeDegraded"]) == (99, 98, True)


def test_cluster_view_without_status_files() -> None:
    client, backend = make(2, rest_token=TOKEN)
    backend.join("r", "d")
    with client:
        view = client.get("/v1/cluster", headers=AUTH).json()
    assert view["operatorActions"] is True
    (node,) = view["nodes"]
    assert node["nodeId"] == "local" and node["storeDegraded"] is None and node["children"] == []
    assert sum(s["clients"] for s in node["shards"]) == 1
    assert all(s["ctrlQueueDepth"] is None and s["messagesInPerS"] is None for s in node["shards"])
