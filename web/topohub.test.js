// Unit tests of the client's pure parts and its connection logic, with
// fake WebSocket and EventSource classes. Run: node --test (from web/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  backoffDelay, splitFrames, CursorBook, dispatch, connect, SUBPROTOCOL,
  CLOSE_POLICY, closeAction, refreshDelay, eventName, DEFAULT_EVENT_NAMES,
  WebSocketTransport, EventSourceTransport,
} from "./topohub.js";

test("backoffDelay is full jitter under an exponential, capped ceiling", () => {
  const opts = { initialBackoff: 100, maxBackoff: 1000 };
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.999), 99);
  assert.equal(backoffDelay(1, opts, () => 0.5), 100);
  assert.equal(backoffDelay(3, opts, () => 0.999), 799);
  assert.equal(backoffDelay(4, opts, () => 0.999), 999, "capped at maxBackoff");
  assert.equal(backoffDelay(500, opts, () => 0.999), 999, "huge attempts stay capped");
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, opts);
    assert.ok(d >= 0 && d < 400, `delay ${d} outside [0, 400)`);
  }
});

test("splitFrames splits on newlines and drops what is not a JSON object", () => {
  const text = '{"op":"pong","id":"1"}\n{"op":"event","topology":"T"}\nnot json\n[1,2]\nnull\n\n"str"\n{"op":"x"}';
  assert.deepEqual(splitFrames(text), [{ op: "pong", id: "1" }, { op: "event", topology: "T" }, { op: "x" }]);
  assert.deepEqual(splitFrames(""), []);
  assert.deepEqual(splitFrames(undefined), []);
  assert.deepEqual(splitFrames(new ArrayBuffer(3)), []);
});

test("CursorBook keeps the newest cursor per topology", () => {
  const b = new CursorBook();
  b.see("T", "1-1");
  b.see("T", "1-5");
  b.see("U", "1-3");
  b.see("T", "");
  b.see("T", undefined);
  assert.equal(b.get("T"), "1-5");
  assert.equal(b.get("U"), "1-3");
  b.forget("T");
  assert.equal(b.get("T"), undefined);
});

test("dispatch routes snapshot, resync and events, and contains handler exceptions", () => {
  const seen = [];
  const h = {
    snapshot: (d, id) => seen.push(["snapshot", id]),
    resync: (d, id) => seen.push(["resync", id]),
    event: (n, d, id) => seen.push([n, id]),
    error: (e) => seen.push(["error", e.code]),
  };
  dispatch(h, "snapshot", { topology_id: "T" }, "1-1");
  dispatch(h, "snapshot", { topology_id: "T", resync: true }, "1-2");
  dispatch(h, "mutation.applied", {}, "1-3");
  dispatch(h, "error", { code: "not_found" }, "");
  dispatch({ snapshot: (d, id) => seen.push(["snapshot-only", id]) }, "snapshot", { resync: true }, "1-4");
  assert.deepEqual(seen, [["snapshot", "1-1"], ["resync", "1-2"], ["mutation.applied", "1-3"], ["error", "not_found"], ["snapshot-only", "1-4"]]);
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (err) => reported.push(err.message);
  try {
    assert.doesNotThrow(() => dispatch({ event: () => { throw new Error("page bug"); } }, "status", {}, "1-5"));
  } finally {
    globalThis.reportError = saved;
  }
  assert.deepEqual(reported, ["page bug"]);
});

// FakeWebSocket records what the client sends; the test drives events.
class FakeWebSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = undefined;
    FakeWebSocket.all.push(this);
  }
  send(s) { this.sent.push(JSON.parse(s)); }
  close(code) { this.readyState = 3; this.closedWith = code; }
  open() { this.readyState = 1; this.onopen?.(); }
  message(data) { this.onmessage?.({ data: typeof data === "string" ? data : JSON.stringify(data) }); }
  drop(code = 1006, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  ops() { return this.sent.map((f) => f.op); }
}

class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = url;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) { (this.listeners[name] ??= []).push(fn); }
  close() { this.closed = true; }
  emit(name, data, lastEventId) { this.emitRaw(name, JSON.stringify(data), lastEventId); }
  emitRaw(name, data, lastEventId) {
    for (const fn of this.listeners[name] ?? []) fn({ data, lastEventId });
  }
  fail() { this.onerror?.({}); }
}

