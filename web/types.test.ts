// Type test of topohub.d.ts and react.d.ts: compiled with tsc --noEmit
// (go test ./web), never run. Imports go through package.json's exports,
// as an editor importing the package would. Each @ts-expect-error is a
// misuse the types must refuse.
import * as React from "react";
import {
  connect, DEFAULT_EVENT_NAMES, CLOSE_POLICY, closeAction, eventName, refreshDelay,
  type ConnectionState, type StateDetail, type Snapshot, type BusEvent, type TopohubConnection, type Transport,
  WebSocketTransport, EventSourceTransport,
} from "topohub-client";
import { createTopologyStream, applyDelivery, EMPTY_TOPOLOGY, type TopologyStream } from "topohub-client/react";

declare const accessToken: string;

const hub: TopohubConnection = connect({
  url: "https://hub.example",
  getTicket: async () => "ticket",
  getToken: async () => accessToken,
  refreshLead: 30_000,
  eventNames: [...DEFAULT_EVENT_NAMES, "alert.raised"],
});

// @ts-expect-error getTicket is required
connect({ url: "https://hub.example" });
// @ts-expect-error onState is gone: the "state" event is the one report
connect({ url: "x", getTicket: async () => "t", onState: () => {} });
// @ts-expect-error eventNames is a list
connect({ url: "x", getTicket: async () => "t", eventNames: "status" });

hub.addEventListener("state", (e) => {
  const d: StateDetail = e.detail;
  const s: ConnectionState = d.state;
  if (d.error !== null) {
    const code: number = d.error.code;
    void code;
  }
  void s;
});
hub.addEventListener("error", (e) => {
  const code: string = e.detail.code;
  void code;
});

const sub = hub.subscribe("T", {
  snapshot(data: Snapshot, id: string) {
    const rows = data.in_flight.filter((r) => r.state === "pending");
    void rows; void id;
  },
  event(name, data: BusEvent, id) {
    const t: number = data.ts;
    void name; void t; void id;
  },
  resync(data) { void data.resync; },
  error(err) { const c: string = err.code; void c; },
});
sub.unsubscribe();
const end: number | null = hub.expiresAt;
void end;
if (hub.state === "error") hub.reconnect();
// @ts-expect-error state is read-only
hub.state = "open";
// @ts-expect-error not a state of the connection
const bad: ConnectionState = "reconnecting";
void bad;

const action: "reconnect" | "reauth" | "stop" = closeAction(4001, "credentials revoked");
const codes: number[] = CLOSE_POLICY.map((r) => r.code);
const name: string = eventName("topology.T.status");
const delay: number | null = refreshDelay(Date.now() + 3_600_000, Date.now(), 60_000);
void action; void codes; void name; void delay;

// Both transports implement the one interface.
const transports: Transport[] = [];
const asTransport = (t: WebSocketTransport | EventSourceTransport): Transport => t;
void transports; void asTransport;

// The React hook, with React's own types.
const useTopologyStream = createTopologyStream(hub, React);
export function Topology(props: { id: string }) {
  const { status, inFlight, events, transport, state }: TopologyStream = useTopologyStream(props.id);
  const pending: number = inFlight.filter((m) => m.state === "pending").length;
  const last: string | undefined = events.at(-1)?.name;
  void transport; void state; void last;
  return React.createElement("p", null, `${status} ${pending}`);
}
createTopologyStream(hub, { useSyncExternalStore: React.useSyncExternalStore });
createTopologyStream(hub); // the page's React
// @ts-expect-error a connection is required
createTopologyStream(React);

const v = applyDelivery(EMPTY_TOPOLOGY, { kind: "event", name: "status", data: {}, id: "1-1" });
// @ts-expect-error the view is read-only
v.status = "x";
