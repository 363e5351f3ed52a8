// DOM helpers of the console. Everything shown comes from rooms' clients
// (room ids, device ids, variable values), so text is only ever set with
// textContent or text nodes, never parsed as HTML.

export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// replaceChildren without the null/false placeholders of optional parts.
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export function num(value) {
  return value === null || value === undefined ? "–" : String(value);
}

export function rate(value) {
  return value === null || value === undefined ? "–" : value.toFixed(1);
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 10) return seconds.toFixed(1) + " s";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

export function storeFlag(value) {
  if (value === true) return el("span", { class: "flag-bad", text: "DEGRADED" });
  if (value === false) return el("span", { class: "flag-ok", text: "ok" });
  return el("span", { class: "muted", text: "not reported" });
}

export function table(headers, rows) {
  const head = el("tr", {}, headers.map(([label, cls]) => el("th", { class: cls, text: label })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
}

export function td(text, cls) {
  return el("td", { class: cls, text: text });
}

export function show(id, text) {
  const node = document.getElementById(id);
  node.textContent = text || "";
  node.hidden = !text;
}

export function writer(clientNo, byNumber) {
  if (clientNo === 0) return "server";
  const device = byNumber.get(clientNo);
  return device ? `${clientNo} (${device})` : String(clientNo);
}

export function capped(shown, total, what) {
  return shown < total ? el("p", { class: "muted", text: `showing the first ${shown} of ${total} ${what}` }) : null;
}