async function settle() {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

function setup(extra = {}) {
  FakeWebSocket.all = [];
  FakeEventSource.all = [];
  let tickets = 0;
  const states = [];
  const hub = connect({
    url: "http://hub.test",
    getTicket: async () => `t${++tickets}`,
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    random: () => 0.5,
    initialBackoff: 100,
    maxBackoff: 1000,
    retryWebSocketAfter: 5000,
    refresh: false,
    ...extra,
  });
  hub.addEventListener("state", (e) => {
    assert.equal(e.detail.state, hub.state, "the state event follows the change");
    assert.equal(e.detail.transport, hub.transport);
    states.push(e.detail.state);
  });
  return { hub, states, tickets: () => tickets };
}

// ---- connection: transports, reconnect, fallback, pacing ----

test("subscribes over one WebSocket and resumes with cursors after a reconnect", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { hub, states, tickets } = setup();
  await settle();
  const ws = FakeWebSocket.all[0];
  assert.equal(ws.protocol, SUBPROTOCOL);
  assert.equal(ws.url, "ws://hub.test/api/v1/ws?ticket=t1");
  const got = [];
  hub.subscribe("T", { snapshot: (d, id) => got.push(["snap", d.status, id]), event: (n, d, id) => got.push([n, id]) });
  hub.subscribe("U", {});
  ws.open();
  assert.equal(hub.transport, "websocket");
  assert.deepEqual(ws.sent.map((f) => [f.op, f.topology, f.since]), [["subscribe", "T", undefined], ["subscribe", "U", undefined]]);
  ws.message('{"op":"subscribed","id":"1","topology":"T"}\n{"op":"event","topology":"T","event":"snapshot","id":"9-1","data":{"topology_id":"T","status":"active","in_flight":[]}}\n{"op":"event","topology":"T","event":"status","id":"9-4","data":{"topic":"topology.T.status"}}\n{"op":"unknown"}\ngarbage');
  assert.deepEqual(got, [["snap", "active", "9-1"], ["status", "9-4"]]);

  ws.drop();
  assert.equal(hub.state, "connecting");
  t.mock.timers.tick(1000);
  await settle();
  const ws2 = FakeWebSocket.all[1];
  assert.ok(ws2, "reconnected");
  assert.equal(tickets(), 2, "a fresh ticket per attempt");
  ws2.open();
  assert.deepEqual(ws2.sent.map((f) => [f.topology, f.since]), [["T", "9-4"], ["U", undefined]]);
  assert.deepEqual(states, ["open", "connecting", "open"]);
  hub.unsubscribe("U");
  assert.deepEqual(ws2.sent.at(-1).op, "unsubscribe");
  hub.close();
  assert.equal(hub.state, "closed");
  assert.equal(ws2.closedWith, 1000);
  assert.deepEqual(states, ["open", "connecting", "open", "closed"]);
});

test("a state listener that subscribes on open is not sent twice", async () => {
  const { hub } = setup();
  hub.subscribe("T", {});
  hub.addEventListener("state", (e) => { if (e.detail.state === "open") hub.subscribe("U", {}); });
  await settle();
  const ws = FakeWebSocket.all[0];
  ws.open();
  assert.deepEqual(ws.sent.map((f) => f.topology), ["T", "U"]);
  hub.close();
});

