// Types of react.js, written by hand. No dependency on React's types: the
// hooks are described structurally, so React 16.8+ (and Preact's compat)
// fit. Checked with tsc --noEmit against types.test.ts, with @types/react.

import type { TopohubConnection, MutationRow, BusEvent, SubscriptionError, ConnectionState, TransportKind } from "./topohub.js";

/** One bus event as the hook keeps it. */
export interface StreamEvent {
  name: string;
  id: string;
  data: BusEvent;
}

/** A topology's state, as applyDelivery builds it. */
export interface TopologyView {
  /** A snapshot has arrived. */
  readonly loaded: boolean;
  /** From the snapshot, then from `status` events' payload.state. */
  readonly status: string;
  /** Pending then applying rows, newest first; kept live by mutation.* events. */
  readonly inFlight: readonly MutationRow[];
  /** Bus events received, newest last, at most maxEvents. */
  readonly events: readonly StreamEvent[];
  /** Cursor of the newest delivery. */
  readonly cursor: string;
  /** Set when the hub ended the subscription (e.g. not_found). */
  readonly error: SubscriptionError | null;
}

/** What useTopologyStream returns. */
export interface TopologyStream extends TopologyView {
  readonly transport: TransportKind | "none";
  readonly state: ConnectionState;
}

export type Delivery =
  | { kind: "snapshot" | "resync"; data: unknown; id?: string }
  | { kind: "event"; name: string; data: unknown; id?: string }
  | { kind: "error"; data: unknown };

/** The hooks react.js uses: useSyncExternalStore (React 18+), or useReducer and useEffect. */
export interface ReactHooks {
  useSyncExternalStore?: (subscribe: (onStoreChange: () => void) => () => void, getSnapshot: () => TopologyStream) => TopologyStream;
  useReducer?: (...args: any[]) => readonly [unknown, (...args: any[]) => void];
  useEffect?: (effect: () => void | (() => void), deps?: readonly unknown[]) => void;
}

export const EMPTY_TOPOLOGY: TopologyView;
export function sortInFlight(rows: readonly MutationRow[]): MutationRow[];
export function applyDelivery(view: TopologyView, delivery: Delivery, maxEvents?: number): TopologyView;

/**
 * Builds useTopologyStream for one connection. `react` defaults to the
 * page's global React.
 */
export function createTopologyStream(
  hub: TopohubConnection,
  react?: ReactHooks,
  options?: { maxEvents?: number },
): (topologyId: string | null | undefined) => TopologyStream;
