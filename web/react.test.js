// Unit tests of react.js: the reducer the hook applies and the per-topology
// store behind it, with a fake connection and fake React hooks. The
// Chromium test renders it with a real React (handlers/browser_client_test.go).
import { test } from "node:test";
import assert from "node:assert/strict";
import { applyDelivery, sortInFlight, createTopologyStream, EMPTY_TOPOLOGY } from "./react.js";

const row = (id, state, requested_at) => ({ id, topology_id: "T", op: "add_decky", payload: {}, state, requested_at, applied_at: null, reason: null });
const ids = (view) => view.inFlight.map((r) => `${r.id}:${r.state}`).join(",");

test("sortInFlight orders as the hub's snapshot: pending then applying, newest first", () => {
  const rows = [
    row("a1", "applying", "2025-11-28T10:00:00+00:00"),
    row("p1", "pending", "2025-11-28T09:00:00"),
    row("p2", "pending", 1764324000), // 2025-11-28T10:00:00Z as epoch seconds
    row("p0", "pending", "not a time"),
    row("a2", "applying", "2025-11-28T11:00:00Z"),
  ];
  assert.deepEqual(sortInFlight(rows).map((r) => r.id), ["p2", "p1", "p0", "a2", "a1"]);
  assert.equal(rows[0].id, "a1", "the input is not reordered");
});

test("applyDelivery: snapshot, status and mutation.* events, then a resync replaces", () => {
  let v = EMPTY_TOPOLOGY;
  v = applyDelivery(v, { kind: "snapshot", id: "1-1", data: { topology_id: "T", status: "active", in_flight: [row("m1", "pending", "2025-11-28T10:00:00+00:00"), null, { no: "id" }] } });
  assert.equal(v.loaded, true);
  assert.equal(v.status, "active");
  assert.equal(ids(v), "m1:pending");
  const before = v;
  v = applyDelivery(v, { kind: "event", name: "status", id: "1-2", data: { topic: "topology.T.status", type: "", ts: 1, payload: { state: "degraded" } } });
  assert.equal(v.status, "degraded");
  assert.equal(before.status, "active", "never mutates");
  v = applyDelivery(v, { kind: "event", name: "mutation.enqueued", id: "1-3", data: { topic: "topology.T.mutation.enqueued", ts: 1764330000.5, payload: { mutation_id: "m2", op: "remove_decky", payload: {} } } });
  assert.equal(ids(v), "m2:pending,m1:pending", "the new one is the newest");
  assert.equal(v.inFlight[0].topology_id, "T");
  v = applyDelivery(v, { kind: "event", name: "mutation.applying", id: "1-4", data: { payload: { mutation_id: "m1", op: "add_decky", payload: "{}" } } });
  assert.equal(ids(v), "m2:pending,m1:applying");
  v = applyDelivery(v, { kind: "event", name: "mutation.applied", id: "1-5", data: { payload: { mutation_id: "m1" } } });
  v = applyDelivery(v, { kind: "event", name: "decky.service_added", id: "1-6", data: { payload: { topology_id: "T" } } });
  assert.equal(ids(v), "m2:pending");
  v = applyDelivery(v, { kind: "event", name: "mutation.failed", id: "1-7", data: { payload: { mutation_id: "m2", reason: "MutationError: boom" } } });
  assert.equal(ids(v), "");
  assert.deepEqual(v.events.map((e) => e.name), ["status", "mutation.enqueued", "mutation.applying", "mutation.applied", "decky.service_added", "mutation.failed"]);
  assert.equal(v.cursor, "1-7");

  v = applyDelivery(v, { kind: "resync", id: "2-1", data: { topology_id: "T", status: "maintenance", in_flight: [row("m9", "applying", 1)], resync: true } });
  assert.equal(v.status, "maintenance");
  assert.equal(ids(v), "m9:applying");
  assert.equal(v.events.length, 6, "the event log is kept across a resync");

  v = applyDelivery(v, { kind: "error", data: { code: "not_found", message: "topology not found" } });
  assert.deepEqual(v.error, { code: "not_found", message: "topology not found" });
});

