"""The operator console on a real node: its API with real clients, and the page in
a real headless Chromium (selenium + Debian's chromedriver).

A token-protected node holds two rooms with five reference Python clients
(``styly_netsync``) as real peers. The browser must ask for the token, then
show the rooms, their members and a network variable a client set, and follow
a change made by a client without a reload. A second node without a token
checks that the console is read-only there.

Set ``RELAY_CONSOLE_SCREENSHOTS=<dir>`` to keep the screenshots (the README's
``docs/console.png`` comes from ``RELAY_CONSOLE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    RawClient,
    RelayNode,
    reference_clients,
    rest_healthy,
    send_pose,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "console-token-5f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOBBY, ARENA = "console-lobby", "console-arena"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT_DIR = os.environ.get("RELAY_CONSOLE_SCREENSHOTS")


# ------------------------------------------------------------------ the node and its clients


class PoseLoop:
    """Keeps reference clients sending poses (10 Hz), as a running app does."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        step = 0
        while not self.stop.wait(0.1):
            step += 1
            for i, client in enumerate(self.clients):
                send_pose(client, float(i) + (step % 10) / 10.0)

    def __enter__(self) -> PoseLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(2)


@pytest.fixture(scope="module")
def node() -> Iterator[RelayNode]:
    # A long client timeout: a member leaves only when a test evicts it.
    env = {"RELAY_REST_TOKEN": TOKEN, "RELAY_CLIENT_TIMEOUT": "600"}
    with RelayNode(shards=2, env=env) as relay_node:
        wait_for(lambda: api_ok(relay_node), 20, interval=0.05, what="REST bridge")
        yield relay_node


