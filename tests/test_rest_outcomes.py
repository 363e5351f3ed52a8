"""Room outcomes -> HTTP statuses (supervisor/rest/outcomes.py) and the admin reply format.

The shard answers in room terms only; these tests pin the one table that
turns its outcomes into HTTP, and check it end to end through the app, both
against scripted replies and against a real ``ShardState`` in process.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.admin import MalformedReply, Outcome, ok, parse_reply, refused
from relay.config import RelayConfig
from relay.hashing import shard_for_room
from shard_worker.room import RoomSettings
from shard_worker.shard import ShardState
from supervisor.rest import ShardReplyError, ShardUnavailable, create_app
from supervisor.rest.outcomes import HTTP_STATUS, http_error, http_status

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(30)

EXPECTED = {
    Outcome.OK: 200,
    Outcome.NOT_FOUND: 404,
    Outcome.LIMIT_EXCEEDED: 409,
    Outcome.INVALID: 422,
    Outcome.BAD_REQUEST: 400,
    Outcome.UNAVAILABLE: 503,
    Outcome.INTERNAL_ERROR: 503,
}


def test_every_outcome_has_exactly_one_status() -> None:
    assert dict(HTTP_STATUS) == EXPECTED
    assert set(HTTP_STATUS) == set(Outcome)
    for outcome, status in EXPECTED.items():
        assert http_status(outcome) == status


def test_http_error_carries_detail_and_retry_after_only_for_503() -> None:
    for outcome in Outcome:
        if outcome is Outcome.OK:
            with pytest.raises(ValueError):
                http_error(outcome, "fine")
            continue
        error = http_error(outcome, f"because {outcome}")
        assert error.status_code == EXPECTED[outcome]
        assert error.detail == f"because {outcome}"
        if error.status_code == 503:
            assert error.headers == {"Retry-After": "1"}
        else:
            assert not error.headers


def test_reply_format_round_trips() -> None:
    assert parse_reply(orjson.dumps(ok({"a": 1}))) == (Outcome.OK, {"a": 1})
    for outcome in Outcome:
        if outcome is Outcome.OK:
            continue
        assert parse_reply(orjson.dumps(refused(outcome, "why"))) == (outcome, {"detail": "why"})
    with pytest.raises(ValueError):
        refused(Outcome.OK, "no")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": 200, "body": {}}',  # the old HTTP-flavoured shape
        b'{"outcome": "teapot", "detail": "x"}',
        b'{"outcome": "ok"}',
        b'{"outcome": "ok", "body": [1]}',
        b'{"outcome": "not_found"}',
        b'{"outcome": "not_found", "detail": 404}',
    ],
)
def test_malformed_replies_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedReply):
        parse_reply(raw)


def test_shard_code_holds_no_http_status_numbers() -> None:
    """The shard speaks rooms: no status codes, no 'HTTP' in shard_worker/."""
    # (Slice bounds such as ``body[:200]`` are not statuses.)
    pattern = re.compile(r"(?<![:\[])\b(200|201|204|400|401|403|404|409|413|422|500|502|503)\b|HTTP")
    root = Path(__file__).resolve().parent.parent / "shard_worker"
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(root.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


# ------------------------------------------------------------ through the app


class ScriptedShard:
    """Answers every request with the next scripted outcome (or raises it)."""

    def __init__(self) -> None:
        self.reply: tuple[Outcome, dict[str, Any]] | Exception = (Outcome.OK, {"variables": {}})

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.OK])
def test_each_refusal_reaches_the_http_client_with_its_status(outcome: Outcome) -> None:
    shard = ScriptedShard()
    shard.reply = (outcome, {"detail": "the room says no"})
    with TestClient(create_app(RelayConfig(shards=2), shard)) as client:
        response = client.get("/v1/rooms/r/global-variables")
    assert response.status_code == EXPECTED[outcome]
    detail = response.json()["detail"]
    if EXPECTED[outcome] == 503:
        assert detail == f"shard {shard_for_room(b'r', 2)}: the room says no"
        assert response.headers["retry-after"] == "1"
    else:
        assert detail == "the room says no"


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (ShardUnavailable(1, 0.5), "shard 1 did not answer within 0.5s"),
        (ShardReplyError("shard 1 sent a malformed reply: not JSON"), "shard 1 sent a malformed reply: not JSON"),
    ],
)
def test_transport_failures_are_503_never_502(error: Exception, detail: str) -> None:
    shard = ScriptedShard()
    shard.reply = error
    with TestClient(create_app(RelayConfig(shards=2), shard)) as client:
        response = client.post("/v1/rooms/r/global-variables", json={"variables": {"k": "v"}})
    assert response.status_code == 503
    assert response.json() == {"detail": detail}
    assert response.headers["retry-after"] == "1"


class InProcessShards:
    """The app talking to real ShardStates, without sockets."""

    def __init__(self, shards: int, **shard_options: Any) -> None:
        self.states = [ShardState(RoomSettings(), now=0.0, **shard_options) for _ in range(shards)]

    async def request(self, shard: int, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        reply, _ = self.states[shard].admin(orjson.loads(orjson.dumps(body)), 1.0)
        return parse_reply(orjson.dumps(reply))

    async def close(self) -> None:
        pass


def test_a_full_shard_refuses_a_new_room_with_503() -> None:
    shards = InProcessShards(1, max_rooms=2)
    with TestClient(create_app(RelayConfig(shards=1), shards)) as client:
        for room in ("a", "b"):
            url = f"/v1/rooms/{room}/global-variables"
            assert client.post(url, json={"variables": {"k": room}}).status_code == 200
        response = client.post("/v1/rooms/c/global-variables", json={"variables": {"k": "c"}})
        assert response.status_code == 503
        assert response.json()["detail"].startswith("shard 0: room refused:")
        assert response.headers["retry-after"] == "1"
        # Existing rooms keep working; nothing was created for the refused one.
        assert client.get("/v1/rooms/a/global-variables/k").json() == {"value": "a"}
    assert set(shards.states[0].rooms) == {"a", "b"}


def test_room_limits_from_a_real_shard_are_409() -> None:
    shards = InProcessShards(1)
    with TestClient(create_app(RelayConfig(shards=1), shards)) as client:
        url = "/v1/rooms/r/devices/d/client-variables"
        assert client.post(url, json={"variables": {f"v{i}": "x" for i in range(100)}}).status_code == 200
        response = client.post(url, json={"variables": {"one-too-many": "x"}})
        assert response.status_code == 409
        assert response.json()["detail"] == "Too many client variables (> 100) for device d"
