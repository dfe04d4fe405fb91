package sim

import (
	"strings"
	"testing"
)

func testClient(topologies ...string) *client {
	c := &Checker{markers: map[string]bool{"n1": true}}
	cl := &client{c: c, name: "t", views: map[string]*view{}}
	for _, id := range topologies {
		cl.views[id] = &view{}
	}
	return cl
}

func ev(topic, payload string) []byte {
	return []byte(`{"topic":"` + topic + `","type":"","ts":1764300000.5,"payload":` + payload + `}`)
}

// The checker builds state as the legacy editor did, from the snapshot
// and then the events.
func TestClientBuildsLegacyState(t *testing.T) {
	cl := testClient("T")
	cl.handle("T", "snapshot", "5-10", []byte(`{"topology_id":"T","status":"active","in_flight":[{"id":"m1","state":"pending"},{"id":"m2","state":"applying"}]}`))
	cl.handle("T", "mutation.applying", "5-11", ev("topology.T.mutation.applying", `{"mutation_id":"m1","op":"x","payload":"{}"}`))
	cl.handle("T", "mutation.applied", "5-12", ev("topology.T.mutation.applied", `{"mutation_id":"m2","op":"x"}`))
	cl.handle("T", "mutation.enqueued", "5-14", ev("topology.T.mutation.enqueued", `{"mutation_id":"m3","op":"x","payload":{}}`))
	cl.handle("T", "mutation.failed", "5-15", ev("topology.T.mutation.failed", `{"mutation_id":"m3","op":"x","reason":"MutationError: no"}`))
	cl.handle("T", "status", "5-16", ev("topology.T.status", `{"state":"degraded"}`))
	cl.handle("T", "decky.service_added", "5-17", ev("decky.h:web1.service_added", `{"decky_name":"h:web1","topology_id":"T"}`))
	want := State{Status: "degraded", InFlight: map[string]string{"m1": "applying"}}
	if d := Diff(want, cl.views["T"].state); d != nil || cl.nAnomalies != 0 {
		t.Fatalf("state %+v, differences %+v, anomalies %v", cl.views["T"].state, d, cl.anomalies)
	}
	if cl.events != 6 || cl.snapshots != 1 || cl.resyncs != 0 {
		t.Errorf("events %d snapshots %d resyncs %d", cl.events, cl.snapshots, cl.resyncs)
	}
	// A resync replaces everything.
	cl.handle("T", "snapshot", "5-30", []byte(`{"topology_id":"T","status":"active","in_flight":[],"resync":true}`))
	if d := Diff(State{Status: "active"}, cl.views["T"].state); d != nil || cl.resyncs != 1 {
		t.Fatalf("after the resync: %+v", d)
	}
	cl.handle("T", MarkerEvent, "5-31", ev("topology.T.sim.marker", `{"nonce":"stale"}`))
	if cl.views["T"].synced {
		t.Error("a marker this run did not publish counted")
	}
	cl.handle("T", MarkerEvent, "5-32", ev("topology.T.sim.marker", `{"nonce":"n1"}`))
	if !cl.views["T"].synced {
		t.Error("the marker was not seen")
	}
	// A new hub process (epoch) starts its cursors again.
	cl.handle("T", "snapshot", "6-1", []byte(`{"topology_id":"T","status":"active","in_flight":[],"resync":true}`))
	if cl.nAnomalies != 0 {
		t.Errorf("anomalies %v", cl.anomalies)
	}
}

// What the contract promises and the checker flags when broken.
func TestClientFlagsContractBreaches(t *testing.T) {
	for name, c := range map[string]struct {
		frames [][3]string // event, cursor, data
		want   string
	}{
		"event before the snapshot": {[][3]string{{"status", "1-2", string(ev("topology.T.status", `{"state":"x"}`))}}, "before the first snapshot"},
		"cursor going back": {[][3]string{
			{"snapshot", "1-10", `{"topology_id":"T","status":"a","in_flight":[]}`},
			{"status", "1-9", string(ev("topology.T.status", `{"state":"x"}`))},
		}, "does not follow"},
		"snapshot older than an event": {[][3]string{
			{"snapshot", "1-10", `{"topology_id":"T","status":"a","in_flight":[]}`},
			{"status", "1-12", string(ev("topology.T.status", `{"state":"x"}`))},
			{"snapshot", "1-11", `{"topology_id":"T","status":"a","in_flight":[],"resync":true}`},
		}, "older than the event before it"},
		"misrouted topology event": {[][3]string{
			{"snapshot", "1-10", `{"topology_id":"T","status":"a","in_flight":[]}`},
			{"status", "1-11", string(ev("topology.U.status", `{"state":"x"}`))},
		}, "misrouted"},
		"misrouted decky event": {[][3]string{
			{"snapshot", "1-10", `{"topology_id":"T","status":"a","in_flight":[]}`},
			{"decky.service_added", "1-11", string(ev("decky.h:w.service_added", `{"topology_id":"U"}`))},
		}, "misrouted"},
		"data not an event": {[][3]string{
			{"snapshot", "1-10", `{"topology_id":"T","status":"a","in_flight":[]}`},
			{"status", "1-11", `{"topic":"topology.T.status","payload":{}}`},
		}, "is not {topic,type,ts,payload}"},
		"snapshot of another topology": {[][3]string{{"snapshot", "1-10", `{"topology_id":"U","status":"a","in_flight":[]}`}}, "bad snapshot"},
		"bad cursor":                   {[][3]string{{"snapshot", "x", `{"topology_id":"T","status":"a","in_flight":[]}`}}, "with cursor"},
	} {
		cl := testClient("T")
		for _, f := range c.frames {
			cl.handle("T", f[0], f[1], []byte(f[2]))
		}
		if cl.nAnomalies == 0 || !strings.Contains(strings.Join(cl.anomalies, "\n"), c.want) {
			t.Errorf("%s: anomalies %q, want one with %q", name, cl.anomalies, c.want)
		}
	}
}
