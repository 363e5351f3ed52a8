// The console's side of the REST API: the bearer token (kept in this tab's
// sessionStorage), requests with it, and the operator actions.

import { show } from "./dom.js";

const REQUEST_TIMEOUT_MS = 5000;
export const TOKEN_KEY = "netsync-relay-console-token";

export const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  // Known after the first successful /v1/cluster: the server has a token, so
  // (having got this far with ours) actions are possible.
  operatorActions: false,
  // Set by main.js: refresh the current view now (keeping its forms).
  refresh: () => {},
};

export class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function detailText(data, fallback) {
  if (!data || data.detail === undefined) return fallback;
  if (typeof data.detail === "string") return data.detail;
  // FastAPI validation errors: a list of {loc, msg}.
  return data.detail.map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg}`).join("; ");
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: controller.signal,
    });
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) throw new HttpError(response.status, detailText(data, response.statusText));
  return data;
}

// A 401/403 on a read means our token is missing or wrong: ask for it.
export function needsToken(err) {
  return err instanceof HttpError && (err.status === 401 || err.status === 403);
}

export function renderAuth() {
  const label = document.getElementById("auth-state");
  const forget = document.getElementById("forget-token");
  forget.hidden = !state.token;
  if (state.operatorActions) {
    label.textContent = "token accepted · operator actions enabled";
  } else if (state.token) {
    label.textContent = "token set";
  } else {
    label.textContent = "read-only (the server has no REST token, so actions are disabled)";
  }
}

// Learns whether the server has a token (operator actions possible).
export async function loadAuth() {
  const cluster = await api("GET", "/v1/cluster");
  state.operatorActions = Boolean(cluster.operatorActions);
  renderAuth();
  return cluster;
}

// ------------------------------------------------------------------ actions

export async function act(roomId, action, question) {
  if (!state.operatorActions) return;
  if (!window.confirm(question)) return;
  try {
    const reply = await api("POST", `/v1/rooms/${encodeURIComponent(roomId)}/actions`, action);
    show("notice", `Done: ${reply.action} on ${reply.target} in room "${reply.roomId}".`);
  } catch (err) {
    show("notice", `Refused: ${err.detail || err.message}`);
  }
  // Refresh now, keeping the view (and what is typed in its forms).
  state.refresh();
}
