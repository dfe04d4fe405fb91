// The demo console: follows topologies through topohub.js and renders
// their status, in-flight mutations and a live event log.
import { connect } from "./topohub.js";

const $ = (sel, root = document) => root.querySelector(sel);
const params = new URLSearchParams(location.search);
const MAX_LOG = 200;

// The dev mode hands the token over in the fragment (never sent to a
// server, never in access logs); take it and clear it from the address bar.
const fragment = new URLSearchParams(location.hash.slice(1));
let token = fragment.get("token") || sessionStorage.getItem("topohub.token") || "";
if (fragment.has("token")) history.replaceState(null, "", location.pathname + location.search);
if (token) sessionStorage.setItem("topohub.token", token);
$("#token").value = token;

const basePath = params.get("base") || "/api/v1";
let hub = null;

async function getTicket() {
  const resp = await fetch(basePath + "/auth/sse-ticket", {
    method: "POST",
    headers: { Authorization: "Bearer " + token },
  });
  if (!resp.ok) {
    notice(resp.status === 401 ? "The token was refused (401): paste a fresh one." : `Ticket request failed: ${resp.status}`);
    throw new Error("ticket " + resp.status);
  }
  return (await resp.json()).ticket;
}

function notice(text) {
  $("#notice").textContent = text;
}

const transportLabels = {
  open: ["websocket", "WebSocket"],
  fallback: ["sse", "SSE fallback"],
  connecting: ["connecting", "connecting…"],
  closed: ["none", "not connected"],
  error: ["error", "stopped"],
};

function showState(state) {
  const [kind, label] = transportLabels[state] || transportLabels.closed;
  const badge = $("#transport");
  badge.dataset.transport = kind;
  badge.className = "badge badge-" + kind;
  badge.textContent = label;
}

function start() {
  if (hub) hub.close();
  hub = connect({
    url: location.origin,
    basePath,
    getTicket,
    initialBackoff: Number(params.get("initialBackoff")) || 500,
    maxBackoff: Number(params.get("maxBackoff")) || 10000,
    retryWebSocketAfter: Number(params.get("retryWebSocketAfter")) || 30000,
  });
  // The one state report: a "state" event after each change.
  hub.addEventListener("state", (e) => {
    showState(e.detail.state);
    if (e.detail.error) notice(`The hub ended the connection (${e.detail.error.code} ${e.detail.error.reason}); reconnect with Connect.`);
  });
  showState(hub.state);
  for (const panel of document.querySelectorAll(".panel")) follow(panel.dataset.topology, panel);
}

function panelFor(id) {
  for (const p of document.querySelectorAll(".panel")) if (p.dataset.topology === id) return p;
  return null;
}

function addPanel(id) {
  const panel = $("#panel-template").content.firstElementChild.cloneNode(true);
  panel.dataset.topology = id;
  $(".topology-id", panel).textContent = id;
  $(".remove", panel).addEventListener("click", () => {
    hub?.unsubscribe(id);
    panel.remove();
    $("#empty").hidden = document.querySelectorAll(".panel").length > 0;
  });
  $("#panels").append(panel);
  $("#empty").hidden = true;
  return panel;
}

function setStatus(panel, status) {
  const pill = $(".status", panel);
  pill.textContent = status || "unknown";
  pill.dataset.status = status || "";
}

function setCursor(panel, id) {
  if (id) $(".cursor", panel).textContent = id;
}

// In-flight mutations per panel: set from each snapshot, then kept live
// from mutation.* events (enqueued adds, applying moves, applied/failed
// removes), as the legacy editor's pending buffer did.
const inFlight = new WeakMap();

function setInFlight(panel, rows) {
  const m = new Map();
  for (const row of rows || []) if (row && row.id != null) m.set(String(row.id), row);
  inFlight.set(panel, m);
  renderInFlight(panel, [...m.values()]);
}