def api_ok(node: RelayNode) -> bool:
    try:
        return httpx.get(f"{base(node)}/v1/cluster", headers=AUTH, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def base(node: RelayNode) -> str:
    return f"http://127.0.0.1:{node.rest_port}"


@pytest.fixture(scope="module")
def clients(node: RelayNode) -> Iterator[list[Any]]:
    """Five reference clients: three in the lobby, two in the arena."""
    with reference_clients(node, [LOBBY, LOBBY, LOBBY, ARENA, ARENA]) as peers:
        with PoseLoop(peers):
            wait_for(lambda: all(c.client_no is not None for c in peers), 15, what="client numbers")
            lobby = peers[0]
            lobby.set_global_variable("scene", "forest")
            lobby.set_client_variable(lobby.client_no, "color", "red")
            wait_for(lambda: lobby.get_global_variable("scene") == "forest", 10, what="global sync")
            yield peers


@pytest.fixture()
def api(node: RelayNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base(node), headers=AUTH, timeout=5.0) as client:
        yield client


def room_page(api: httpx.Client, room: str) -> dict[str, Any]:
    response = api.get(f"/v1/rooms/{room}")
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------ API on a real node


def test_room_list_search_and_paging(api: httpx.Client, clients: list[Any]) -> None:
    def both_rooms_full() -> dict[str, int] | None:
        listed = {r["roomId"]: r["members"] for r in api.get("/v1/rooms", params={"search": "console-"}).json()["rooms"]}
        return listed if listed.get(LOBBY) == 3 and listed.get(ARENA) == 2 else None

    wait_for(both_rooms_full, 10, interval=0.1, what="both rooms with their members")
    page = api.get("/v1/rooms", params={"search": "CONSOLE-", "limit": 1}).json()
    assert page["total"] == 2 and [r["roomId"] for r in page["rooms"]] == [ARENA]
    page = api.get("/v1/rooms", params={"search": "console-", "limit": 1, "offset": 1}).json()
    assert [r["roomId"] for r in page["rooms"]] == [LOBBY]
    assert api.get("/v1/rooms", params={"search": "lobby"}).json()["total"] == 1


def test_missing_room_is_404_and_not_created(api: httpx.Client) -> None:
    response = api.get("/v1/rooms/console-nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Room 'console-nowhere' not found"}
    assert api.get("/v1/rooms", params={"search": "console-nowhere"}).json()["total"] == 0


def node_id_of(api: httpx.Client) -> str:
    """The node id the relay reports for itself (its host name by default)."""
    import socket

    return socket.gethostname().split(".")[0]


def test_room_page_shows_members_and_variables(api: httpx.Client, clients: list[Any]) -> None:
    lobby = clients[0]
    def complete() -> dict[str, Any] | None:
        page = room_page(api, LOBBY)
        return page if page["members"] == 3 and page["globalVariables"] else None

    page = wait_for(complete, 10, interval=0.1, what="lobby with members and a global")
    assert {m["deviceId"] for m in page["memberList"]} == {c.device_id for c in clients[:3]}
    assert all(m["node"] == node_id_of(api) and not m["stealth"] for m in page["memberList"])
    assert all(m["poseAgeS"] is not None and m["poseAgeS"] < 5 for m in page["memberList"])
    assert {"name": "scene", "value": "forest", "lastWriterClientNo": lobby.client_no} in page["globalVariables"]
    assert {
        "deviceId": lobby.device_id,
        "clientNo": lobby.client_no,
        "variables": [{"name": "color", "value": "red", "lastWriterClientNo": lobby.client_no}],
    } in page["clientVariables"]


def test_cluster_view_of_a_real_node(api: httpx.Client, clients: list[Any]) -> None:
    def settled() -> dict[str, Any] | None:
        view = api.get("/v1/cluster").json()
        shards = view["nodes"][0]["shards"]
        ready = all(s["available"] and s["messagesInPerS"] is not None for s in shards)
        if not ready or sum(s["clients"] for s in shards) < 5:
            return None
        # Five clients posing at 10 Hz: tens of messages per second reach the
        # shards (once a whole status period has seen them all).
        return view if sum(s["messagesInPerS"] for s in shards) > 10 else None

    view = wait_for(settled, 15, interval=0.2, what="live shard stats with message rates")
    assert view["operatorActions"] is True
    (node,) = view["nodes"]
    assert node["nodeId"] == node_id_of(api) and node["supervisorPid"]
    assert [s["shard"] for s in node["shards"]] == [0, 1]
    assert {"ingress", "proxy", "rest", "shard-0", "shard-1"} <= {c["name"] for c in node["children"]}
    assert all(s["ctrlQueueDepth"] is not None and s["restarts"] == 0 for s in node["shards"])


def test_actions_need_the_token(node: RelayNode, api: httpx.Client, clients: list[Any]) -> None:
    url = f"{base(node)}/v1/rooms/{LOBBY}/actions"
    body = {"action": "set_global", "name": "scene", "value": "hijacked"}
    assert httpx.post(url, json=body, timeout=5).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 403
    assert {"name": "scene", "value": "hijacked"} not in [
        {k: v[k] for k in ("name", "value")} for v in [*room_page(api, LOBBY)["globalVariables"]]
    ]


def test_evict_removes_the_member_for_its_peers(
    node: RelayNode, api: httpx.Client, clients: list[Any]
) -> None:
    peer = clients[1]
    silent = RawClient(node, LOBBY, "console-evict-me", subscribe=False)
    try:
        number = silent.join()
        wait_for(lambda: peer.get_client_no("console-evict-me") == number, 10, what="peer sees the member")
        reply = api.post(
            f"/v1/rooms/{LOBBY}/actions", json={"action": "evict_member", "deviceId": "console-evict-me"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"] == {"roomId": LOBBY, "deviceId": "console-evict-me", "clientNo": number}
        wait_for(lambda: peer.get_client_no("console-evict-me") is None, 5, what="peer's mapping without it")
        assert peer.get_client_no(clients[0].device_id) is not None  # the others stay
        assert "console-evict-me" not in {m["deviceId"] for m in room_page(api, LOBBY)["memberList"]}
        log = node.log_text()
        assert f"operator action: room='{LOBBY}' target=device 'console-evict-me' action=evict_member" in log
    finally:
        silent.close()


# ------------------------------------------------------------------ the page in a browser


def _browser_missing_reason() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture()
def browser() -> Iterator[Any]:
    reason = _browser_missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(f"headless browser test skipped: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="relay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium reaches for the internet (updates, sync, ...).
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOT_DIR) / name))


def text_of(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_console_in_a_browser(
    node: RelayNode, api: httpx.Client, clients: list[Any], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{base(node)}/console")
    # The page loads without the token, then asks for it.
    wait_for(lambda: driver.find_element(By.ID, "token-form").is_displayed(), 10, what="token prompt")
    assert "requires a token" in text_of(driver, "#problem")
    driver.find_element(By.ID, "token-input").send_keys(TOKEN)
    driver.find_element(By.ID, "token-submit").click()
    wait_for(lambda: text_of(driver, "#total-clients") not in ("", "0"), 10, what="node view")
    assert "operator actions enabled" in text_of(driver, "#auth-state")
    assert driver.execute_script("return sessionStorage.length") == 1
    wait_for(lambda: "ctrl queue" in text_of(driver, "main"), 5, what="shard table")
    wait_for(lambda: int(text_of(driver, "#total-clients") or 0) >= 5, 10, what="five clients counted")
    screenshot(driver, tmp_path, "console-node.png")

    driver.find_element(By.ID, "nav-rooms").click()
    lobby_row = f'tr[data-room="{LOBBY}"]'
    wait_for(lambda: text_of(driver, lobby_row), 10, what="room list")
    cells = driver.find_element(By.CSS_SELECTOR, lobby_row).find_elements(By.TAG_NAME, "td")
    assert cells[0].text == LOBBY and cells[2].text == "3"
    arena_cells = driver.find_element(By.CSS_SELECTOR, f'tr[data-room="{ARENA}"]').find_elements(By.TAG_NAME, "td")
    assert arena_cells[2].text == "2"
    driver.find_element(By.ID, "room-search").send_keys("arena")
    wait_for(lambda: not text_of(driver, lobby_row), 5, what="search narrows the list")
    assert "1–1 of 1" in text_of(driver, "#rooms-range")

    driver.get(f"{base(node)}/console/#/room/{LOBBY}")
    lobby = clients[0]
    member_rows = 'tr[data-device]'
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, member_rows)) == 3, 10, what="members")
    shown = {row.get_attribute("data-device") for row in driver.find_elements(By.CSS_SELECTOR, member_rows)}
    assert shown == {c.device_id for c in clients[:3]}
    scene = 'tr[data-global="scene"] td.value'
    wait_for(lambda: text_of(driver, scene) == "forest", 10, what="the client's global")
    assert text_of(driver, f'tr[data-client-var="{lobby.device_id}/color"] td.value') == "red"
    screenshot(driver, tmp_path, "console.png")

    # A client changes the variable; the open page follows without a reload.
    driver.execute_script("window.__sameDocument = 'yes';")
    lobby.set_global_variable("scene", "desert")
    wait_for(lambda: text_of(driver, scene) == "desert", 10, interval=0.1, what="live update")
    assert driver.execute_script("return window.__sameDocument") == "yes"

    # An operator action: confirmed in a dialog, applied, seen by the client.
    driver.find_element(By.ID, "set-global-name").send_keys("weather")
    driver.find_element(By.ID, "set-global-value").send_keys("rain")
    driver.find_element(By.CSS_SELECTOR, "#set-global-form button").click()
    alert = driver.switch_to.alert
    assert 'Set global variable "weather" to "rain"' in alert.text
    alert.accept()
    wait_for(lambda: lobby.get_global_variable("weather") == "rain", 10, what="the client sees the action")
    wait_for(lambda: text_of(driver, 'tr[data-global="weather"] td.value') == "rain", 10, what="page shows it")
    assert "Done: set_global" in text_of(driver, "#notice")
    # Declining the dialog changes nothing.
    driver.find_element(By.ID, "set-global-value").send_keys("-storm")
    driver.find_element(By.CSS_SELECTOR, "#set-global-form button").click()
    driver.switch_to.alert.dismiss()
    assert api.get(f"/v1/rooms/{LOBBY}/global-variables/weather").json() == {"value": "rain"}
    assert_no_script_errors(driver)


