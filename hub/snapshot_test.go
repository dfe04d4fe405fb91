package hub

import (
	"encoding/json"
	"testing"
)

func TestOrderInFlight(t *testing.T) {
	rows := []json.RawMessage{
		json.RawMessage(`{"id":"a1","state":"applying","requested_at":"2026-04-28T23:50:00+00:00"}`),
		json.RawMessage(`{"id":"p1","state":"pending","requested_at":"2026-04-28T23:51:00.123456+00:00"}`),
		json.RawMessage(`{"id":"done","state":"applied","requested_at":"2026-04-28T23:59:00+00:00"}`),
		json.RawMessage(`{"id":"p2","state":"pending","requested_at":1777420380.5}`), // 2026-04-28T23:53:00.5Z
		json.RawMessage(`{"id":"a2","state":"applying","requested_at":"2026-04-28T23:52:00"}`),
		json.RawMessage(`{"id":"p3","state":"pending","requested_at":"garbage"}`),
		json.RawMessage(`not json`),
	}
	got := OrderInFlight(rows)
	var ids []string
	for _, r := range got {
		var head struct{ ID string }
		_ = json.Unmarshal(r, &head)
		ids = append(ids, head.ID)
	}
	want := []string{"p2", "p1", "p3", "a2", "a1"}
	if len(ids) != len(want) {
		t.Fatalf("ids %v, want %v", ids, want)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Fatalf("ids %v, want %v", ids, want)
		}
	}
}

func TestEncodeSnapshot(t *testing.T) {
	s := Snapshot{TopologyID: "T", Status: "active", InFlight: []json.RawMessage{
		json.RawMessage("{ \"id\": \"m1\",\n \"state\": \"pending\" }"),
		json.RawMessage(`[1]`),
		json.RawMessage("{\"id\":\"\xff\"}"),
		json.RawMessage(`{"id":"m2"}`),
	}}
	want := `{"topology_id":"T","status":"active","in_flight":[{"id":"m1","state":"pending"},{"id":"m2"}]}`
	if got := string(EncodeSnapshot(s, false)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	want = `{"topology_id":"T","status":"","in_flight":[],"resync":true}`
	if got := string(EncodeSnapshot(Snapshot{TopologyID: "T"}, true)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
