// react.js: a React hook over topohub.js, a drop-in for the editor's
// useTopologyStream(topologyId). No React dependency: the page passes its
// React (or its hooks), or the page's global React is used.
//
//   import * as React from "react";
//   import { connect } from "topohub-client";
//   import { createTopologyStream } from "topohub-client/react";
//   const hub = connect({ url, getTicket });
//   export const useTopologyStream = createTopologyStream(hub, React);
//
//   const { status, inFlight, events, transport, state } = useTopologyStream(id);
//
// Usage and semantics: docs/client.md ("React").

/** Pending rows first, then applying ones (the snapshot's order, docs/protocol.md §3). */
const STATE_RANK = { pending: 0, applying: 1 };

/**
 * A topology's state before its first snapshot (and of no topology).
 * @type {Readonly<TopologyView>}
 */
export const EMPTY_TOPOLOGY = Object.freeze({
  loaded: false, status: "", inFlight: Object.freeze([]), events: Object.freeze([]), cursor: "", error: null,
});

/** requested_at as ms since the epoch: ISO-8601 text (UTC when no offset) or epoch seconds; NaN when unreadable. */
function requestedAt(row) {
  const v = row?.requested_at;
  if (typeof v === "number") return v * 1000;
  if (typeof v === "string" && v !== "") {
    const zoned = /(?:Z|[+-]\d\d:?\d\d)$/i.test(v) ? v : v + "Z";
    return Date.parse(zoned);
  }
  return NaN;
}

/**
 * Orders in-flight rows as the hub's snapshot does: pending before
 * applying, newest requested_at first, unreadable times last, ties by id.
 * @param {Object[]} rows
 * @returns {Object[]} a new array
 */
export function sortInFlight(rows) {
  return [...rows].sort((a, b) => {
    const r = (STATE_RANK[a.state] ?? 2) - (STATE_RANK[b.state] ?? 2);
    if (r !== 0) return r;
    const ta = requestedAt(a), tb = requestedAt(b);
    if (Number.isNaN(ta) !== Number.isNaN(tb)) return Number.isNaN(ta) ? 1 : -1;
    if (!Number.isNaN(ta) && ta !== tb) return tb - ta;
    return String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0;
  });
}

function rowsOf(inFlight) {
  if (!Array.isArray(inFlight)) return [];
  return inFlight.filter((r) => r !== null && typeof r === "object" && r.id != null);
}

/**
 * Applies one delivery to a topology's view, as the legacy editor did: a
 * snapshot or resync replaces status and in-flight rows; `status` events
 * set the status from payload.state; `mutation.enqueued` adds a pending
 * row, `mutation.applying` moves it to applying, `mutation.applied` and
 * `mutation.failed` remove it. Bus events are kept in `events` (newest
 * last, at most maxEvents). Never mutates `view`.
 * @param {TopologyView} view
 * @param {{kind: "snapshot" | "resync" | "event" | "error", name?: string, data?: any, id?: string}} d
 * @param {number} [maxEvents=100]
 * @returns {TopologyView}
 */
export function applyDelivery(view, d, maxEvents = 100) {
  const data = d.data ?? {};
  const cursor = d.id || view.cursor;
  switch (d.kind) {
    case "snapshot":
    case "resync":
      return {
        ...view, loaded: true, error: null, cursor,
        status: typeof data.status === "string" ? data.status : "",
        inFlight: sortInFlight(rowsOf(data.in_flight)),
      };
    case "error":
      return { ...view, error: { code: data.code ?? "", message: data.message ?? "" } };
    case "event": {
      const name = d.name ?? "";
      const events = [...view.events, { name, id: d.id ?? "", data }];
      if (events.length > maxEvents) events.splice(0, events.length - maxEvents);
      const next = { ...view, events, cursor };
      const p = data.payload;
      if (name === "status") {
        if (p && typeof p.state === "string") next.status = p.state;
        return next;
      }
      if (!name.startsWith("mutation.") || !p || p.mutation_id == null) return next;
      const id = String(p.mutation_id);
      const rows = view.inFlight.filter((r) => String(r.id) !== id);
      const old = view.inFlight.find((r) => String(r.id) === id);
      const row = (state) => ({
        id, topology_id: old?.topology_id ?? (typeof data.topic === "string" ? data.topic.split(".")[1] : undefined),
        op: p.op ?? old?.op, payload: p.payload ?? old?.payload, state,
        requested_at: old?.requested_at ?? data.ts, applied_at: null, reason: null,
      });
      if (name === "mutation.enqueued") rows.push(old ? { ...old, state: old.state ?? "pending" } : row("pending"));
      else if (name === "mutation.applying") rows.push(old ? { ...old, state: "applying" } : row("applying"));
      else if (name !== "mutation.applied" && name !== "mutation.failed") return next;
      next.inFlight = sortInFlight(rows);
      return next;
    }
    default:
      return view;
  }
}