test("falls back to EventSource after three closes before open, then returns to WebSocket", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { hub, states } = setup();
  const got = [];
  hub.subscribe("T", { snapshot: (d, id) => got.push(["snap", id]), event: (n, d, id) => got.push([n, id]) });
  for (let i = 0; i < 3; i++) {
    await settle();
    FakeWebSocket.all[i].drop(); // refused: closed before open
    t.mock.timers.tick(1000);
  }
  await settle();
  assert.equal(hub.state, "fallback");
  assert.equal(hub.transport, "sse");
  const es = FakeEventSource.all[0];
  assert.ok(es, "EventSource opened");
  assert.match(es.url, /^http:\/\/hub\.test\/api\/v1\/topologies\/T\/events\?ticket=t\d+$/);
  es.emit("snapshot", { topology_id: "T", status: "active", in_flight: [] }, "7-1");
  es.emit("mutation.applied", { topic: "topology.T.mutation.applied" }, "7-2");
  es.emitRaw("snapshot", "not json at all", "7-3");
  es.emit("snapshot", "a JSON string, not an object", "7-4");
  assert.deepEqual(got, [["snap", "7-1"], ["mutation.applied", "7-2"]]);

  // Later the WebSocket is tried again. The EventSources close first (they
  // hold cap slots the WebSocket needs); a failed attempt reopens them
  // with their cursors.
  t.mock.timers.tick(5000);
  await settle();
  assert.ok(es.closed, "EventSource closed before the WebSocket retry");
  FakeWebSocket.all.at(-1).drop();
  await settle();
  assert.equal(hub.state, "fallback");
  const es2 = FakeEventSource.all.at(-1);
  assert.notEqual(es2, es);
  assert.match(es2.url, /lastEventId=7-2/);

  t.mock.timers.tick(5000);
  await settle();
  const ws = FakeWebSocket.all.at(-1);
  ws.open();
  assert.equal(hub.state, "open");
  assert.ok(es2.closed, "EventSource closed after the WebSocket came back");
  assert.deepEqual(ws.sent.map((f) => [f.topology, f.since]), [["T", "7-2"]]);
  assert.deepEqual(states, ["fallback", "open"], "one state event per change");
  hub.close();
});

test("an error frame for a topology ends that subscription only", async () => {
  const { hub } = setup();
  await settle();
  const ws = FakeWebSocket.all[0];
  ws.open();
  const errors = [];
  const frames = [];
  hub.addEventListener("error", (e) => frames.push(e.detail.code));
  hub.subscribe("gone", { error: (e) => errors.push(e.code) });
  hub.subscribe("T", {});
  ws.message('{"op":"error","id":"1","code":"not_found","topology":"gone","message":"topology not found"}');
  ws.message('{"op":"error","topology":"T","code":"not_found","message":"topology not found"}');
  assert.deepEqual(errors, ["not_found"]);
  assert.deepEqual(frames, ["not_found", "not_found"]);
  assert.deepEqual(hub.topologies, []);
  hub.close();
});

test("subscribes are paced under the hub's control rate and retried when refused", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const { hub } = setup();
  await settle();
  const ws = FakeWebSocket.all[0];
  for (let i = 0; i < 100; i++) hub.subscribe("T" + i, {});
  ws.open();
  const subscribes = () => ws.sent.filter((f) => f.op === "subscribe");
  assert.equal(subscribes().length, 20, "a burst of 20");
  for (let i = 0; i < 10; i++) t.mock.timers.tick(100);
  assert.equal(subscribes().length, 30, "then 10 per second");

  // rate_limited and unavailable are retried; other refusals end the subscription.
  const [first, second] = subscribes();
  const errors = [];
  hub.subscribe(second.topology, { error: (e) => errors.push(e.code) }); // replaces the handlers only
  ws.message({ op: "error", id: first.id, code: "rate_limited", message: "slow down" });
  ws.message({ op: "error", id: second.id, topology: second.topology, code: "too_many_subscriptions", message: "full" });
  assert.deepEqual(errors, ["too_many_subscriptions"]);
  assert.ok(!hub.topologies.includes(second.topology));
  for (let i = 0; i < 80; i++) t.mock.timers.tick(100);
  const retried = subscribes().filter((f) => f.topology === first.topology);
  assert.equal(retried.length, 2, "the rate-limited subscribe was sent again");
  assert.equal(subscribes().length, 101, "every topology subscribed once, plus the retry");
  hub.close();
});

// ---- close codes ----