def assert_no_script_errors(driver: Any) -> None:
    # The token prompt's 401 is expected; anything else severe is a bug.
    errors = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "401 (Unauthorized)" not in entry["message"]
    ]
    assert errors == []


def test_console_is_read_only_without_a_server_token(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with RelayNode(shards=1) as open_node:
        wait_for(lambda: rest_healthy(open_node.rest_port), 20, interval=0.05, what="REST bridge")
        with reference_clients(open_node, ["open-room"]) as (client,):
            wait_for(lambda: client.client_no is not None, 15, what="client number")
            send_pose(client, 1.0)
            driver = browser
            driver.get(f"http://127.0.0.1:{open_node.rest_port}/console/#/room/open-room")
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "tr[data-device]"), 10, what="member row")
            assert not driver.find_element(By.ID, "token-form").is_displayed()
            assert "read-only" in text_of(driver, "#auth-state")
            wait_for(lambda: text_of(driver, "#read-only-note"), 5, what="read-only note")
            assert driver.find_elements(By.CSS_SELECTOR, "[data-evict]") == []
            assert driver.find_elements(By.ID, "set-global-form") == []
            # And the API refuses actions outright, whatever a page might send.
            response = httpx.post(
                f"http://127.0.0.1:{open_node.rest_port}/v1/rooms/open-room/actions",
                json={"action": "evict_member", "deviceId": client.device_id},
                timeout=5,
            )
            assert response.status_code == 403
            assert "--rest-token" in response.json()["detail"]
            assert_no_script_errors(driver)
