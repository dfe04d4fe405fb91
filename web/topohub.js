// topohub.js: the browser client of the topohub event hub.
//
// One WebSocket multiplexes every topology the page follows; when the
// WebSocket cannot be established it falls back, per topology, to the
// legacy EventSource route with the same handler API, and tries the
// WebSocket again later. Dependency-free ES module; no build step.
// Wire contract: docs/protocol.md; usage: docs/client.md; types:
// topohub.d.ts.
//
// Layout: pure parts (close-code policy, refresh timing, backoff, frame
// splitting, cursors), then the two transports, which share one small
// interface (start, add, remove, close), then TopohubConnection, which
// owns the subscriptions, the state and the choice of transport.

export const SUBPROTOCOL = "topohub.v1";

/** Subscribes sent at once on (re)connect, then per second: under the hub's control rate (burst 40, 20/s). */
export const SUBSCRIBE_BURST = 20;
export const SUBSCRIBE_RATE = 10;

/** Error codes after which a subscribe is retried; any other ends the subscription. */
const RETRYABLE = new Set(["rate_limited", "unavailable"]);

/**
 * The event names of the contract (docs/protocol.md §2 and the producers of
 * docs/protocol.md §3): what the SSE fallback listens for unless the `eventNames`
 * option says otherwise. EventSource delivers only the event names it has
 * a listener for, so a family or leaf added to the hub's configuration
 * must be added here by the page (`eventNames: [...DEFAULT_EVENT_NAMES,
 * "alert.raised"]`). "snapshot" and "error" are always listened for.
 */
export const DEFAULT_EVENT_NAMES = Object.freeze([
  "snapshot", "error", "status",
  "mutation.enqueued", "mutation.applying", "mutation.applied", "mutation.failed",
  "decky.service_added", "decky.service_removed", "decky.service_config_changed",
]);

/**
 * The client-facing event name of a bus topic (docs/protocol.md §2), as the hub
 * computes it: split on the first two dots; `decky` keeps its prefix.
 * @param {string} topic
 * @returns {string}
 */
export function eventName(topic) {
  const a = topic.indexOf(".");
  if (a < 0) return topic;
  const b = topic.indexOf(".", a + 1);
  if (b < 0) return topic;
  const head = topic.slice(0, a);
  const tail = topic.slice(b + 1);
  return head === "decky" ? "decky." + tail : tail;
}

/**
 * What the client does when the WebSocket closes, by close code: one row
 * per code of the hub (docs/protocol.md, "Close codes"). `action` is
 * "reconnect" (back off with jitter, resume every topology from its
 * cursor), "reauth" (reconnect at once with fresh credentials) or "stop"
 * (terminal: state "error", no reconnect until `reconnect()`).
 */
export const CLOSE_POLICY = Object.freeze([
  Object.freeze({ code: 1000, reason: "", action: "reconnect", why: "normal closure not asked for by this client: reconnect with backoff" }),
  Object.freeze({ code: 1001, reason: "", action: "reconnect", why: "hub shutting down: reconnect with backoff, resume from cursors" }),
  Object.freeze({ code: 1006, reason: "", action: "reconnect", why: "no close frame (network failure, missed pong): reconnect with backoff" }),
  Object.freeze({ code: 1007, reason: "", action: "stop", why: "a message of this client was not valid UTF-8; reconnecting would send it again" }),
  Object.freeze({ code: 1008, reason: "", action: "stop", why: "policy: the control channel was abused; reconnecting would repeat it" }),
  Object.freeze({ code: 1009, reason: "", action: "stop", why: "a message of this client was over 4 KiB; reconnecting would send it again" }),
  Object.freeze({ code: 4001, reason: "credentials expired", action: "reauth", why: "the session's exp passed without a refresh: reconnect at once with a fresh ticket" }),
  Object.freeze({ code: 4001, reason: "credentials revoked", action: "stop", why: "the token was revoked: fresh tickets of it are refused too" }),
]);