test("the close-code table mirrors the hub's codes and reasons", () => {
  // docs/protocol.md's table and the hub's close reasons are the source;
  // a code or reason added there must be decided here.
  const doc = readFileSync(new URL("../docs/protocol.md", import.meta.url), "utf8");
  const section = doc.slice(doc.indexOf("### Close codes"));
  const documented = [...section.matchAll(/^\| (\d{4})[ |]/gm)].map((m) => Number(m[1]));
  assert.ok(documented.length >= 5, "close-code table not found in docs/protocol.md");
  const mine = new Set(CLOSE_POLICY.map((r) => r.code));
  for (const code of documented) assert.ok(mine.has(code), `close code ${code} of docs/protocol.md has no row in CLOSE_POLICY`);
  const server = readFileSync(new URL("../handlers/handler_websocket.go", import.meta.url), "utf8");
  for (const row of CLOSE_POLICY.filter((r) => r.reason !== "")) {
    assert.ok(server.includes(JSON.stringify(row.reason)), `the hub no longer closes with reason ${JSON.stringify(row.reason)}`);
  }

  assert.equal(closeAction(1000), "reconnect");
  assert.equal(closeAction(1001, "hub shutting down"), "reconnect");
  assert.equal(closeAction(1006), "reconnect");
  assert.equal(closeAction(1007, "invalid UTF-8"), "stop");
  assert.equal(closeAction(1008, "control channel abuse"), "stop");
  assert.equal(closeAction(1009, "message too big"), "stop");
  assert.equal(closeAction(4001, "credentials expired"), "reauth");
  assert.equal(closeAction(4001, "credentials revoked"), "stop");
  assert.equal(closeAction(4001, "something new"), "reauth", "an unknown 4001 asks for fresh credentials");
  assert.equal(closeAction(4001), "reauth");
  assert.equal(closeAction(1011), "reconnect", "codes outside the table back off");
  assert.equal(closeAction(4999, "x"), "reconnect");
  assert.ok(Object.isFrozen(CLOSE_POLICY) && CLOSE_POLICY.every(Object.isFrozen));
});

for (const [code, reason] of [[1007, "invalid UTF-8"], [1008, "control channel abuse"], [1009, "message too big"], [4001, "credentials revoked"]]) {
  test(`close ${code} "${reason}" is terminal: error state, no reconnect`, async (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const { hub, states, tickets } = setup({ fallbackAfter: 1 });
    hub.subscribe("T", {});
    await settle();
    FakeWebSocket.all[0].open();
    FakeWebSocket.all[0].drop(code, reason);
    assert.equal(hub.state, "error");
    assert.equal(hub.transport, "none");
    assert.deepEqual(hub.error, { code, reason });
    t.mock.timers.tick(10 * 60 * 1000);
    await settle();
    assert.equal(FakeWebSocket.all.length, 1, "no reconnect");
    assert.equal(FakeEventSource.all.length, 0, "no fallback either");
    assert.equal(tickets(), 1);
    assert.deepEqual(states, ["open", "error"]);
    hub.subscribe("U", {}); // kept for a later reconnect(), sends nothing now
    assert.equal(FakeWebSocket.all[0].sent.length, 1);

    // The page may start again, e.g. after the user logged in anew.
    hub.reconnect();
    assert.equal(hub.state, "connecting");
    assert.equal(hub.error, null);
    await settle();
    FakeWebSocket.all[1].open();
    assert.deepEqual(FakeWebSocket.all[1].sent.map((f) => f.topology), ["T", "U"]);
    assert.deepEqual(states, ["open", "error", "connecting", "open"]);
    hub.close();
  });
}

test("4001 expired reconnects at once with a fresh ticket; 1001 and drops back off", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { hub, tickets } = setup({ random: () => 0.999, initialBackoff: 1000, maxBackoff: 8000 });
  hub.subscribe("T", {});
  await settle();
  FakeWebSocket.all[0].open();
  FakeWebSocket.all[0].message({ op: "event", topology: "T", event: "snapshot", id: "5-1", data: { topology_id: "T" } });
  FakeWebSocket.all[0].drop(4001, "credentials expired");
  assert.equal(hub.state, "connecting");
  t.mock.timers.tick(0);
  await settle();
  assert.equal(FakeWebSocket.all.length, 2, "reconnected without a backoff");
  assert.equal(tickets(), 2);
  assert.equal(FakeWebSocket.all[1].url, "ws://hub.test/api/v1/ws?ticket=t2");
  FakeWebSocket.all[1].open();
  assert.equal(FakeWebSocket.all[1].sent[0].since, "5-1", "resumes from the cursor");

  FakeWebSocket.all[1].drop(1001, "hub shutting down");
  t.mock.timers.tick(998);
  await settle();
  assert.equal(FakeWebSocket.all.length, 2, "1001 waits for its backoff");
  t.mock.timers.tick(1);
  await settle();
  assert.equal(FakeWebSocket.all.length, 3);
  // A second failure in a row doubles the ceiling (jitter is 0.999 here).
  FakeWebSocket.all[2].drop(1006);
  t.mock.timers.tick(1997);
  await settle();
  assert.equal(FakeWebSocket.all.length, 3);
  t.mock.timers.tick(1);
  await settle();
  assert.equal(FakeWebSocket.all.length, 4);
  hub.close();
});

