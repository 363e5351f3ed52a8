// Operator console of a NetSync relay node: entry point (routing between the
// node view, the room list and a room page; polling; the token prompt).
// Plain JavaScript modules, no build step, nothing loaded from elsewhere:
// relay machines may have no internet.
//
// Live updates by a short poll (one request per second for the view on
// screen) of the same documented JSON API every other tool uses, not
// server-sent events: a poll works through any proxy or load balancer, needs
// no long-lived connection per open console, and a request that fails is
// simply retried on the next tick. The next poll starts only after the
// previous one finished, so a slow node never piles requests up.

import { needsToken, renderAuth, state, TOKEN_KEY } from "./api.js";
import { show } from "./dom.js";
import { nodeView } from "./node_view.js";
import { roomView } from "./room_view.js";
import { roomsView } from "./rooms_view.js";

const POLL_MS = 1000;

const poll = {
  generation: 0,
  timer: null,
  view: null,
};

function askForToken(message) {
  stopPolling();
  state.operatorActions = false;
  renderAuth();
  document.getElementById("token-form").hidden = false;
  document.getElementById("view").replaceChildren();
  show("problem", message);
  document.getElementById("token-input").focus();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  state.token = input.value.trim();
  input.value = "";
  sessionStorage.setItem(TOKEN_KEY, state.token);
  document.getElementById("token-form").hidden = true;
  show("problem", "");
  restart();
});

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.operatorActions = false;
  restart();
});

// ------------------------------------------------------------------ routing and polling

function route() {
  const hash = location.hash || "#/node";
  const [path, query] = hash.slice(1).split("?", 2);
  const params = new URLSearchParams(query || "");
  if (path.startsWith("/room/")) {
    let roomId;
    try {
      roomId = decodeURIComponent(path.slice("/room/".length));
    } catch (err) {
      roomId = path.slice("/room/".length);
    }
    return { view: roomView, params, arg: roomId, nav: "nav-rooms" };
  }
  if (path === "/rooms") return { view: roomsView, params, nav: "nav-rooms" };
  return { view: nodeView, params, nav: "nav-node" };
}

function stopPolling() {
  poll.generation += 1;
  clearTimeout(poll.timer);
}

function restart(remount = true) {
  stopPolling();
  document.getElementById("token-form").hidden = true;
  if (remount || !poll.view) {
    const current = route();
    for (const id of ["nav-node", "nav-rooms"]) {
      document.getElementById(id).classList.toggle("current", id === current.nav);
    }
    const root = document.getElementById("view");
    root.replaceChildren();
    current.view.mount(root, current.params, current.arg);
    poll.view = current.view;
  }
  tick(poll.generation);
}

async function tick(generation) {
  try {
    const paint = await poll.view.refresh();
    if (generation !== poll.generation) return; // the view changed meanwhile
    paint();
    show("problem", "");
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (generation !== poll.generation) return;
    if (needsToken(err)) {
      askForToken(state.token ? `The token was refused (${err.detail}).` : "This relay requires a token.");
      return;
    }
    show("problem", `Cannot reach the relay: ${err.detail || err.message}. Retrying…`);
  }
  poll.timer = setTimeout(() => tick(generation), POLL_MS);
}

state.refresh = () => restart(false);
window.addEventListener("hashchange", () => restart());
renderAuth();
restart();
