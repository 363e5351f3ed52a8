// The room list: server-side search and paging (GET /v1/rooms), one page of
// PAGE_SIZE rows at a time however many rooms the node holds.

import { api, state } from "./api.js";
import { el, fill, table, td } from "./dom.js";

const PAGE_SIZE = 50;

export const roomsView = {
  mount(root, params) {
    this.search = params.get("search") || "";
    this.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    const input = el("input", {
      type: "search",
      id: "room-search",
      placeholder: "search room ids",
      value: this.search,
    });
    let debounce = null;
    input.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        this.search = input.value;
        this.offset = 0;
        this.go();
      }, 300);
    });
    this.prev = el("button", { type: "button", class: "secondary", id: "rooms-prev", text: "◀ previous" });
    this.next = el("button", { type: "button", class: "secondary", id: "rooms-next", text: "next ▶" });
    this.prev.addEventListener("click", () => {
      this.offset = Math.max(0, this.offset - PAGE_SIZE);
      this.go();
    });
    this.next.addEventListener("click", () => {
      this.offset += PAGE_SIZE;
      this.go();
    });
    this.range = el("span", { id: "rooms-range", class: "muted" });
    this.body = el("div");
    root.append(
      el("h2", { text: "Rooms" }),
      el("div", { class: "pager" }, input, this.prev, this.next, this.range),
      this.body,
    );
  },
  go() {
    // The search and page live in the address, so reload and back keep them.
    const params = new URLSearchParams();
    if (this.search) params.set("search", this.search);
    if (this.offset) params.set("offset", String(this.offset));
    const query = params.toString();
    history.replaceState(null, "", "#/rooms" + (query ? "?" + query : ""));
    state.refresh();
  },
  async refresh() {
    const params = new URLSearchParams({ search: this.search, offset: this.offset, limit: PAGE_SIZE });
    const page = await api("GET", "/v1/rooms?" + params.toString());
    return () => this.render(page);
  },
  render(page) {
    const first = page.rooms.length ? page.offset + 1 : 0;
    const missing = page.unavailableShards.length
      ? ` · shards not answering: ${page.unavailableShards.join(", ")}`
      : "";
    this.range.textContent = `${first}–${page.offset + page.rooms.length} of ${page.total}${missing}`;
    this.prev.disabled = page.offset === 0;
    this.next.disabled = page.offset + page.rooms.length >= page.total;
    const rows = page.rooms.map((room) =>
      el(
        "tr",
        {
          class: "room-row",
          dataset: { room: room.roomId },
          onclick: () => {
            location.hash = roomHash(room.roomId);
          },
        },
        el("td", { class: "id" }, el("a", { href: roomHash(room.roomId), text: room.roomId === "" ? "(empty id)" : room.roomId })),
        td(room.shard, "num"),
        td(room.members, "num"),
        td(room.visible, "num"),
        td(room.stealth, "num"),
        td(room.objects, "num"),
        td(room.globals, "num"),
      ),
    );
    fill(this.body,
      rows.length
        ? table(
            [["room"], ["shard", "num"], ["members", "num"], ["visible", "num"], ["stealth", "num"], ["objects", "num"], ["globals", "num"]],
            rows,
          )
        : el("p", { class: "muted", text: "No rooms match." }),
    );
  },
};

export function roomHash(roomId) {
  return "#/room/" + encodeURIComponent(roomId);
}