// ---- refresh in place ----

test("refreshDelay: lead before the end, halfway when short, null when too late", () => {
  const lead = 60_000;
  assert.equal(refreshDelay(1_000_000 + 3_600_000, 1_000_000, lead), 3_540_000);
  assert.equal(refreshDelay(100_000, 0, lead), 50_000, "under 2×lead: halfway");
  assert.equal(refreshDelay(1_000, 0, lead), 500);
  assert.equal(refreshDelay(400, 0, lead), null, "too close to the end");
  assert.equal(refreshDelay(-5, 0, lead), null, "already past");
  assert.equal(refreshDelay(Number.NaN, 0, lead), null);
  assert.equal(refreshDelay(365 * 86_400_000, 0, lead), 2 ** 31 - 1, "clamped: setTimeout fires at once past 2^31-1");
});

test("refresh in place: a ticket right after open, then refreshLead before each end", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000_000_000 });
  const { hub, states, tickets } = setup({ refresh: true, refreshLead: 60_000 });
  hub.subscribe("T", {});
  await settle();
  const ws = FakeWebSocket.all[0];
  ws.open();
  await settle();
  const refresh = () => ws.sent.filter((f) => f.op === "refresh");
  assert.equal(refresh().length, 1, "the first refresh learns the session's end");
  assert.equal(refresh()[0].ticket, "t2", "with a fresh ticket");
  assert.equal(hub.expiresAt, null);
  const now = () => Date.now();
  ws.message({ op: "refreshed", id: refresh()[0].id, expires_at: now() / 1000 + 600 });
  assert.equal(hub.expiresAt, now() + 600_000);

  t.mock.timers.tick(540_000 - 1);
  await settle();
  assert.equal(refresh().length, 1, "not before end - lead");
  t.mock.timers.tick(1);
  await settle();
  assert.equal(refresh().length, 2);
  assert.equal(refresh()[1].ticket, "t3");
  ws.message({ op: "refreshed", id: refresh()[1].id, expires_at: now() / 1000 + 3600 });
  assert.equal(hub.expiresAt, now() + 3_600_000);

  // A refused refresh is retried halfway to the end, while the end is near.
  t.mock.timers.tick(3_540_000);
  await settle();
  assert.equal(refresh().length, 3);
  ws.message({ op: "error", id: refresh()[2].id, code: "forbidden", message: "credentials refused" });
  t.mock.timers.tick(30_000);
  await settle();
  assert.equal(refresh().length, 4, "retried halfway (60 s left, after 30 s)");
  // A refreshed reply with an unknown id (not ours) changes nothing.
  ws.message({ op: "refreshed", id: "999", expires_at: now() / 1000 + 99_999 });
  assert.equal(hub.expiresAt, now() + 30_000);

  assert.equal(FakeWebSocket.all.length, 1, "no reconnect");
  assert.deepEqual(states, ["open"]);
  assert.equal(tickets(), 5);
  hub.close();
});

test("refresh with getToken sends the token; a failing callback is retried", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000_000_000 });
  let n = 0;
  let fail = true;
  const { hub } = setup({
    refresh: true, refreshLead: 1000,
    getToken: async () => { if (fail) throw new Error("auth down"); return `jwt${++n}`; },
  });
  await settle();
  const ws = FakeWebSocket.all[0];
  ws.open();
  await settle();
  assert.deepEqual(ws.sent, [], "nothing sent while the callback fails");
  fail = false;
  t.mock.timers.tick(1000);
  await settle();
  assert.deepEqual(ws.sent.map((f) => [f.op, f.token, f.ticket]), [["refresh", "jwt1", undefined]]);
  ws.message({ op: "refreshed", id: ws.sent[0].id, expires_at: Date.now() / 1000 + 10 });
  t.mock.timers.tick(9000);
  await settle();
  assert.equal(ws.sent.at(-1).token, "jwt2");
  // The session ends before a refresh succeeded: the hub closes with 4001
  // and the client reconnects; no refresh timer of the old socket fires.
  ws.drop(4001, "credentials expired");
  t.mock.timers.tick(0);
  await settle();
  assert.equal(FakeWebSocket.all.length, 2);
  const before = ws.sent.length;
  t.mock.timers.tick(60_000);
  await settle();
  assert.equal(ws.sent.length, before);
  hub.close();
});

