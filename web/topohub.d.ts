// Types of topohub.js, written by hand (the module has no build step).
// Checked with tsc --noEmit against types.test.ts by `go test ./web`;
// a unit test also checks that every export of topohub.js is declared here.

/** The WebSocket subprotocol, "topohub.v1". */
export const SUBPROTOCOL: "topohub.v1";
/** Subscribes sent at once when the WebSocket opens. */
export const SUBSCRIBE_BURST: number;
/** Subscribes sent per second after the burst. */
export const SUBSCRIBE_RATE: number;

/** A mutation row as producers store it (docs/protocol.md §3), passed through unchanged. */
export interface MutationRow {
  id: string;
  topology_id?: string;
  op?: string;
  payload?: unknown;
  state: "pending" | "applying" | string;
  /** ISO-8601 text (UTC when no offset) or epoch seconds. */
  requested_at?: string | number | null;
  applied_at?: string | number | null;
  reason?: string | null;
  [key: string]: unknown;
}

/** The data of a `snapshot` event. */
export interface Snapshot {
  topology_id: string;
  status: string;
  in_flight: MutationRow[];
  /** Present (true) when sent again after a gap: replace your state. */
  resync?: true;
}

/** The data of a bus event. */
export interface BusEvent<P = Record<string, unknown>> {
  topic: string;
  type: string;
  /** Epoch seconds. */
  ts: number;
  payload: P;
}

/** An error that ended a subscription (e.g. not_found). */
export interface SubscriptionError {
  code: string;
  message: string;
}

/** What the page does with one topology's deliveries. */
export interface TopologyHandlers {
  /** The first snapshot of a subscription (and a resync when `resync` is absent). */
  snapshot?(data: Snapshot, id: string): void;
  /** A bus event, e.g. "mutation.applied". */
  event?(name: string, data: BusEvent, id: string): void;
  /** A snapshot sent again after a gap: replace your state. */
  resync?(data: Snapshot, id: string): void;
  /** The hub refused or ended the subscription; it is over. */
  error?(err: SubscriptionError): void;
}

export interface Subscription {
  unsubscribe(): void;
}

export type ConnectionState = "connecting" | "open" | "fallback" | "error" | "closed";
export type TransportKind = "websocket" | "sse";

/** Why the connection stopped (state "error"): the close code and reason of the hub. */
export interface ConnectionError {
  code: number;
  reason: string;
}

/** The `detail` of a "state" event. */
export interface StateDetail {
  state: ConnectionState;
  transport: TransportKind | "none";
  error: ConnectionError | null;
}

/** A server error frame (docs/protocol.md §8), the `detail` of an "error" event. */
export interface ErrorFrame {
  op: "error";
  id?: string;
  topology?: string;
  code: string;
  message: string;
}

export interface ConnectOptions {
  /** The hub's base URL, e.g. location.origin. */
  url: string;
  /** A fresh single-use ticket (POST <base>/auth/sse-ticket); called for every attempt and, without getToken, for every refresh. */
  getTicket(): Promise<string>;
  /** An access token (JWT) for `refresh`; without it refresh uses getTicket. Never put in a URL. */
  getToken?(): Promise<string>;
  /** Refresh the WebSocket session in place before it ends. Default true. */
  refresh?: boolean;
  /** How long before the session's end to refresh, ms. Default 60000. */
  refreshLead?: number;
  /** Prefix of the API routes. Default "/api/v1". */
  basePath?: string;
  /** First reconnect delay ceiling, ms. Default 500. */
  initialBackoff?: number;
  /** Largest reconnect delay ceiling, ms. Default 30000. */
  maxBackoff?: number;
  /** WebSocket attempts closed before open, in a row, before falling back to EventSource. Default 3. */
  fallbackAfter?: number;
  /** In fallback, how long before trying the WebSocket again, ms. Default 60000. */
  retryWebSocketAfter?: number;
  /** Event names the SSE fallback listens for. Default DEFAULT_EVENT_NAMES; "snapshot" and "error" are always added. */
  eventNames?: readonly string[];
  /** WebSocket constructor (tests). */
  WebSocket?: typeof WebSocket;
  /** EventSource constructor (tests). */
  EventSource?: typeof EventSource;
  /** Source of jitter in [0, 1) (tests). */
  random?: () => number;
  /** Removed: listen for the "state" event. Passing it throws. */
  onState?: never;
}

