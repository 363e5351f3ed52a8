"""Refused but well-formed messages must not flood the log (issue #15)."""

from __future__ import annotations

import logging
import re

import pytest

from relay.protocol.messages import ClientVarSet
from tests.support import RawClient, RelayNode, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_refused_writes_cost_a_handful_of_log_lines_with_a_count() -> None:
    with RelayNode(shards=1) as node:
        client = RawClient(node, "flood-room", "flood-dev", subscribe=False)
        try:
            client.join()
            for n in range(2000):
                # Client number 999 is not mapped in the room: refused (§10.2).
                client.send_control(ClientVarSet(0, "flood-dev", 999, "v", str(n)))

            def refused() -> bool:
                counters = (node.child_status("shard-0") or {}).get("room_counters", {})
                return counters.get("nv_writes_refused", 0) >= 2000

            wait_for(refused, 20, interval=0.2, what="2000 refused writes")
            # The suppressed count is reported within an interval (5 s) + a status period.
            pattern = re.compile(r"nv_unmapped_target: (\d+) more suppressed|\+(\d+) more 'nv_unmapped_target'")
            wait_for(lambda: pattern.search(node.log_text()), 10, interval=0.2, what="the suppressed count")
            text = node.log_text()
            lines = [line for line in text.splitlines() if "unmapped" in line]
            assert 1 <= len(lines) <= 5, lines
            # Every refusal is accounted for: logged lines + reported suppressions.
            logged = sum("unmapped client 999" in line for line in lines)
            suppressed = sum(int(a or b) for a, b in pattern.findall(text))
            assert logged + suppressed == 2000, lines
        finally:
            client.close()


def test_rest_failures_are_rate_limited_too(caplog: pytest.LogCaptureFixture) -> None:
    from supervisor.rest import shard_client as rest_bridge
    from tests.test_rest import make_client

    client, fake = make_client()
    fake.unavailable.update(range(4))
    before = rest_bridge.limited_log.counts["shard_timeout"]
    with client, caplog.at_level(logging.INFO, logger="relay.rest"):
        for n in range(200):
            assert client.get(f"/v1/rooms/r{n}/global-variables").status_code == 503
    lines = [r for r in caplog.records if r.name == "relay.rest"]
    assert len(lines) <= 1, [r.getMessage() for r in lines]
    assert rest_bridge.limited_log.counts["shard_timeout"] - before == 200
