package hub

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var testNow = time.Unix(1764300000, 500000000)

func decode(t *testing.T, channel, body string) (*Event, error) {
	t.Helper()
	return NewDecoder(DefaultFamilies(), 0).Decode(channel, []byte(body), testNow)
}

func TestDecodeEnvelope(t *testing.T) {
	ev, err := decode(t, "topology.T.mutation.applied",
		`{"v":1,"id":"0123456789abcdef0123456789abcdef","topic":"topology.OTHER.status","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky"}}`)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"topic":"topology.T.mutation.applied","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky"}}`
	if string(ev.Data) != want {
		t.Errorf("data\n got %s\nwant %s", ev.Data, want)
	}
	if ev.Topology != "T" || ev.Name != "mutation.applied" {
		t.Errorf("topology %q name %q", ev.Topology, ev.Name)
	}
}

func TestDecodeDefaults(t *testing.T) {
	cases := []struct{ name, channel, body, want string }{
		{"envelope without type and ts", "topology.T.status", `{"payload":{"state":"degraded"}}`,
			`{"topic":"topology.T.status","type":"","ts":1764300000.5,"payload":{"state":"degraded"}}`},
		{"null type and ts", "topology.T.status", `{"type":null,"ts":null,"payload":{}}`,
			`{"topic":"topology.T.status","type":"","ts":1764300000.5,"payload":{}}`},
		{"object without payload is the payload", "topology.T.status", `{"state":"degraded","topic":"x"}`,
			`{"topic":"topology.T.status","type":"","ts":1764300000.5,"payload":{"state":"degraded","topic":"x"}}`},
		{"integer ts kept", "topology.T.status", `{"ts":1764300000,"payload":{}}`,
			`{"topic":"topology.T.status","type":"","ts":1764300000,"payload":{}}`},
		{"exponent ts kept", "topology.T.status", `{"ts":1.7643e9,"payload":{}}`,
			`{"topic":"topology.T.status","type":"","ts":1.7643e9,"payload":{}}`},
		{"pretty payload compacted", "topology.T.status", "{\n  \"payload\": {\n    \"a\": [1, 2],\n    \"b\": \"x y\"\n  }\n}",
			`{"topic":"topology.T.status","type":"","ts":1764300000.5,"payload":{"a":[1,2],"b":"x y"}}`},
		{"two-token topic", "topology.T", `{"x":1}`,
			`{"topic":"topology.T","type":"","ts":1764300000.5,"payload":{"x":1}}`},
		{"string payload field is passed through", "topology.T.mutation.applying", `{"type":"applying","payload":{"mutation_id":"m","payload":"{\"a\":1}"}}`,
			`{"topic":"topology.T.mutation.applying","type":"applying","ts":1764300000.5,"payload":{"mutation_id":"m","payload":"{\"a\":1}"}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, err := decode(t, c.channel, c.body)
			if err != nil {
				t.Fatal(err)
			}
			if string(ev.Data) != c.want {
				t.Errorf("data\n got %s\nwant %s", ev.Data, c.want)
			}
		})
	}
}

func TestDecodeDeckyRouting(t *testing.T) {
	ev, err := decode(t, "decky.host:web1.service_added",
		`{"v":1,"id":"x","type":"","ts":1.5,"payload":{"decky_name":"host:web1","service_name":"ssh","topology_id":"T1","services":["ssh"]}}`)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Topology != "T1" || ev.Name != "decky.service_added" {
		t.Errorf("topology %q name %q", ev.Topology, ev.Name)
	}
	// The routing key hidden behind a JSON escape takes the slow path.
	ev, err = decode(t, "decky.web1.service_added", `{"payload":{"topology\u005fid":"T2"}}`)
	if err != nil || ev.Topology != "T2" {
		t.Errorf("escaped key: %v, %+v", err, ev)
	}
	// Bare object (no payload key) routes by its own field.
	ev, err = decode(t, "decky.web1.service_removed", `{"topology_id":"T3"}`)
	if err != nil || ev.Topology != "T3" {
		t.Errorf("bare object: %v, %+v", err, ev)
	}
	for _, body := range []string{
		`{"payload":{"decky_name":"web1"}}`,
		`{"payload":{"topology_id":null}}`,
		`{"payload":{"topology_id":7}}`,
		`{"payload":{"topology_id":""}}`,
		`{"payload":{"topology_id":"a.b"}}`,
		`{"payload":{"nested":{"topology_id":"T"}}}`,
		`{"topology_id":"T","payload":{}}`,
	} {
		_, err := decode(t, "decky.web1.traffic", body)
		assertDrop(t, body, err, DropUnrouted)
	}
}