/**
 * The action of CLOSE_POLICY for a close event. A 4001 with another
 * reason is taken as "expired" (fresh credentials are the remedy either
 * way, and a revoked token cannot mint them); codes not in the table
 * (1011, 1012, 1013, other 4xxx) reconnect with backoff.
 * @param {number} code
 * @param {string} [reason]
 * @returns {"reconnect" | "reauth" | "stop"}
 */
export function closeAction(code, reason = "") {
  let fallback = null;
  for (const row of CLOSE_POLICY) {
    if (row.code !== code) continue;
    if (row.reason === "" || row.reason === reason) return row.action;
    fallback ??= "reauth";
  }
  return fallback ?? "reconnect";
}

/** Longest delay setTimeout accepts; longer ones fire at once. */
const MAX_TIMER = 2 ** 31 - 1;

/** Refreshes closer than this to the session's end are not attempted: the hub's 4001 and a reconnect follow. */
const MIN_REFRESH_DELAY = 250;

/**
 * When to send the next `refresh`: `lead` ms before the session's end, or
 * halfway there when the session has less than twice `lead` left (so a
 * refresh that did not move the end is retried a few times, ever closer).
 * Returns null when it is too late to try.
 * @param {number} expiresAt the session's end, ms since the epoch
 * @param {number} now ms since the epoch
 * @param {number} lead ms
 * @returns {number | null} delay in ms
 */
export function refreshDelay(expiresAt, now, lead) {
  const remaining = expiresAt - now;
  const delay = remaining > 2 * lead ? remaining - lead : Math.floor(remaining / 2);
  if (!(delay >= MIN_REFRESH_DELAY)) return null;
  return Math.min(delay, MAX_TIMER);
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, a uniform pick in [0, min(max, initial * 2^attempt)).
 * @param {number} attempt
 * @param {{initialBackoff?: number, maxBackoff?: number}} [opts]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const initial = opts.initialBackoff ?? 500;
  const max = opts.maxBackoff ?? 30000;
  const cap = Math.min(max, initial * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * cap);
}

/**
 * Splits one server message into frames: a message may hold several
 * frames separated by "\n". Frames that are not JSON objects are dropped.
 * @param {string} text
 * @returns {Object[]}
 */
export function splitFrames(text) {
  const out = [];
  if (typeof text !== "string") return out;
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    try {
      const frame = JSON.parse(line);
      if (frame !== null && typeof frame === "object" && !Array.isArray(frame)) out.push(frame);
    } catch {
      // A bad frame never throws into the page.
    }
  }
  return out;
}

/**
 * Keeps, per topology, the cursor of the newest event or snapshot seen,
 * so a reconnect resumes where the page left off.
 */
export class CursorBook {
  /** @type {Map<string, string>} */
  #cursors = new Map();
  /** @param {string} topology @param {string} id */
  see(topology, id) {
    if (typeof id === "string" && id !== "") this.#cursors.set(topology, id);
  }
  /** @param {string} topology @returns {string | undefined} */
  get(topology) {
    return this.#cursors.get(topology);
  }
  /** @param {string} topology */
  forget(topology) {
    this.#cursors.delete(topology);
  }
}

/** Reports the page's exception without letting it break the stream. */
function report(err) {
  (globalThis.reportError ?? console.error)(err);
}

/**
 * Delivers one event to a subscription's handlers, isolating the page's
 * exceptions from the client.
 * @param {Object} h TopologyHandlers @param {string} name @param {any} data @param {string} id
 */
export function dispatch(h, name, data, id) {
  try {
    if (name === "snapshot") {
      if (data && data.resync && h.resync) h.resync(data, id);
      else h.snapshot?.(data, id);
    } else if (name === "error") {
      h.error?.(data);
    } else {
      h.event?.(name, data, id);
    }
  } catch (err) {
    report(err);
  }
}

// ---------------------------------------------------------------------
// Transports. Both implement the same small interface:
//
//   kind            "websocket" | "sse"
//   start()         open (fetching credentials through link.getTicket)
//   add(topology)   deliver this topology too (from its cursor)
//   remove(topology) stop delivering it
//   close()         end everything; report nothing more
//
// and report to the connection through the link it was built with:
// deliver(topology, name, data, cursor), end(topology, err), and, for the
// WebSocket, opened(t), closed(t, {code, reason, opened}), frameError(frame).

