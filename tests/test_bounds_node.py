"""Bounded room state on a real node (`relayctl start`), with real peers.

An idle empty room leaves the shard's memory and comes back with its state
on the next touch, on either store (the shared one also gives its lease back
and takes it again); client variables queued over REST for a device reach
the members already in the room when that device joins, as with the
reference server (peer: the reference Python client).
"""

from __future__ import annotations

import httpx
import pytest

from relay.protocol.messages import GlobalVarSet, GlobalVarSync
from tests.support import RawClient, RelayNode, reference_clients, send_pose, wait_for, write_config
from tests.test_metrics import scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rest(node: RelayNode) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{node.rest_port}", timeout=5.0)


def rooms_in_memory(api: httpx.Client, room: str) -> int:
    return api.get("/v1/rooms", params={"search": room}).json()["total"]


def test_an_idle_room_leaves_memory_and_reloads_with_its_state(tmp_path, relay_store: str) -> None:
    config = write_config(tmp_path, client_timeout=1.0, cleanup_interval=0.2, room_idle_evict_seconds=1.0)
    with RelayNode(shards=2, extra_args=["--config", config]) as node, rest(node) as api:
        room = node.local_room("evict-me-")
        first = RawClient(node, room, "dev-a", subscribe=False)
        try:
            assert first.join() == 1
            first.send_control(GlobalVarSet(0, "dev-a", "scene", "forest"))
            assert first.recv_control_until(lambda m: isinstance(m, GlobalVarSync)) is not None
        finally:
            first.close()
        assert rooms_in_memory(api, room) == 1
        # Silent for client_timeout, then idle for room_idle_evict_seconds.
        wait_for(lambda: rooms_in_memory(api, room) == 0, 15.0, interval=0.2, what="room evicted")

        with reference_clients(node, [room]) as (client,):
            def reloaded() -> bool:
                send_pose(client, 1.0)
                return client.get_global_variable("scene") == "forest" and client.client_no == 2

            wait_for(reloaded, 10.0, interval=0.1, what="the evicted room's state after reload")
        again = RawClient(node, room, "dev-a", subscribe=False)
        try:
            assert again.join() == 1  # its number survived the stay out of memory
        finally:
            again.close()

        def counted() -> bool:
            page = scrape(node)
            return (
                page.total("relay_bounds_events_total", event="rooms_evicted_idle") >= 1
                and page.total("relay_bounds_events_total", event="rooms_reloaded") >= 1
            )

        wait_for(counted, 10.0, interval=0.3, what="evictions and reloads in /metrics")
        page = scrape(node)
        # The shared store never refused a write: leases were given back and taken again cleanly.
        assert page.total("relay_store_records_total", outcome="rejected_writes") == 0


def test_variables_queued_for_a_late_device_reach_the_members_when_it_joins() -> None:
    with RelayNode(shards=2) as node, rest(node) as api:
        with reference_clients(node, ["late-room"]) as (member,):
            def joined() -> bool:
                send_pose(member, 1.0)
                return member.client_no is not None

            wait_for(joined, 10.0, interval=0.1, what="the reference client joined")
            posted = api.post(
                "/v1/rooms/late-room/devices/late-dev/client-variables",
                json={"variables": {"role": "pilot", "team": "red"}},
            ).json()
            assert posted["mapping"] == {"clientNo": None}
            assert posted["result"] == {"role": {"state": "queued"}, "team": {"state": "queued"}}

            late = RawClient(node, "late-room", "late-dev", subscribe=False)
            try:
                late_no = late.join()

                def synced() -> bool:
                    send_pose(member, 1.0)
                    return member.get_all_client_variables(late_no) == {"role": "pilot", "team": "red"}

                wait_for(synced, 5.0, interval=0.05, what="the member got the late device's variables")
            finally:
                late.close()
