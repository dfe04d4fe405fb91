// topohub.js: the browser client of the topohub event hub.
//
// One WebSocket multiplexes every topology the page follows; when the
// WebSocket cannot be established it falls back, per topology, to the
// legacy EventSource route with the same handler API, and tries the
// WebSocket again later. Dependency-free ES module; no build step.
// Wire contract: shared/PROTOCOL.md; usage: docs/client.md.

/**
 * @typedef {Object} TopologyHandlers
 * @property {(data: Snapshot, id: string) => void} [snapshot] the first snapshot of a subscription
 * @property {(name: string, data: BusEvent, id: string) => void} [event] a bus event, e.g. "mutation.applied"
 * @property {(data: Snapshot, id: string) => void} [resync] a snapshot sent again after a gap; falls back to `snapshot` when absent
 * @property {(err: {code: string, message: string}) => void} [error] the hub refused or ended the subscription (e.g. not_found)
 */

/**
 * @typedef {Object} Snapshot
 * @property {string} topology_id
 * @property {string} status
 * @property {Object[]} in_flight
 * @property {boolean} [resync]
 */

/**
 * @typedef {Object} BusEvent
 * @property {string} topic
 * @property {string} type
 * @property {number} ts
 * @property {Object} payload
 */

/**
 * @typedef {"connecting" | "open" | "fallback" | "closed"} ConnectionState
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} url hub base URL, e.g. location.origin or "https://hub.example"
 * @property {() => Promise<string>} getTicket mints a fresh single-use ticket (POST <base>/auth/sse-ticket); called for every attempt
 * @property {string} [basePath="/api/v1"] prefix of the API routes
 * @property {number} [initialBackoff=500] first reconnect delay cap, ms
 * @property {number} [maxBackoff=30000] largest reconnect delay cap, ms
 * @property {number} [fallbackAfter=3] WebSocket attempts closed before open, in a row, before falling back to EventSource
 * @property {number} [retryWebSocketAfter=60000] while in fallback, how long before trying the WebSocket again, ms
 * @property {(state: ConnectionState) => void} [onState] called on every state change
 * @property {typeof WebSocket} [WebSocket] constructor to use (tests)
 * @property {typeof EventSource} [EventSource] constructor to use (tests)
 * @property {() => number} [random] source of jitter in [0, 1) (tests)
 */

export const SUBPROTOCOL = "topohub.v1";

/** Subscribes sent at once on (re)connect, then per second: under the hub's control rate (burst 40, 20/s). */
export const SUBSCRIBE_BURST = 20;
export const SUBSCRIBE_RATE = 10;

/** Error codes after which a subscribe is retried; any other ends the subscription. */
const RETRYABLE = new Set(["rate_limited", "unavailable"]);

/** Event names the legacy SSE route can send; EventSource needs each listener named. */
export const SSE_EVENT_NAMES = [
  "snapshot", "error", "status",
  "mutation.enqueued", "mutation.applying", "mutation.applied", "mutation.failed",
  "decky.service_added", "decky.service_removed", "decky.service_config_changed",
];

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
  constructor() {
    /** @type {Map<string, string>} */
    this.cursors = new Map();
  }
  /** @param {string} topology @param {string} id */
  see(topology, id) {
    if (typeof id === "string" && id !== "") this.cursors.set(topology, id);
  }
  /** @param {string} topology @returns {string | undefined} */
  get(topology) {
    return this.cursors.get(topology);
  }
  /** @param {string} topology */
  forget(topology) {
    this.cursors.delete(topology);
  }
}

/**
 * Delivers one event to a subscription's handlers, isolating the page's
 * exceptions from the client.
 * @param {TopologyHandlers} h @param {string} name @param {any} data @param {string} id
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
    // Report the page's exception, but never let it break the stream.
    (globalThis.reportError ?? console.error)(err);
  }
}

/**
 * Opens one WebSocket to the hub (falling back to EventSource per
 * topology when it cannot) and returns the handle.
 * @param {ConnectOptions} options
 * @returns {TopohubConnection}
 */
export function connect(options) {
  return new TopohubConnection(options);
}

export class TopohubConnection extends EventTarget {
  /** @param {ConnectOptions} options */
  constructor(options) {
    super();
    if (!options || !options.url || typeof options.getTicket !== "function") {
      throw new TypeError("connect: url and getTicket are required");
    }
    this.opts = {
      basePath: "/api/v1", initialBackoff: 500, maxBackoff: 30000,
      fallbackAfter: 3, retryWebSocketAfter: 60000, random: Math.random,
      WebSocket: globalThis.WebSocket, EventSource: globalThis.EventSource,
      ...options,
    };
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** @type {Map<string, TopologyHandlers>} */
    this.subs = new Map();
    this.cursors = new CursorBook();
    /** @type {Map<string, EventSource>} */
    this.sources = new Map();
    this.attempt = 0;
    this.closedBeforeOpen = 0;
    this.nextId = 1;
    this.ws = null;
    /** @type {Map<string, string>} subscribe request id -> topology, until acknowledged */
    this.pending = new Map();
    /** @type {string[]} topologies waiting for their subscribe to be sent */
    this.toSend = [];
    this.tokens = SUBSCRIBE_BURST;
    this.refilledAt = 0;
    this.flushTimer = null;
    this.timer = null;
    this.wsRetryTimer = null;
    this.sourceTimers = new Map();
    this._openWebSocket();
  }