/** One WebSocket for every topology: subscribe pacing, refresh in place. */
export class WebSocketTransport {
  kind = "websocket";
  #link;
  #opts;
  /** @type {WebSocket | null} */
  #ws = null;
  #open = false;
  #done = false;
  #nextId = 1;
  /** subscribe request id -> topology, until acknowledged */
  #pending = new Map();
  /** topologies whose subscribe waits for a token of the bucket */
  #toSend = [];
  #tokens = SUBSCRIBE_BURST;
  #refilledAt = 0;
  #flushTimer = null;
  #timers = new Set();
  // Refresh in place.
  #refreshId = null;
  #refreshTimer = null;
  #refreshAttempt = 0;
  /** @type {number | null} the session's end, ms since the epoch, from the last `refreshed` */
  #expiresAt = null;

  /** @param {Object} link the connection's side @param {Object} opts the connection's options */
  constructor(link, opts) {
    this.#link = link;
    this.#opts = opts;
  }

  /** @returns {number | null} */
  get expiresAt() { return this.#expiresAt; }

  async start() {
    let ticket;
    try {
      ticket = await this.#opts.getTicket();
    } catch {
      if (!this.#done) this.#finish({ code: 0, reason: "getTicket failed", opened: false, ticketFailed: true });
      return;
    }
    if (this.#done) return;
    let ws;
    try {
      ws = new this.#opts.WebSocket(this.#url(ticket), SUBPROTOCOL);
    } catch {
      this.#finish({ code: 0, reason: "WebSocket constructor failed", opened: false });
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#done) return;
      this.#open = true;
      this.#refilledAt = Date.now();
      // Queue every subscription before the connection reports "open", so
      // a state listener that subscribes is not sent twice.
      for (const id of this.#link.topologies()) this.add(id);
      this.#link.opened(this);
      if (this.#done) return;
      if (this.#opts.refresh) this.#sendRefresh();
    };
    ws.onmessage = (msg) => {
      if (this.#done) return;
      for (const frame of splitFrames(msg.data)) {
        this.#onFrame(frame);
        if (this.#done) return;
      }
    };
    ws.onclose = (ev) => {
      if (this.#done) return;
      this.#finish({ code: ev?.code ?? 1006, reason: ev?.reason ?? "", opened: this.#open });
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  /** @param {string} topologyId */
  add(topologyId) {
    if (!this.#open || this.#done) return; // sent on open
    if (!this.#toSend.includes(topologyId)) this.#toSend.push(topologyId);
    this.#flush();
  }

  /** @param {string} topologyId */
  remove(topologyId) {
    const i = this.#toSend.indexOf(topologyId);
    if (i >= 0) this.#toSend.splice(i, 1);
    for (const [id, t] of this.#pending) if (t === topologyId) this.#pending.delete(id);
    this.#send({ op: "unsubscribe", id: this.#id(), topology: topologyId });
  }

  close() {
    if (this.#done) return;
    this.#stop();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try { ws.close(1000); } catch { /* already closed */ }
    }
  }

  #stop() {
    this.#done = true;
    this.#open = false;
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#refreshTimer);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  #finish(info) {
    this.#stop();
    this.#ws = null;
    this.#link.closed(this, info);
  }

  #after(ms, fn) {
    const t = setTimeout(() => { this.#timers.delete(t); if (!this.#done) fn(); }, ms);
    this.#timers.add(t);
  }

  #id() { return String(this.#nextId++); }

  #url(ticket) {
    const u = new URL(this.#link.httpBase() + "/ws", globalThis.location?.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.searchParams.set("ticket", ticket);
    return u.toString();
  }

  // Sends queued subscribes within a token bucket (SUBSCRIBE_BURST, then
  // SUBSCRIBE_RATE per second), so a page following many topologies
  // never trips the hub's control rate limit on reconnect.
  #flush() {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    if (!this.#open) return;
    const now = Date.now();
    this.#tokens = Math.min(SUBSCRIBE_BURST, this.#tokens + ((now - this.#refilledAt) / 1000) * SUBSCRIBE_RATE);
    this.#refilledAt = now;
    while (this.#toSend.length > 0 && this.#tokens >= 1) {
      const topologyId = this.#toSend.shift();
      if (!this.#link.has(topologyId)) continue;
      const frame = { op: "subscribe", id: this.#id(), topology: topologyId };
      const since = this.#link.cursor(topologyId);
      if (since) frame.since = since;
      this.#pending.set(frame.id, topologyId);
      this.#send(frame);
      this.#tokens--;
    }
    if (this.#toSend.length > 0) {
      this.#flushTimer = setTimeout(() => this.#flush(), Math.ceil(1000 / SUBSCRIBE_RATE));
    }
  }

  #send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return;
    try { ws.send(JSON.stringify(frame)); } catch { /* onclose follows */ }
  }

  // Refresh in place (docs/protocol.md, "Refresh"): right after open, to
  // learn when the session ends (the handshake does not say), then
  // refreshLead before each end the hub announces.
  async #sendRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    let frame;
    try {
      frame = this.#opts.getToken
        ? { op: "refresh", id: "", token: await this.#opts.getToken() }
        : { op: "refresh", id: "", ticket: await this.#opts.getTicket() };
    } catch {
      if (!this.#done) this.#refreshFailed();
      return;
    }
    if (this.#done) return;
    frame.id = this.#id();
    this.#refreshId = frame.id;
    this.#send(frame);
  }

  #refreshed(expiresAtSeconds) {
    this.#refreshId = null;
    const end = Number(expiresAtSeconds) * 1000;
    if (!Number.isFinite(end)) return;
    this.#refreshAttempt = 0;
    this.#expiresAt = end;
    this.#schedule();
  }

  #refreshFailed() {
    this.#refreshId = null;
    if (this.#expiresAt !== null) {
      this.#schedule();
      return;
    }
    // The end is unknown (the first refresh failed): try again with
    // backoff; meanwhile a 4001 at exp is handled by a reconnect.
    const delay = Math.max(backoffDelay(this.#refreshAttempt++, this.#opts, this.#opts.random), 1000);
    this.#refreshTimer = setTimeout(() => this.#sendRefresh(), delay);
  }

  #schedule() {
    const delay = refreshDelay(this.#expiresAt, Date.now(), this.#opts.refreshLead);
    if (delay === null) return; // too late: the hub closes with 4001 "credentials expired"
    this.#refreshTimer = setTimeout(() => this.#sendRefresh(), delay);
  }

  #onFrame(frame) {
    switch (frame.op) {
      case "event":
        this.#link.deliver(frame.topology, frame.event, frame.data, frame.id);
        return;
      case "subscribed":
        this.#pending.delete(String(frame.id));
        return;
      case "refreshed":
        if (frame.id != null && String(frame.id) === this.#refreshId) this.#refreshed(frame.expires_at);
        return;
      case "error": {
        const id = frame.id != null ? String(frame.id) : undefined;
        if (id !== undefined && id === this.#refreshId) {
          this.#refreshFailed();
        } else if (id !== undefined && this.#pending.has(id)) {
          // The answer to one of our subscribes.
          const topologyId = this.#pending.get(id);
          this.#pending.delete(id);
          if (RETRYABLE.has(frame.code)) {
            this.#after(1000, () => { if (this.#link.has(topologyId)) this.add(topologyId); });
          } else {
            this.#link.end(topologyId, { code: frame.code, message: frame.message });
          }
        } else if (frame.topology && id === undefined) {
          // A subscribed topology the hub ended (deleted: not_found).
          this.#link.end(frame.topology, { code: frame.code, message: frame.message });
        }
        this.#link.frameError(frame);
        return;
      }
      default:
        // unsubscribed, pong and ops this client does not know are ignored.
    }
  }
}

/** One EventSource per topology, on the legacy SSE route. */
export class EventSourceTransport {
  kind = "sse";
  #link;
  #opts;
  /** @type {Map<string, EventSource>} */
  #sources = new Map();
  #timers = new Map();
  #done = false;

  /** @param {Object} link the connection's side @param {Object} opts the connection's options */
  constructor(link, opts) {
    this.#link = link;
    this.#opts = opts;
  }

  start() {
    for (const id of this.#link.topologies()) this.add(id);
  }

  /** @param {string} topologyId */
  add(topologyId) {
    if (!this.#sources.has(topologyId) && !this.#timers.has(topologyId)) this.#open(topologyId, 0);
  }

  /** @param {string} topologyId */
  remove(topologyId) {
    clearTimeout(this.#timers.get(topologyId));
    this.#timers.delete(topologyId);
    const es = this.#sources.get(topologyId);
    if (es) {
      this.#sources.delete(topologyId);
      es.close();
    }
  }

  close() {
    this.#done = true;
    for (const id of [...this.#sources.keys(), ...this.#timers.keys()]) this.remove(id);
  }

  #url(topologyId, ticket) {
    const u = new URL(this.#link.httpBase() + "/topologies/" + encodeURIComponent(topologyId) + "/events", globalThis.location?.href);
    u.searchParams.set("ticket", ticket);
    const since = this.#link.cursor(topologyId);
    if (since) u.searchParams.set("lastEventId", since);
    return u.toString();
  }

  async #open(topologyId, attempt) {
    // Reserve the slot so add() does not open a second one meanwhile.
    this.#timers.set(topologyId, null);
    let ticket;
    try {
      ticket = await this.#opts.getTicket();
    } catch {
      if (this.#wanted(topologyId)) this.#retry(topologyId, attempt);
      return;
    }
    if (!this.#wanted(topologyId)) return;
    this.#timers.delete(topologyId);
    const es = new this.#opts.EventSource(this.#url(topologyId, ticket));
    this.#sources.set(topologyId, es);
    let gotData = false;
    const deliver = (name, msg) => {
      if (this.#sources.get(topologyId) !== es) return;
      let data;
      try { data = JSON.parse(msg.data); } catch { return; }
      if (data === null || typeof data !== "object") return;
      gotData = true;
      if (name === "error") {
        this.remove(topologyId);
        this.#link.end(topologyId, data);
        return;
      }
      this.#link.deliver(topologyId, name, data, msg.lastEventId);
    };
    for (const name of this.#opts.eventNames) {
      if (name !== "message") es.addEventListener(name, (msg) => deliver(name, msg));
    }
    // The generic listener: a frame without an `event:` line is named
    // from its topic, with the hub's own rule.
    es.addEventListener("message", (msg) => {
      let topic;
      try { topic = JSON.parse(msg.data)?.topic; } catch { return; }
      if (typeof topic === "string" && topic !== "") deliver(eventName(topic), msg);
    });
    es.onerror = (e) => {
      // A server-sent "event: error" is a MessageEvent with data, handled
      // by the listener above; this handler is for connection failures.
      if (e && typeof e.data === "string") return;
      if (this.#sources.get(topologyId) !== es) return;
      // Close, and retry with a fresh ticket: the old one is spent, so
      // EventSource's own retry would be refused.
      this.remove(topologyId);
      this.#retry(topologyId, gotData ? 0 : attempt + 1);
    };
  }

  #wanted(topologyId) {
    return !this.#done && this.#link.has(topologyId) && this.#timers.has(topologyId);
  }

  #retry(topologyId, attempt) {
    const delay = Math.max(backoffDelay(attempt, this.#opts, this.#opts.random), 250);
    clearTimeout(this.#timers.get(topologyId));
    this.#timers.set(topologyId, setTimeout(() => {
      if (this.#done || !this.#link.has(topologyId)) return;
      this.#open(topologyId, attempt);
    }, delay));
  }
}

// ---------------------------------------------------------------------
// The connection.

/**
 * Opens one WebSocket to the hub (falling back to EventSource per
 * topology when it cannot) and returns the handle.
 * @param {Object} options ConnectOptions (topohub.d.ts)
 * @returns {TopohubConnection}
 */
export function connect(options) {
  return new TopohubConnection(options);
}

const DEFAULTS = {
  basePath: "/api/v1", initialBackoff: 500, maxBackoff: 30000,
  fallbackAfter: 3, retryWebSocketAfter: 60000,
  refresh: true, refreshLead: 60000,
};

/**
 * The page's handle. State is reported one way: `state` (read it at any
 * time) and a "state" event dispatched after each change, whose `detail`
 * is `{state, transport, error}`. "error" events carry error frames of
 * the hub (informational; subscriptions they end are told through their
 * own `error` handler).
 */
export class TopohubConnection extends EventTarget {
  #opts;
  /** @type {"connecting" | "open" | "fallback" | "error" | "closed"} */
  #state = "connecting";
  #error = null;
  /** @type {Map<string, Object>} topology -> handlers */
  #subs = new Map();
  #cursors = new CursorBook();
  /** @type {WebSocketTransport | null} */
  #ws = null;
  /** @type {EventSourceTransport | null} */
  #sse = null;
  #attempt = 0;
  #closedBeforeOpen = 0;
  #timer = null;
  #wsRetryTimer = null;
  #link;

  /** @param {Object} options ConnectOptions (topohub.d.ts) */
  constructor(options) {
    super();
    if (!options || !options.url || typeof options.getTicket !== "function") {
      throw new TypeError("connect: url and getTicket are required");
    }
    if ("onState" in options) {
      throw new TypeError('connect: onState is gone; listen for the "state" event (docs/client.md)');
    }
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new TypeError("connect: getToken must be a function");
    }
    const names = options.eventNames ?? DEFAULT_EVENT_NAMES;
    if (!Array.isArray(names) || names.some((n) => typeof n !== "string" || n === "")) {
      throw new TypeError("connect: eventNames must be an array of non-empty strings");
    }
    this.#opts = Object.freeze({
      ...DEFAULTS,
      random: Math.random,
      WebSocket: globalThis.WebSocket,
      EventSource: globalThis.EventSource,
      ...options,
      eventNames: Object.freeze([...new Set(["snapshot", "error", ...names])]),
    });
    // What the transports may see of the connection.
    this.#link = {
      httpBase: () => this.#opts.url.replace(/\/+$/, "") + this.#opts.basePath,
      topologies: () => [...this.#subs.keys()],
      has: (id) => this.#subs.has(id),
      cursor: (id) => this.#cursors.get(id),
      deliver: (id, name, data, cursor) => this.#deliver(id, name, data, cursor),
      end: (id, err) => this.#end(id, err),
      frameError: (frame) => this.dispatchEvent(new CustomEvent("error", { detail: frame })),
      opened: (t) => this.#opened(t),
      closed: (t, info) => this.#closed(t, info),
    };
    this.#startWebSocket();
  }

  /** @returns {"connecting" | "open" | "fallback" | "error" | "closed"} */
  get state() { return this.#state; }

  /** @returns {"websocket" | "sse" | "none"} the transport in use */
  get transport() {
    if (this.#state === "open") return "websocket";
    if (this.#state === "fallback") return "sse";
    return "none";
  }

  /** @returns {{code: number, reason: string} | null} why the state is "error" */
  get error() { return this.#error; }

  /** @returns {number | null} the WebSocket session's end (ms since the epoch), once the hub has said it */
  get expiresAt() { return this.#ws?.expiresAt ?? null; }

  /** @returns {string[]} the topologies followed */
  get topologies() { return [...this.#subs.keys()]; }

  /** @returns {Readonly<string[]>} the event names the SSE fallback listens for */
  get eventNames() { return this.#opts.eventNames; }

  /**
   * Follows a topology. Subscribing again replaces the handlers.
   * @param {string} topologyId
   * @param {Object} handlers TopologyHandlers
   * @returns {{unsubscribe: () => void}}
   */
  subscribe(topologyId, handlers) {
    const known = this.#subs.has(topologyId);
    this.#subs.set(topologyId, handlers || {});
    if (!known) {
      this.#ws?.add(topologyId);
      this.#sse?.add(topologyId);
    }
    return { unsubscribe: () => this.unsubscribe(topologyId) };
  }

  /** @param {string} topologyId */
  unsubscribe(topologyId) {
    if (!this.#subs.delete(topologyId)) return;
    this.#cursors.forget(topologyId);
    this.#ws?.remove(topologyId);
    this.#sse?.remove(topologyId);
  }

  /** Closes everything; the handle is done. */
  close() {
    this.#setState("closed");
    this.#teardown();
  }

  /**
   * Starts again after the "error" state (e.g. once the user has logged
   * in again after a revocation); subscriptions and cursors are kept.
   */
  reconnect() {
    if (this.#state !== "error") return;
    this.#error = null;
    this.#attempt = 0;
    this.#closedBeforeOpen = 0;
    this.#state = "connecting";
    this.#emitState();
    this.#startWebSocket();
  }

  #teardown() {
    clearTimeout(this.#timer);
    clearTimeout(this.#wsRetryTimer);
    this.#ws?.close();
    this.#ws = null;
    this.#sse?.close();
    this.#sse = null;
  }

  #setState(state) {
    if (this.#state === state || this.#state === "closed") return;
    this.#state = state;
    this.#emitState();
  }

  #emitState() {
    try {
      this.dispatchEvent(new CustomEvent("state", { detail: { state: this.#state, transport: this.transport, error: this.#error } }));
    } catch (err) {
      report(err);
    }
  }

  #deliver(topologyId, name, data, cursor) {
    const h = this.#subs.get(topologyId);
    if (!h) return;
    this.#cursors.see(topologyId, cursor);
    dispatch(h, name, data, cursor);
  }

  #end(topologyId, err) {
    const h = this.#subs.get(topologyId);
    if (!h) return;
    this.#subs.delete(topologyId);
    this.#cursors.forget(topologyId);
    this.#sse?.remove(topologyId);
    dispatch(h, "error", { code: err?.code, message: err?.message }, "");
  }

  #startWebSocket() {
    if (this.#state === "closed" || this.#state === "error") return;
    if (this.#state !== "fallback") this.#setState("connecting");
    // Back from fallback: the EventSources hold cap slots the WebSocket
    // may need. Their cursors are kept, so closing them loses nothing; a
    // failed attempt reopens them.
    this.#sse?.close();
    this.#sse = null;
    const t = new WebSocketTransport(this.#link, this.#opts);
    this.#ws = t;
    t.start();
  }

  #opened(t) {
    if (t !== this.#ws) return;
    this.#attempt = 0;
    this.#closedBeforeOpen = 0;
    clearTimeout(this.#wsRetryTimer);
    this.#sse?.close();
    this.#sse = null;
    this.#setState("open");
  }

  #closed(t, info) {
    if (t !== this.#ws) return;
    this.#ws = null;
    if (this.#state === "closed" || this.#state === "error") return;
    const action = info.ticketFailed ? "reconnect" : closeAction(info.code, info.reason);
    if (action === "stop") {
      this.#teardown();
      this.#error = { code: info.code, reason: info.reason };
      this.#setState("error");
      return;
    }
    if (!info.opened && !info.ticketFailed) this.#closedBeforeOpen++;
    if (this.#state === "fallback" || this.#closedBeforeOpen >= this.#opts.fallbackAfter) {
      this.#enterFallback();
      return;
    }
    this.#setState("connecting");
    const delay = action === "reauth" ? 0 : backoffDelay(this.#attempt++, this.#opts, this.#opts.random);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#startWebSocket(), delay);
  }

  #enterFallback() {
    this.#setState("fallback");
    if (!this.#sse) {
      this.#sse = new EventSourceTransport(this.#link, this.#opts);
      this.#sse.start();
    }
    clearTimeout(this.#wsRetryTimer);
    this.#wsRetryTimer = setTimeout(() => this.#startWebSocket(), this.#opts.retryWebSocketAfter);
  }
}
