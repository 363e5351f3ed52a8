// The node view: nodes, their shards (rooms, clients, rates, control backlog,
// restarts, store health) and processes, from GET /v1/cluster.

import { loadAuth } from "./api.js";
import { age, el, fill, num, rate, storeFlag, table, td } from "./dom.js";

export const nodeView = {
  mount(root) {
    this.body = el("div");
    root.append(el("h2", { text: "Node" }), this.body);
  },
  async refresh() {
    const cluster = await loadAuth();
    return () => {
      fill(this.body, ...cluster.nodes.map(renderNode));
    };
  },
};

function renderNode(node) {
  const shards = node.shards.map((s) =>
    el(
      "tr",
      { dataset: { shard: s.shard } },
      td(s.shard, "num"),
      el("td", {}, s.available ? "serving" : el("span", { class: "flag-bad", text: "NOT ANSWERING", title: s.detail })),
      td(num(s.rooms), "num"),
      td(num(s.clients), "num"),
      td(`${num(s.visible)} / ${num(s.stealth)}`, "num"),
      td(rate(s.messagesInPerS), "num"),
      td(rate(s.controlOutPerS), "num"),
      td(rate(s.broadcastsPerS), "num"),
      td(num(s.ctrlQueueDepth), "num"),
      td(num(s.ctrlQueueHighWater), "num"),
      td(num(s.pendingBroadcasts), "num"),
      td(num(s.drops), "num"),
      td(num(s.restarts), "num"),
      td(age(s.uptimeS), "num"),
      el("td", {}, storeFlag(s.storeDegraded)),
    ),
  );
  const children = node.children.map((c) =>
    el(
      "tr",
      {},
      td(c.name),
      el("td", {}, c.alive ? "up" : el("span", { class: "flag-bad", text: "DOWN" })),
      td(num(c.pid), "num"),
      td(age(c.uptimeS), "num"),
      td(num(c.restarts), "num"),
      td(num(c.lastExit), "num"),
    ),
  );
  const totals = node.shards.reduce(
    (acc, s) => ({ rooms: acc.rooms + (s.rooms || 0), clients: acc.clients + (s.clients || 0) }),
    { rooms: 0, clients: 0 },
  );
  return el(
    "section",
    { class: "card", dataset: { node: node.nodeId } },
    el("h3", {}, `Node ${node.nodeId}`, node.local ? el("span", { class: "muted", text: " (this node)" }) : null),
    el(
      "div",
      { class: "summary" },
      el("span", {}, "rooms ", el("b", { id: "total-rooms", text: totals.rooms })),
      el("span", {}, "clients ", el("b", { id: "total-clients", text: totals.clients })),
      el("span", {}, "store ", storeFlag(node.storeDegraded)),
      el("span", { class: "muted", text: `supervisor pid ${num(node.supervisorPid)}` }),
    ),
    el("h3", { text: "Shards" }),
    table(
      [
        ["shard", "num"], ["state"], ["rooms", "num"], ["clients", "num"], ["visible / stealth", "num"],
        ["msgs in/s", "num"], ["ctrl out/s", "num"], ["broadcasts/s", "num"], ["ctrl queue", "num"],
        ["queue high", "num"], ["pending tx", "num"], ["drops", "num"], ["restarts", "num"],
        ["uptime", "num"], ["store"],
      ],
      shards,
    ),
    el("h3", { text: "Processes" }),
    table(
      [["child"], ["state"], ["pid", "num"], ["uptime", "num"], ["restarts", "num"], ["last exit", "num"]],
      children,
    ),
  );
}
