// Unit tests of the client's pure parts and its connection logic, with
// fake WebSocket and EventSource classes. Run: node --test (from web/).
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, splitFrames, CursorBook, dispatch, connect, SUBPROTOCOL } from "./topohub.js";

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
    FakeWebSocket.all.push(this);
  }
  send(s) { this.sent.push(JSON.parse(s)); }
  close() { this.readyState = 3; }
  open() { this.readyState = 1; this.onopen?.(); }
  message(data) { this.onmessage?.({ data }); }
  drop() { this.readyState = 3; this.onclose?.({ code: 1006 }); }
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
    onState: (s) => states.push(s),
    ...extra,
  });
  return { hub, states, tickets: () => tickets };
}

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
});

test("falls back to EventSource after three closes before open, then returns to WebSocket", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { hub } = setup();
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
  hub.close();
});

test("an error frame for a topology ends that subscription only", async () => {
  const { hub } = setup();
  await settle();
  const ws = FakeWebSocket.all[0];
  ws.open();
  const errors = [];
  hub.subscribe("gone", { error: (e) => errors.push(e.code) });
  hub.subscribe("T", {});
  ws.message('{"op":"error","id":"1","code":"not_found","topology":"gone","message":"topology not found"}');
  assert.deepEqual(errors, ["not_found"]);
  assert.deepEqual([...hub.subs.keys()], ["T"]);
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
  hub.subs.set(second.topology, { error: (e) => errors.push(e.code) });
  ws.message(JSON.stringify({ op: "error", id: first.id, code: "rate_limited", message: "slow down" }));
  ws.message(JSON.stringify({ op: "error", id: second.id, topology: second.topology, code: "too_many_subscriptions", message: "full" }));
  assert.deepEqual(errors, ["too_many_subscriptions"]);
  assert.ok(!hub.subs.has(second.topology));
  for (let i = 0; i < 80; i++) t.mock.timers.tick(100);
  const retried = subscribes().filter((f) => f.topology === first.topology);
  assert.equal(retried.length, 2, "the rate-limited subscribe was sent again");
  assert.equal(subscribes().length, 101, "every topology subscribed once, plus the retry");
  hub.close();
});