  /**
   * Follows a topology. Subscribing again replaces the handlers.
   * @param {string} topologyId
   * @param {TopologyHandlers} handlers
   * @returns {{unsubscribe: () => void}}
   */
  subscribe(topologyId, handlers) {
    const known = this.subs.has(topologyId);
    this.subs.set(topologyId, handlers || {});
    if (!known) {
      if (this.state === "open") this._queueSubscribe(topologyId);
      else if (this.state === "fallback") this._openSource(topologyId);
    }
    return { unsubscribe: () => this.unsubscribe(topologyId) };
  }

  /** @param {string} topologyId */
  unsubscribe(topologyId) {
    if (!this.subs.delete(topologyId)) return;
    this.cursors.forget(topologyId);
    if (this.state === "open") this._send({ op: "unsubscribe", id: this._id(), topology: topologyId });
    this._closeSource(topologyId);
  }

  /** Closes everything; the handle is done. */
  close() {
    this._setState("closed");
    clearTimeout(this.timer);
    clearTimeout(this.wsRetryTimer);
    clearTimeout(this.flushTimer);
    for (const id of [...this.sources.keys()]) this._closeSource(id);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
  }

  /** @returns {"websocket" | "sse" | "none"} the transport in use */
  get transport() {
    if (this.state === "open") return "websocket";
    if (this.state === "fallback") return "sse";
    return "none";
  }