test("refresh: false sends no refresh", async () => {
  const { hub } = setup({ refresh: false });
  await settle();
  FakeWebSocket.all[0].open();
  await settle();
  assert.deepEqual(FakeWebSocket.all[0].sent, []);
  hub.close();
});

// ---- the transports on their own ----

function fakeLink(topologies = []) {
  const log = [];
  const subs = new Set(topologies);
  return {
    log, subs,
    httpBase: () => "http://hub.test/api/v1",
    topologies: () => [...subs],
    has: (id) => subs.has(id),
    cursor: (id) => (id === "T" ? "3-3" : undefined),
    deliver: (id, name, data, cursor) => log.push(["deliver", id, name, cursor]),
    end: (id, err) => log.push(["end", id, err.code]),
    frameError: (f) => log.push(["frameError", f.code]),
    opened: () => log.push(["opened"]),
    closed: (_t, info) => log.push(["closed", info.code, info.reason, info.opened]),
  };
}

const transportOpts = (extra = {}) => ({
  WebSocket: FakeWebSocket, EventSource: FakeEventSource, random: () => 0,
  initialBackoff: 100, maxBackoff: 1000, refresh: false, refreshLead: 1000,
  eventNames: DEFAULT_EVENT_NAMES, getTicket: async () => "tk", ...extra,
});

test("WebSocketTransport: ticket, open, frames, one close report; close() reports nothing", async () => {
  FakeWebSocket.all = [];
  const link = fakeLink(["T"]);
  const t = new WebSocketTransport(link, transportOpts());
  assert.equal(t.kind, "websocket");
  assert.deepEqual(Object.keys(t), ["kind"], "no public mutable state");
  t.start();
  await settle();
  const ws = FakeWebSocket.all[0];
  assert.equal(ws.url, "ws://hub.test/api/v1/ws?ticket=tk");
  t.add("early"); // before open: sent on open, from link.topologies()
  assert.deepEqual(ws.sent, []);
  ws.open();
  assert.deepEqual(ws.sent.map((f) => [f.op, f.topology, f.since]), [["subscribe", "T", "3-3"]]);
  ws.message({ op: "event", topology: "T", event: "status", id: "3-4", data: {} });
  ws.message({ op: "error", code: "bad_request", message: "?" });
  ws.drop(1001, "hub shutting down");
  ws.drop(1006); // a second onclose is ignored
  assert.deepEqual(link.log, [["opened"], ["deliver", "T", "status", "3-4"], ["frameError", "bad_request"], ["closed", 1001, "hub shutting down", true]]);

  const link2 = fakeLink();
  const t2 = new WebSocketTransport(link2, transportOpts({ getTicket: async () => { throw new Error("401"); } }));
  t2.start();
  await settle();
  assert.deepEqual(link2.log, [["closed", 0, "getTicket failed", false]]);

  const link3 = fakeLink();
  const t3 = new WebSocketTransport(link3, transportOpts());
  t3.start();
  await settle();
  FakeWebSocket.all.at(-1).open();
  t3.close();
  FakeWebSocket.all.at(-1).drop(1000);
  assert.deepEqual(link3.log, [["opened"]]);
  assert.equal(FakeWebSocket.all.at(-1).closedWith, 1000);
});

