// The room page: members, global and client variables, objects (GET
// /v1/rooms/{roomId}), and the operator actions when the server allows them.

import { HttpError, act, api, loadAuth, state } from "./api.js";
import { age, capped, el, fill, num, table, td, writer } from "./dom.js";

export const roomView = {
  mount(root, params, roomId) {
    this.roomId = roomId;
    this.title = el("h2", {}, "Room ", el("span", { class: "id", id: "room-title", text: roomId }));
    this.summary = el("div", { class: "summary card" });
    this.members = el("div");
    this.globals = el("div");
    this.clientVars = el("div");
    this.objects = el("div");
    this.forms = el("div");
    root.append(
      el("p", {}, el("a", { href: "#/rooms", text: "← all rooms" })),
      this.title,
      this.summary,
      el("h3", { text: "Members" }),
      this.members,
      el("h3", { text: "Global variables" }),
      this.globals,
      el("h3", { text: "Client variables" }),
      this.clientVars,
      el("h3", { text: "Objects" }),
      this.objects,
      this.forms,
    );
    this.formsBuilt = false;
    this.authChecked = false;
  },
  async refresh() {
    if (!this.authChecked) {
      // The page may be opened directly: learn once whether actions are possible.
      await loadAuth();
      this.authChecked = true;
    }
    try {
      const room = await api("GET", "/v1/rooms/" + encodeURIComponent(this.roomId));
      return () => this.render(room);
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) {
        return () => {
          fill(this.summary, el("span", { id: "room-missing", text: "This room does not exist (or has expired)." }));
          for (const part of [this.members, this.globals, this.clientVars, this.objects]) fill(part);
        };
      }
      throw err;
    }
  },
  render(room) {
    const byNumber = new Map(room.memberList.map((m) => [m.clientNo, m.deviceId]));
    fill(this.summary,
      el("span", {}, "shard ", el("b", { text: room.shard })),
      el("span", {}, "members ", el("b", { id: "room-members", text: room.members })),
      el("span", {}, "visible ", el("b", { text: room.visible })),
      el("span", {}, "stealth ", el("b", { text: room.stealth })),
      el("span", {}, "devices known ", el("b", { text: room.devices })),
      el("span", {}, "objects ", el("b", { text: room.objects })),
      room.emptyForS === null ? null : el("span", { class: "muted", text: `empty for ${age(room.emptyForS)}` }),
    );
    const canAct = state.operatorActions;
    const memberHeaders = [["client no", "num"], ["device id"], ["stealth"], ["last pose", "num"], ["last seen", "num"], ["node"]];
    if (canAct) memberHeaders.push([""]);
    fill(this.members,
      capped(room.memberList.length, room.members, "members"),
      table(
        memberHeaders,
        room.memberList.map((m) =>
          el(
            "tr",
            { dataset: { device: m.deviceId, clientNo: m.clientNo } },
            td(m.clientNo, "num"),
            td(m.deviceId, "id"),
            td(m.stealth ? "stealth" : "visible"),
            td(age(m.poseAgeS), "num"),
            td(age(m.lastSeenAgeS), "num"),
            td(m.node),
            canAct
              ? el(
                  "td",
                  {},
                  el("button", {
                    type: "button",
                    class: "danger",
                    text: "Evict",
                    dataset: { evict: m.deviceId },
                    onclick: () =>
                      act(
                        room.roomId,
                        { action: "evict_member", deviceId: m.deviceId },
                        `Evict device "${m.deviceId}" (client ${m.clientNo}) from room "${room.roomId}"?\n` +
                          "Peers see it leave as after a timeout; a client that is still running rejoins with its next message.",
                      ),
                  }),
                )
              : null,
          ),
        ),
      ),
    );
    fill(this.globals,
      room.globalVariables.length
        ? table(
            [["name"], ["value"], ["last writer", "num"]],
            room.globalVariables.map((v) =>
              el("tr", { dataset: { global: v.name } }, td(v.name, "id"), td(v.value, "value"), td(writer(v.lastWriterClientNo, byNumber), "num")),
            ),
          )
        : el("p", { class: "muted", text: "none" }),
    );
    const clientRows = [];
    for (const device of room.clientVariables) {
      for (const v of device.variables) {
        clientRows.push(
          el(
            "tr",
            { dataset: { clientVar: `${device.deviceId}/${v.name}` } },
            td(num(device.clientNo), "num"),
            td(device.deviceId, "id"),
            td(v.name, "id"),
            td(v.value, "value"),
            td(writer(v.lastWriterClientNo, byNumber), "num"),
            canAct
              ? el(
                  "td",
                  {},
                  el("button", {
                    type: "button",
                    class: "danger",
                    text: "Delete",
                    onclick: () =>
                      act(
                        room.roomId,
                        { action: "delete_client_variable", deviceId: device.deviceId, name: v.name },
                        `Delete client variable "${v.name}" of device "${device.deviceId}" in room "${room.roomId}"?`,
                      ),
                  }),
                )
              : null,
          ),
        );
      }
    }
    const clientHeaders = [["client no", "num"], ["device id"], ["name"], ["value"], ["last writer", "num"]];
    if (canAct) clientHeaders.push([""]);
    fill(this.clientVars,
      capped(room.clientVariables.length, room.clientVariableDevices, "devices"),
      clientRows.length ? table(clientHeaders, clientRows) : el("p", { class: "muted", text: "none" }),
    );
    fill(this.objects,
      capped(room.objectList.length, room.objects, "objects"),
      room.objectList.length
        ? table(
            [["object id", "num"], ["owner"], ["last pose", "num"]],
            room.objectList.map((o) =>
              el(
                "tr",
                { dataset: { object: o.objectId } },
                td(o.objectId, "num"),
                td(o.ownerClientNo === 0 ? "nobody" : `${o.ownerClientNo} (${byNumber.get(o.ownerClientNo) || "not a member"})`),
                td(age(o.poseAgeS), "num"),
              ),
            ),
          )
        : el("p", { class: "muted", text: "none" }),
    );
    this.renderForms(room);
  },
  renderForms(room) {
    if (!state.operatorActions) {
      fill(this.forms,
        el("p", { class: "muted", id: "read-only-note", text: "Read-only: operator actions need a token configured on the server and entered here." }),
      );
      this.formsBuilt = false;
      return;
    }
    // Built once: re-creating inputs every second would eat what is typed.
    if (this.formsBuilt) return;
    this.formsBuilt = true;
    const gName = el("input", { type: "text", id: "set-global-name", placeholder: "name", required: true, maxlength: 64 });
    const gValue = el("input", { type: "text", id: "set-global-value", placeholder: "value", maxlength: 1024 });
    const setGlobal = el(
      "form",
      {
        class: "inline",
        id: "set-global-form",
        onsubmit: (event) => {
          event.preventDefault();
          act(
            this.roomId,
            { action: "set_global", name: gName.value, value: gValue.value },
            `Set global variable "${gName.value}" to "${gValue.value}" in room "${this.roomId}"?`,
          );
        },
      },
      el("strong", { text: "Set global variable" }),
      gName,
      gValue,
      el("button", { type: "submit", text: "Set" }),
    );
    const cDevice = el("input", { type: "text", id: "set-client-device", placeholder: "device id", required: true });
    const cName = el("input", { type: "text", id: "set-client-name", placeholder: "name", required: true, maxlength: 64 });
    const cValue = el("input", { type: "text", id: "set-client-value", placeholder: "value", maxlength: 1024 });
    const setClient = el(
      "form",
      {
        class: "inline",
        id: "set-client-form",
        onsubmit: (event) => {
          event.preventDefault();
          act(
            this.roomId,
            { action: "set_client_variable", deviceId: cDevice.value, name: cName.value, value: cValue.value },
            `Set client variable "${cName.value}" of device "${cDevice.value}" to "${cValue.value}" in room "${this.roomId}"?`,
          );
        },
      },
      el("strong", { text: "Set client variable" }),
      cDevice,
      cName,
      cValue,
      el("button", { type: "submit", text: "Set" }),
    );
    fill(this.forms, el("h3", { text: "Operator actions" }), setGlobal, setClient);
  },
};