func assertDrop(t *testing.T, what string, err error, want DropReason) {
	t.Helper()
	var de *DropError
	if !errors.As(err, &de) {
		t.Errorf("%s: err = %v, want a drop %s", what, err, want)
		return
	}
	if de.Reason != want {
		t.Errorf("%s: reason %s, want %s (%v)", what, de.Reason, want, de)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := []struct {
		channel, body string
		want          DropReason
	}{
		{"topology.T.status", `not json`, DropNotJSON},
		{"topology.T.status", `{"a":`, DropNotJSON},
		{"topology.T.status", `[1,2]`, DropNotObject},
		{"topology.T.status", `"str"`, DropNotObject},
		{"topology.T.status", `null`, DropNotObject},
		{"topology.T.status", ``, DropNotJSON},
		{"topology.T.status", `{"payload":[1]}`, DropBadPayload},
		{"topology.T.status", `{"payload":null}`, DropBadPayload},
		{"topology.T.status", `{"payload":"x"}`, DropBadPayload},
		{"topology.T.status", `{"type":5,"payload":{}}`, DropBadField},
		{"topology.T.status", `{"ts":"yesterday","payload":{}}`, DropBadField},
		{"topology.T.status", `{"payload":{}} trailing`, DropNotJSON},
		{"topology.T.status", "{\"payload\":{\"s\":\"\xff\"}}", DropNotJSON},
		{"topology.T.status", "{\"type\":\"\xc3\",\"payload\":{}}", DropNotJSON},
		{"topology..status", `{}`, DropBadChannel},
		{"topology.a b.status", `{}`, DropBadChannel},
		{"topology.*.status", `{}`, DropBadChannel},
		{"topology.T.\xff", `{}`, DropBadChannel},
		{"topology", `{}`, DropNoFamily},
		{"other.T.status", `{}`, DropNoFamily},
		{"topology.T.status", `{"payload":{"x":"` + strings.Repeat("a", DefaultMaxBodySize) + `"}}`, DropTooLarge},
	}
	for _, c := range cases {
		_, err := decode(t, c.channel, c.body)
		assertDrop(t, c.channel+" "+c.body[:min(len(c.body), 30)], err, c.want)
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "ctl\x01\x1f\n\t\r", "ünï", "bad\xffbyte", "\u2028"} {
		b := AppendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("%q -> %s: %v", s, b, err)
			continue
		}
		if want := strings.ToValidUTF8(s, "\ufffd"); back != want {
			t.Errorf("%q round-tripped to %q", s, back)
		}
	}
}

func TestFrames(t *testing.T) {
	ev := &Event{Topology: "T", Name: "status", Cursor: "1-2", Data: []byte(`{"a":1}`)}
	if got, want := string(ev.SSEFrame()), "id: 1-2\nevent: status\ndata: {\"a\":1}\n\n"; got != want {
		t.Errorf("SSE frame %q, want %q", got, want)
	}
	if got, want := string(ev.WSFrame()), `{"op":"event","topology":"T","event":"status","id":"1-2","data":{"a":1}}`; got != want {
		t.Errorf("WS frame %s, want %s", got, want)
	}
	if &ev.SSEFrame()[0] != &ev.SSEFrame()[0] {
		t.Error("SSE frame rebuilt per call")
	}
}

func FuzzDecode(f *testing.F) {
	seeds := []struct{ ch, body string }{
		{"topology.T.status", `{"payload":{"state":"x"}}`},
		{"decky.w.service_added", `{"payload":{"topology_id":"T"}}`},
		{"topology.T", `{"a":[1,{"b":null}]}`},
		{"decky.w.x", `{"topology\u005fid":"T"}`},
		{"topology.T.s", `{"ts":-1e400,"type":"\u0000","payload":{}}`},
		{"topology..", `[]`},
	}
	for _, s := range seeds {
		f.Add(s.ch, []byte(s.body))
	}
	d := NewDecoder(DefaultFamilies(), 0)
	f.Fuzz(func(t *testing.T, channel string, body []byte) {
		ev, err := d.Decode(channel, body, testNow)
		if err != nil {
			var de *DropError
			if !errors.As(err, &de) {
				t.Fatalf("error is not a DropError: %v", err)
			}
			return
		}
		if !json.Valid(ev.Data) {
			t.Fatalf("data is not JSON: %q", ev.Data)
		}
		if !utf8.Valid(ev.Data) {
			t.Fatalf("data is not UTF-8: %q", ev.Data)
		}
		if bytes.ContainsAny(ev.Data, "\r\n") {
			t.Fatalf("data spans lines: %q", ev.Data)
		}
		if ValidateTopologyID(ev.Topology) != nil {
			t.Fatalf("routed to invalid topology %q", ev.Topology)
		}
	})
}

// TestDecodeWSFrameLimit: a body the bus accepts (at most 1 MiB) whose
// WebSocket frame would pass 1 MiB is dropped as too_large; one just
// under the limit is kept, and its frame fits.
func TestDecodeWSFrameLimit(t *testing.T) {
	d := NewDecoder(DefaultFamilies(), 0)
	body := func(n int) []byte { return []byte(`{"x":"` + strings.Repeat("a", n) + `"}`) }
	// The largest body whose frame fits, with the longest cursor.
	fixed := wsFrameLen("T", "status", 0) + len(`{"topic":"topology.T.status","type":"","ts":1764300000.123456,"payload":}`)
	fits := MaxWSMessage - fixed - len(`{"x":""}`)
	ev, err := d.Decode("topology.T.status", body(fits-8), time.Unix(1764300000, 123456000))
	if err != nil {
		t.Fatalf("a body whose frame fits was dropped: %v", err)
	}
	ev.Cursor = "1764300000000-18446744073709551615"
	if n := len(ev.WSFrame()); n > MaxWSMessage {
		t.Fatalf("frame %d bytes, over %d", n, MaxWSMessage)
	}
	_, err = d.Decode("topology.T.status", body(MaxWSMessage-20), time.Now())
	var de *DropError
	if !errors.As(err, &de) || de.Reason != DropTooLarge || len(body(MaxWSMessage-20)) > DefaultMaxBodySize {
		t.Fatalf("err %v, want too_large for a body under the bus limit whose frame is over 1 MiB", err)
	}
}