  _setState(state) {
    if (this.state === state || this.state === "closed") return;
    this.state = state;
    try { this.opts.onState?.(state); } catch { /* the page's problem */ }
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _id() { return String(this.nextId++); }

  _httpBase() { return this.opts.url.replace(/\/+$/, "") + this.opts.basePath; }

  _wsURL(ticket) {
    const u = new URL(this._httpBase() + "/ws", globalThis.location?.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.searchParams.set("ticket", ticket);
    return u.toString();
  }

  async _openWebSocket() {
    if (this.state === "closed") return;
    if (this.state !== "fallback") this._setState("connecting");
    let ticket;
    try {
      ticket = await this.opts.getTicket();
    } catch {
      this._webSocketFailed(false);
      return;
    }
    if (this.state === "closed") return;
    // Back from fallback: the EventSources hold cap slots the WebSocket
    // may need. Their cursors are kept, so closing them loses nothing; a
    // failed attempt reopens them.
    for (const id of [...this.sources.keys()]) this._closeSource(id);
    let ws;
    try {
      ws = new this.opts.WebSocket(this._wsURL(ticket), SUBPROTOCOL);
    } catch {
      this._webSocketFailed(true);
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.attempt = 0;
      this.closedBeforeOpen = 0;
      clearTimeout(this.wsRetryTimer);
      for (const id of [...this.sources.keys()]) this._closeSource(id);
      this._setState("open");
      this.pending.clear();
      this.toSend = [];
      this.tokens = SUBSCRIBE_BURST;
      this.refilledAt = Date.now();
      for (const id of this.subs.keys()) this._queueSubscribe(id);
    };
    ws.onmessage = (msg) => {
      if (this.ws !== ws) return;
      for (const frame of splitFrames(msg.data)) this._onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._webSocketFailed(!opened);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  _webSocketFailed(beforeOpen) {
    if (this.state === "closed") return;
    if (beforeOpen) this.closedBeforeOpen++;
    if (this.state === "fallback" || this.closedBeforeOpen >= this.opts.fallbackAfter) {
      this._enterFallback();
      return;
    }
    this._setState("connecting");
    const delay = backoffDelay(this.attempt++, this.opts, this.opts.random);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._openWebSocket(), delay);
  }

  _enterFallback() {
    this._setState("fallback");
    for (const id of this.subs.keys()) if (!this.sources.has(id)) this._openSource(id);
    clearTimeout(this.wsRetryTimer);
    this.wsRetryTimer = setTimeout(() => this._openWebSocket(), this.opts.retryWebSocketAfter);
  }

  _queueSubscribe(topologyId) {
    if (!this.toSend.includes(topologyId)) this.toSend.push(topologyId);
    this._flushSubscribes();
  }

  // Sends queued subscribes within a token bucket (SUBSCRIBE_BURST, then
  // SUBSCRIBE_RATE per second), so a page following many topologies
  // never trips the hub's control rate limit on reconnect.
  _flushSubscribes() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (this.state !== "open") return;
    const now = Date.now();
    this.tokens = Math.min(SUBSCRIBE_BURST, this.tokens + ((now - this.refilledAt) / 1000) * SUBSCRIBE_RATE);
    this.refilledAt = now;
    while (this.toSend.length > 0 && this.tokens >= 1) {
      const topologyId = this.toSend.shift();
      if (!this.subs.has(topologyId)) continue;
      const frame = { op: "subscribe", id: this._id(), topology: topologyId };
      const since = this.cursors.get(topologyId);
      if (since) frame.since = since;
      this.pending.set(frame.id, topologyId);
      this._send(frame);
      this.tokens--;
    }
    if (this.toSend.length > 0) {
      this.flushTimer = setTimeout(() => this._flushSubscribes(), Math.ceil(1000 / SUBSCRIBE_RATE));
    }
  }

  _send(frame) {
    if (!this.ws || this.ws.readyState !== 1) return;
    try { this.ws.send(JSON.stringify(frame)); } catch { /* onclose follows */ }
  }

  _onFrame(frame) {
    switch (frame.op) {
      case "event": {
        const h = this.subs.get(frame.topology);
        if (!h) return;
        this.cursors.see(frame.topology, frame.id);
        dispatch(h, frame.event, frame.data, frame.id);
        return;
      }
      case "subscribed":
        this.pending.delete(String(frame.id));
        return;
      case "error": {
        const requested = frame.id != null ? this.pending.get(String(frame.id)) : undefined;
        if (requested !== undefined) {
          // The answer to one of our subscribes.
          this.pending.delete(String(frame.id));
          if (RETRYABLE.has(frame.code)) {
            setTimeout(() => { if (this.subs.has(requested)) this._queueSubscribe(requested); }, 1000);
          } else {
            this._endSubscription(requested, frame);
          }
        } else if (frame.topology && frame.id == null) {
          // A subscribed topology the hub ended (deleted: not_found).
          this._endSubscription(frame.topology, frame);
        }
        this.dispatchEvent(new CustomEvent("error", { detail: frame }));
        return;
      }
      default:
        // subscribed, unsubscribed, pong, refreshed and ops this client
        // does not know are ignored.
    }
  }

  _endSubscription(topologyId, frame) {
    const h = this.subs.get(topologyId);
    this.subs.delete(topologyId);
    this.cursors.forget(topologyId);
    if (h) dispatch(h, "error", { code: frame.code, message: frame.message }, "");
  }

  _sourceURL(topologyId, ticket) {
    const u = new URL(this._httpBase() + "/topologies/" + encodeURIComponent(topologyId) + "/events", globalThis.location?.href);
    u.searchParams.set("ticket", ticket);
    const since = this.cursors.get(topologyId);
    if (since) u.searchParams.set("lastEventId", since);
    return u.toString();
  }

  async _openSource(topologyId, attempt = 0) {
    if (this.state !== "fallback" || !this.subs.has(topologyId)) return;
    let ticket;
    try {
      ticket = await this.opts.getTicket();
    } catch {
      this._retrySource(topologyId, attempt);
      return;
    }
    if (this.state !== "fallback" || !this.subs.has(topologyId)) return;
    const es = new this.opts.EventSource(this._sourceURL(topologyId, ticket));
    this._closeSource(topologyId);
    this.sources.set(topologyId, es);
    let gotData = false;
    const onEvent = (name) => (msg) => {
      if (this.sources.get(topologyId) !== es) return;
      const h = this.subs.get(topologyId);
      if (!h) return;
      let data;
      try { data = JSON.parse(msg.data); } catch { return; }
      if (data === null || typeof data !== "object") return;
      gotData = true;
      if (name === "error") {
        this.subs.delete(topologyId);
        this._closeSource(topologyId);
        dispatch(h, "error", data, "");
        return;
      }
      this.cursors.see(topologyId, msg.lastEventId);
      dispatch(h, name, data, msg.lastEventId);
    };
    for (const name of SSE_EVENT_NAMES) es.addEventListener(name, onEvent(name));
    es.onerror = (e) => {
      // A server-sent "event: error" is a MessageEvent with data, handled
      // by the listener above; this handler is for connection failures.
      if (e && typeof e.data === "string") return;
      if (this.sources.get(topologyId) !== es) return;
      // The legacy behaviour: close, and retry with a fresh ticket (the
      // old one is spent, so EventSource's own retry would be refused).
      this._closeSource(topologyId);
      this._retrySource(topologyId, gotData ? 0 : attempt + 1);
    };
  }

  _retrySource(topologyId, attempt) {
    const delay = Math.max(backoffDelay(attempt, this.opts, this.opts.random), 250);
    clearTimeout(this.sourceTimers.get(topologyId));
    this.sourceTimers.set(topologyId, setTimeout(() => this._openSource(topologyId, attempt), delay));
  }

  _closeSource(topologyId) {
    clearTimeout(this.sourceTimers.get(topologyId));
    this.sourceTimers.delete(topologyId);
    const es = this.sources.get(topologyId);
    if (es) {
      this.sources.delete(topologyId);
      es.close();
    }
  }
}