test("EventSourceTransport: per-topology sources, fresh ticket on error, error event ends, generic listener", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  FakeEventSource.all = [];
  let n = 0;
  const link = fakeLink(["T", "U"]);
  const tr = new EventSourceTransport(link, transportOpts({
    getTicket: async () => `s${++n}`,
    eventNames: ["snapshot", "error", "alert.raised"],
  }));
  assert.equal(tr.kind, "sse");
  assert.deepEqual(Object.keys(tr), ["kind"], "no public mutable state");
  tr.start();
  tr.add("T"); // already opening: not twice
  await settle();
  assert.equal(FakeEventSource.all.length, 2);
  const [esT, esU] = FakeEventSource.all;
  assert.equal(esT.url, "http://hub.test/api/v1/topologies/T/events?ticket=s1&lastEventId=3-3");
  assert.equal(esU.url, "http://hub.test/api/v1/topologies/U/events?ticket=s2");
  assert.deepEqual(Object.keys(esT.listeners).sort(), ["alert.raised", "error", "message", "snapshot"]);
  esT.emit("alert.raised", { topic: "alert.T.raised" }, "3-5");
  esT.emit("status", { topic: "topology.T.status" }, "3-6"); // not listened for: EventSource drops it
  esT.emit("message", { topic: "topology.T.layout.changed" }, "3-7");
  esU.emit("error", { code: "not_found", message: "topology not found" }, "");
  assert.ok(esU.closed);
  esT.fail();
  assert.ok(esT.closed);
  t.mock.timers.tick(250);
  await settle();
  assert.equal(FakeEventSource.all.length, 3, "T reopened; U ended");
  assert.match(FakeEventSource.all[2].url, /ticket=s3/);
  assert.deepEqual(link.log, [
    ["deliver", "T", "alert.raised", "3-5"],
    ["deliver", "T", "layout.changed", "3-7"],
    ["end", "U", "not_found"],
  ]);
  tr.close();
  assert.ok(FakeEventSource.all[2].closed);
  FakeEventSource.all[2].fail();
  t.mock.timers.tick(10_000);
  await settle();
  assert.equal(FakeEventSource.all.length, 3, "nothing reopens after close()");
});

// ---- event names ----

test("eventName follows the hub's rule (docs/protocol.md §2)", () => {
  assert.equal(eventName("topology.T.mutation.applied"), "mutation.applied");
  assert.equal(eventName("topology.T.status"), "status");
  assert.equal(eventName("decky.host:web1.service_added"), "decky.service_added");
  assert.equal(eventName("alert.T.raised"), "raised");
  assert.equal(eventName("topology.T"), "topology.T");
  assert.equal(eventName("x"), "x");
});

test("the fallback listens to eventNames: the contract's list by default, extended by configuration", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const check = async (extra, want) => {
    const { hub } = setup({ fallbackAfter: 1, ...extra });
    hub.subscribe("T", {});
    await settle();
    FakeWebSocket.all[0].drop();
    await settle();
    assert.equal(hub.state, "fallback");
    const es = FakeEventSource.all[0];
    assert.deepEqual(Object.keys(es.listeners).filter((n) => n !== "message").sort(), [...want].sort());
    assert.deepEqual([...hub.eventNames].sort(), [...want].sort());
    hub.close();
  };
  await check({}, DEFAULT_EVENT_NAMES);
  await check({ eventNames: [...DEFAULT_EVENT_NAMES, "alert.raised"] }, [...DEFAULT_EVENT_NAMES, "alert.raised"]);
  await check({ eventNames: ["status"] }, ["snapshot", "error", "status"]);
  assert.ok(Object.isFrozen(DEFAULT_EVENT_NAMES));
  for (const name of ["snapshot", "status", "mutation.enqueued", "mutation.applying", "mutation.applied", "mutation.failed", "decky.service_added", "decky.service_removed"]) {
    assert.ok(DEFAULT_EVENT_NAMES.includes(name), `${name} (docs/protocol.md §3's listener list) missing`);
  }
});

test("connect validates its options", () => {
  const base = { url: "http://hub.test", getTicket: async () => "t", WebSocket: FakeWebSocket, refresh: false };
  assert.throws(() => connect({ url: "http://hub.test" }), TypeError);
  assert.throws(() => connect({ ...base, onState: () => {} }), /state" event/);
  assert.throws(() => connect({ ...base, eventNames: "status" }), TypeError);
  assert.throws(() => connect({ ...base, eventNames: [""] }), TypeError);
  assert.throws(() => connect({ ...base, getToken: "jwt" }), TypeError);
  connect(base).close();
});

test("the connection keeps its state private", async () => {
  const { hub } = setup();
  assert.deepEqual(Object.keys(hub), []);
  assert.throws(() => { hub.state = "open"; }, TypeError);
  hub.close();
});

test("every export of topohub.js and react.js is declared in its .d.ts", async () => {
  for (const [js, dts] of [["./topohub.js", "topohub.d.ts"], ["./react.js", "react.d.ts"]]) {
    const declared = new Set([...readFileSync(new URL(dts, import.meta.url), "utf8")
      .matchAll(/^export (?:declare )?(?:const|function|class|interface|type) (\w+)/gm)].map((m) => m[1]));
    for (const name of Object.keys(await import(js))) {
      assert.ok(declared.has(name), `${js} exports ${name}, which ${dts} does not declare`);
    }
  }
});