function trackMutation(panel, name, data) {
  const p = data?.payload;
  if (!p || p.mutation_id == null) return;
  const m = inFlight.get(panel) || new Map();
  const id = String(p.mutation_id);
  if (name === "mutation.enqueued") m.set(id, { id, op: p.op, state: "pending" });
  else if (name === "mutation.applying") m.set(id, { ...(m.get(id) || { id, op: p.op }), state: "applying" });
  else if (name === "mutation.applied" || name === "mutation.failed") m.delete(id);
  else return;
  inFlight.set(panel, m);
  const order = { pending: 0, applying: 1 };
  renderInFlight(panel, [...m.values()].sort((a, b) => (order[a.state] ?? 2) - (order[b.state] ?? 2)));
}

function renderInFlight(panel, rows) {
  const ul = $(".in-flight", panel);
  ul.replaceChildren();
  if (!rows || rows.length === 0) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none";
    ul.append(li);
    return;
  }
  for (const m of rows) {
    const li = document.createElement("li");
    li.dataset.mutation = m.id ?? "";
    li.innerHTML = `<span class="state"></span> <span class="op"></span> <code class="mid"></code>`;
    $(".state", li).textContent = m.state ?? "";
    $(".state", li).dataset.state = m.state ?? "";
    $(".op", li).textContent = m.op ?? "";
    $(".mid", li).textContent = m.id ?? "";
    ul.append(li);
  }
}

function log(panel, name, id, detail) {
  const ol = $(".log", panel);
  const li = document.createElement("li");
  li.dataset.event = name;
  li.dataset.cursor = id || "";
  const time = new Date().toLocaleTimeString();
  li.innerHTML = `<time></time> <span class="name"></span> <code class="id"></code><div class="detail"></div>`;
  $("time", li).textContent = time;
  $(".name", li).textContent = name;
  $(".id", li).textContent = id || "";
  $(".detail", li).textContent = detail;
  ol.prepend(li);
  while (ol.children.length > MAX_LOG) ol.lastElementChild.remove();
}

function summarize(data) {
  const text = JSON.stringify(data?.payload ?? data);
  return text.length > 160 ? text.slice(0, 157) + "…" : text;
}

function follow(id, panel = panelFor(id) || addPanel(id)) {
  if (!hub) return;
  hub.subscribe(id, {
    snapshot(data, cursor) {
      setStatus(panel, data.status);
      setInFlight(panel, data.in_flight);
      setCursor(panel, cursor);
      log(panel, "snapshot", cursor, `status ${data.status}, ${data.in_flight?.length ?? 0} in flight`);
    },
    resync(data, cursor) {
      setStatus(panel, data.status);
      setInFlight(panel, data.in_flight);
      setCursor(panel, cursor);
      log(panel, "resync", cursor, `caught up after a gap: status ${data.status}, ${data.in_flight?.length ?? 0} in flight`);
    },
    event(name, data, cursor) {
      if (name === "status" && data?.payload?.state) setStatus(panel, data.payload.state);
      trackMutation(panel, name, data);
      setCursor(panel, cursor);
      log(panel, name, cursor, summarize(data));
    },
    error(err) {
      panel.classList.add("gone");
      log(panel, "error", "", `${err?.code ?? "error"}: ${err?.message ?? ""}`);
    },
  });
}

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("topohub.token", token);
  notice(token ? "" : "Paste a token first.");
  if (token) start();
});

$("#add-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#topology");
  const id = input.value.trim();
  if (!id) return;
  if (!/^[^.*>\s]{1,128}$/u.test(id)) {
    notice(`"${id}" is not a valid topology id (no dots, '*', '>' or spaces; at most 128 bytes).`);
    return;
  }
  input.value = "";
  notice("");
  if (!panelFor(id)) follow(id);
});

// ?topology=a&topology=b follows those at once (handy for bookmarks).
for (const id of params.getAll("topology")) if (!panelFor(id)) addPanel(id);
if (token) start();
else notice("Paste a token to connect.");