test("applyDelivery keeps at most maxEvents events", () => {
  let v = EMPTY_TOPOLOGY;
  for (let i = 0; i < 10; i++) v = applyDelivery(v, { kind: "event", name: "status", id: `1-${i}`, data: {} }, 3);
  assert.deepEqual(v.events.map((e) => e.id), ["1-7", "1-8", "1-9"]);
});

class FakeHub extends EventTarget {
  state = "connecting";
  transport = "none";
  subs = new Map();
  calls = [];
  subscribe(id, h) { this.calls.push(["subscribe", id]); this.subs.set(id, h); return { unsubscribe: () => this.unsubscribe(id) }; }
  unsubscribe(id) { this.calls.push(["unsubscribe", id]); this.subs.delete(id); }
  set(state, transport) {
    this.state = state;
    this.transport = transport;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, transport, error: null } }));
  }
}

// fakeReact's useSyncExternalStore remembers the store a "component" reads.
function fakeReact() {
  const used = [];
  return { used, useSyncExternalStore: (subscribe, getSnapshot) => { used.push({ subscribe, getSnapshot }); return getSnapshot(); } };
}

test("the hook shares one hub subscription per topology and follows the connection's state", () => {
  const hub = new FakeHub();
  const react = fakeReact();
  const useTopologyStream = createTopologyStream(hub, react);
  assert.equal(useTopologyStream("T").loaded, false);
  useTopologyStream("T");
  const [a, b] = react.used;
  assert.equal(a.subscribe, b.subscribe, "a stable subscribe per topology (React resubscribes otherwise)");
  let renders = 0;
  const offA = a.subscribe(() => renders++);
  const offB = b.subscribe(() => renders++);
  assert.deepEqual(hub.calls, [["subscribe", "T"]], "one subscription for two components");

  hub.subs.get("T").snapshot({ topology_id: "T", status: "active", in_flight: [row("m1", "pending", 1)] }, "1-1");
  const snap = a.getSnapshot();
  assert.equal(snap.status, "active");
  assert.equal(ids(snap), "m1:pending");
  assert.equal(a.getSnapshot(), snap, "the same object until something changes");
  assert.equal(renders, 2);
  hub.set("open", "websocket");
  assert.equal(a.getSnapshot().state, "open");
  assert.equal(a.getSnapshot().transport, "websocket");
  assert.equal(a.getSnapshot().status, "active");
  hub.subs.get("T").resync({ topology_id: "T", status: "degraded", in_flight: [], resync: true }, "2-1");
  assert.equal(a.getSnapshot().status, "degraded");
  assert.equal(ids(a.getSnapshot()), "");

  offA();
  assert.equal(hub.calls.length, 1, "still used by the other component");
  offB();
  offB(); // twice is harmless
  assert.deepEqual(hub.calls, [["subscribe", "T"], ["unsubscribe", "T"]]);
  assert.equal(a.getSnapshot().loaded, false, "a later mount waits for a fresh snapshot");
  hub.set("fallback", "sse");
  assert.equal(renders, 2 + 2 + 2, "no updates once unmounted");

  // No topology: connection state only, no subscription.
  const idle = useTopologyStream(null);
  assert.equal(idle.loaded, false);
  assert.equal(idle.state, "fallback");
  assert.equal(hub.calls.length, 2);
});

test("createTopologyStream takes React from the page, or says it found none", () => {
  const hub = new FakeHub();
  assert.throws(() => createTopologyStream(hub, undefined), /pass React/);
  assert.throws(() => createTopologyStream({}, fakeReact()), /connection/);
  globalThis.React = fakeReact();
  try {
    createTopologyStream(hub)("T");
    assert.equal(globalThis.React.used.length, 1);
  } finally {
    delete globalThis.React;
  }
  // React < 18: useReducer and useEffect.
  const effects = [];
  const legacy = { useReducer: (f, init) => [init, () => {}], useEffect: (fn) => effects.push(fn) };
  assert.equal(createTopologyStream(hub, legacy)("T").loaded, false);
  const cleanup = effects[0]();
  assert.deepEqual(hub.calls.at(-1), ["subscribe", "T"]);
  cleanup();
  assert.deepEqual(hub.calls.at(-1), ["unsubscribe", "T"]);
});