/**
 * Builds the hook for one connection.
 *
 * One hub subscription per topology, however many components use it; it
 * starts with the first component and ends with the last. The hook owns
 * that topology's subscription on `hub`: do not also hub.subscribe() the
 * same topology on the same connection (the handlers would replace each
 * other).
 *
 * @param {import("./topohub.js").TopohubConnection} hub
 * @param {Object} [react] React, or an object with its hooks
 *   (useSyncExternalStore, or useReducer and useEffect for React < 18);
 *   defaults to the page's global React
 * @param {{maxEvents?: number}} [options]
 * @returns {(topologyId: string | null | undefined) => TopologyStream}
 */
export function createTopologyStream(hub, react = globalThis.React, options = {}) {
  if (!hub || typeof hub.subscribe !== "function" || typeof hub.addEventListener !== "function") {
    throw new TypeError("createTopologyStream: a connection from connect() is required");
  }
  const useSync = react?.useSyncExternalStore;
  if (typeof useSync !== "function" && (typeof react?.useReducer !== "function" || typeof react?.useEffect !== "function")) {
    throw new TypeError("createTopologyStream: pass React (or its hooks); none found on the page");
  }
  const maxEvents = options.maxEvents ?? 100;
  /** @type {Map<string, ReturnType<typeof makeStore>>} */
  const stores = new Map();

  const connection = () => ({ transport: hub.transport, state: hub.state });

  function makeStore(topologyId) {
    const listeners = new Set();
    let topo = EMPTY_TOPOLOGY;
    let view = Object.freeze({ ...topo, ...connection() });
    const publish = () => {
      view = Object.freeze({ ...topo, ...connection() });
      for (const l of [...listeners]) l();
    };
    const apply = (d) => { topo = applyDelivery(topo, d, maxEvents); publish(); };
    const onState = () => {
      const c = connection();
      if (c.transport !== view.transport || c.state !== view.state) publish();
    };
    const start = () => {
      hub.addEventListener("state", onState);
      hub.subscribe(topologyId, {
        snapshot: (data, id) => apply({ kind: "snapshot", data, id }),
        resync: (data, id) => apply({ kind: "resync", data, id }),
        event: (name, data, id) => apply({ kind: "event", name, data, id }),
        error: (data) => apply({ kind: "error", data }),
      });
      onState();
    };
    const stop = () => {
      hub.removeEventListener("state", onState);
      hub.unsubscribe(topologyId);
      topo = EMPTY_TOPOLOGY;
      view = Object.freeze({ ...topo, ...connection() });
    };
    return {
      subscribe(listener) {
        listeners.add(listener);
        if (listeners.size === 1) start();
        return () => {
          if (!listeners.delete(listener)) return;
          if (listeners.size === 0) stop();
        };
      },
      getSnapshot: () => {
        // Unwatched, the connection's state is read afresh (unchanged, the
        // same object is returned, as useSyncExternalStore requires).
        if (listeners.size === 0) {
          const c = connection();
          if (c.transport !== view.transport || c.state !== view.state) view = Object.freeze({ ...topo, ...c });
        }
        return view;
      },
    };
  }

  // The store of "no topology": connection state only.
  const idle = (() => {
    const listeners = new Set();
    let view = Object.freeze({ ...EMPTY_TOPOLOGY, ...connection() });
    const onState = () => {
      const c = connection();
      if (c.transport === view.transport && c.state === view.state) return;
      view = Object.freeze({ ...EMPTY_TOPOLOGY, ...c });
      for (const l of [...listeners]) l();
    };
    return {
      subscribe(listener) {
        listeners.add(listener);
        if (listeners.size === 1) hub.addEventListener("state", onState);
        onState();
        return () => {
          listeners.delete(listener);
          if (listeners.size === 0) hub.removeEventListener("state", onState);
        };
      },
      getSnapshot: () => {
        if (listeners.size === 0) {
          const c = connection();
          if (c.transport !== view.transport || c.state !== view.state) view = Object.freeze({ ...EMPTY_TOPOLOGY, ...c });
        }
        return view;
      },
    };
  })();

  function storeFor(topologyId) {
    if (!topologyId) return idle;
    let s = stores.get(topologyId);
    if (!s) stores.set(topologyId, (s = makeStore(topologyId)));
    return s;
  }

  // React < 18: the same store, read with useReducer and useEffect.
  function useStoreLegacy(store) {
    const [, bump] = react.useReducer((n) => n + 1, 0);
    react.useEffect(() => store.subscribe(bump), [store]);
    return store.getSnapshot();
  }

  return function useTopologyStream(topologyId) {
    const store = storeFor(topologyId);
    if (typeof useSync === "function") return useSync(store.subscribe, store.getSnapshot);
    return useStoreLegacy(store);
  };
}