export interface TopohubConnectionEventMap {
  state: CustomEvent<StateDetail>;
  error: CustomEvent<ErrorFrame>;
}

export class TopohubConnection extends EventTarget {
  constructor(options: ConnectOptions);
  /** The state now; each change dispatches one "state" event, after this is updated. */
  readonly state: ConnectionState;
  readonly transport: TransportKind | "none";
  /** Why the state is "error"; null otherwise. */
  readonly error: ConnectionError | null;
  /** The WebSocket session's end in ms since the epoch, once a `refreshed` reply said it. */
  readonly expiresAt: number | null;
  /** The topologies followed. */
  readonly topologies: string[];
  /** The event names the SSE fallback listens for. */
  readonly eventNames: readonly string[];
  /** Follows a topology; subscribing again replaces the handlers. */
  subscribe(topologyId: string, handlers: TopologyHandlers): Subscription;
  unsubscribe(topologyId: string): void;
  /** Closes everything; the handle is done. */
  close(): void;
  /** Starts again after the "error" state; subscriptions and cursors are kept. */
  reconnect(): void;

  addEventListener<K extends keyof TopohubConnectionEventMap>(
    type: K, listener: (this: TopohubConnection, ev: TopohubConnectionEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof TopohubConnectionEventMap>(
    type: K, listener: (this: TopohubConnection, ev: TopohubConnectionEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions): void;
}

export function connect(options: ConnectOptions): TopohubConnection;

/** The event names of the contract; the default of `eventNames`. */
export const DEFAULT_EVENT_NAMES: readonly string[];

/** The client-facing event name of a bus topic (docs/protocol.md §2). */
export function eventName(topic: string): string;

export type CloseAction = "reconnect" | "reauth" | "stop";

export interface ClosePolicyRow {
  readonly code: number;
  /** "" matches any reason. */
  readonly reason: string;
  readonly action: CloseAction;
  readonly why: string;
}

/** What the client does for each close code of the hub. */
export const CLOSE_POLICY: readonly ClosePolicyRow[];
export function closeAction(code: number, reason?: string): CloseAction;

/** Delay before the next refresh, ms, or null when it is too late to try. */
export function refreshDelay(expiresAt: number, now: number, lead: number): number | null;
export function backoffDelay(attempt: number, opts?: { initialBackoff?: number; maxBackoff?: number }, random?: () => number): number;
export function splitFrames(text: unknown): Record<string, unknown>[];
export function dispatch(handlers: TopologyHandlers, name: string, data: unknown, id: string): void;

export class CursorBook {
  see(topology: string, id: string): void;
  get(topology: string): string | undefined;
  forget(topology: string): void;
}

/** What a transport may see of its connection (internal; exported for tests and custom transports). */
export interface TransportLink {
  httpBase(): string;
  topologies(): string[];
  has(topologyId: string): boolean;
  cursor(topologyId: string): string | undefined;
  deliver(topologyId: string, name: string, data: unknown, cursor: string): void;
  end(topologyId: string, err: SubscriptionError): void;
  frameError(frame: ErrorFrame): void;
  opened(transport: WebSocketTransport): void;
  closed(transport: WebSocketTransport, info: { code: number; reason: string; opened: boolean; ticketFailed?: boolean }): void;
}

/** The interface both transports implement. */
export interface Transport {
  readonly kind: TransportKind;
  start(): void | Promise<void>;
  add(topologyId: string): void;
  remove(topologyId: string): void;
  close(): void;
}

export type TransportOptions = Required<Pick<ConnectOptions, "getTicket" | "refresh" | "refreshLead" | "initialBackoff" | "maxBackoff" | "eventNames" | "random">> &
  Pick<ConnectOptions, "getToken" | "WebSocket" | "EventSource">;

export class WebSocketTransport implements Transport {
  constructor(link: TransportLink, opts: TransportOptions);
  readonly kind: "websocket";
  readonly expiresAt: number | null;
  start(): Promise<void>;
  add(topologyId: string): void;
  remove(topologyId: string): void;
  close(): void;
}

export class EventSourceTransport implements Transport {
  constructor(link: TransportLink, opts: TransportOptions);
  readonly kind: "sse";
  start(): void;
  add(topologyId: string): void;
  remove(topologyId: string): void;
  close(): void;
}
