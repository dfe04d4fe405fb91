package main

import (
	"bufio"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testSink() *sink {
	return &sink{hist: &histogram{}, errs: newErrorCounts(slog.New(slog.DiscardHandler)), topoPrefix: []byte("bench-r1-")}
}

func snapshotData(seq int, resync bool) string {
	s := `{"topology_id":"bench-r1-0","status":"seq:` + itoa(seq) + `","in_flight":[]`
	if resync {
		s += `,"resync":true`
	}
	return s + "}"
}

func benchData(seq int, sent int64) string {
	return `{"topic":"topology.bench-r1-0.bench","type":"bench","ts":1796192808.553065,"payload":{"seq":` + itoa(seq) + `,"sent":` + itoa(int(sent)) + `}}`
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestLossAccounting walks one subscription through a gap, a resync that
// covers later losses, a duplicate and a stale resync.
func TestLossAccounting(t *testing.T) {
	k := testSink()
	var s subStats
	s.init(0)
	now := time.Now().UnixNano()
	ev := func(name, data string) { k.event(&s, []byte(name), []byte(data), now, 0) }

	ev("snapshot", snapshotData(0, false))
	for _, seq := range []int{1, 2, 3, 6} { // 4 and 5 lost, nothing covers them
		ev("bench", benchData(seq, now-int64(time.Millisecond)))
	}
	ev("snapshot", snapshotData(9, true)) // 7, 8, 9 covered
	ev("bench", benchData(9, now))        // already reflected
	ev("bench", benchData(10, now))
	ev("snapshot", snapshotData(5, true)) // older than what we have
	ev("decky.traffic", `{"topic":"decky.x.traffic","type":"","ts":1,"payload":{}}`)
	ev("status", `{}`)

	if got := s.last.Load(); got != 10 {
		t.Errorf("last %d, want 10", got)
	}
	got := [...]int64{s.gap, s.covered, s.dups, s.resyncs, s.behind, s.flood, s.unexpected}
	if want := [...]int64{2, 3, 1, 2, 1, 1, 1}; got != want {
		t.Errorf("gap, covered, dups, resyncs, behind, flood, unexpected = %v, want %v", got, want)
	}
	if s.delivered.Load() != 6 {
		t.Errorf("delivered %d, want 6", s.delivered.Load())
	}
	if n, _, mx := k.hist.summary(0.5); n != 6 || mx < 0.9 || mx > 1.1 {
		t.Errorf("latency count %d max %v ms, want 6 and 1 ms", n, mx)
	}
}

func TestParseWSFrame(t *testing.T) {
	for _, tc := range []struct {
		frame, op, topo, event, id, code, data string
	}{
		{`{"op":"event","topology":"bench-r1-3","event":"bench","id":"17-4","data":{"seq":4}}`, "event", "bench-r1-3", "bench", "17-4", "", `{"seq":4}`},
		// Same frame, other key order and spacing: decoded, not sliced.
		{`{"topology":"bench-r1-3", "op":"event","id":"17-4","event":"bench","data":{"seq":4}}`, "event", "bench-r1-3", "bench", "17-4", "", `{"seq":4}`},
		{`{"op":"event","topology":"a\"b","event":"x","id":"1","data":{}}`, "event", `a"b`, "x", "1", "", `{}`},
		{`{"op":"subscribed","id":"2","topology":"bench-r1-0"}`, "subscribed", "bench-r1-0", "", "2", "", ""},
		{`{"op":"error","id":7,"code":"not_found","message":"topology not found"}`, "error", "", "", "7", "not_found", ""},
	} {
		fr, err := parseWSFrame([]byte(tc.frame))
		if err != nil {
			t.Errorf("%s: %v", tc.frame, err)
			continue
		}
		if string(fr.op) != tc.op || string(fr.topology) != tc.topo || string(fr.event) != tc.event || string(fr.id) != tc.id || string(fr.code) != tc.code || string(fr.data) != tc.data {
			t.Errorf("%s: got op %q topology %q event %q id %q code %q data %q", tc.frame, fr.op, fr.topology, fr.event, fr.id, fr.code, fr.data)
		}
	}
	if _, err := parseWSFrame([]byte(`{"op":`)); err == nil {
		t.Error("truncated frame accepted")
	}
}

// TestWSMessageSplitsFrames: one message, several frames.
func TestWSMessageSplitsFrames(t *testing.T) {
	k := testSink()
	c := newWSClient(0, k, []int{0, 2})
	now := time.Now().UnixNano()
	msg := `{"op":"subscribed","id":"0","topology":"bench-r1-0"}` + "\n" +
		`{"op":"event","topology":"bench-r1-0","event":"snapshot","id":"1-0","data":` + snapshotData(0, false) + `}` + "\n" +
		`{"op":"event","topology":"bench-r1-0","event":"bench","id":"1-1","data":` + benchData(1, now) + `}` + "\n" +
		`{"op":"subscribed","id":"1","topology":"bench-r1-2"}`
	c.message([]byte(msg), now)
	select {
	case err := <-c.hs:
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
	default:
		t.Fatal("two acks did not complete the handshake")
	}
	if c.subs[0].last.Load() != 1 || c.subs[0].delivered.Load() != 1 || c.subs[1].last.Load() != -1 {
		t.Errorf("subs: last %d delivered %d; second last %d", c.subs[0].last.Load(), c.subs[0].delivered.Load(), c.subs[1].last.Load())
	}
}

// TestSSEParsing feeds a stream with comments, CRLF line ends and a data
// line longer than the read buffer.
func TestSSEParsing(t *testing.T) {
	k := testSink()
	c := newSSEClient(0, k, []int{0})
	s := &sseStream{c: c, sub: &c.subs[0], done: make(chan struct{})}
	now := time.Now().UnixNano()
	long := `{"topic":"topology.bench-r1-0.bench","type":"bench","ts":1,"payload":{"pad":"` + strings.Repeat("x", 3*sseLineBuffer) + `","seq":2,"sent":` + itoa(int(now)) + `}}`
	stream := ": keepalive\n\n" +
		"id: 1-0\nevent: snapshot\ndata: " + snapshotData(0, false) + "\n\n" +
		"id: 1-1\r\nevent: bench\r\ndata: " + benchData(1, now) + "\r\n\r\n" +
		"id: 1-2\nevent: bench\ndata: " + long + "\n\n" +
		": keepalive\n\n" +
		"id: 1-3\nevent: bench\ndata:" + benchData(3, now) + "\n\n"
	k.readers.Add(1)
	s.read(bufio.NewReaderSize(strings.NewReader(stream), sseLineBuffer))
	if got := c.subs[0].last.Load(); got != 3 || c.subs[0].delivered.Load() != 3 || c.subs[0].gap != 0 || c.subs[0].unexpected != 0 {
		t.Errorf("last %d delivered %d gap %d unexpected %d", got, c.subs[0].delivered.Load(), c.subs[0].gap, c.subs[0].unexpected)
	}
	if errs, _ := k.errs.snapshot(); errs["sse_ended_by_hub"] != 1 {
		t.Errorf("errors %v, want the end of the stream counted", errs)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := &histogram{}
	for i := 1; i <= 10000; i++ {
		h.add(i, time.Duration(i)*time.Microsecond) // 1 us .. 10 ms, uniform
	}
	n, q, mx := h.summary(0.5, 0.99)
	if n != 10000 || mx != 10 {
		t.Fatalf("n %d max %v", n, mx)
	}
	for i, want := range []float64{5, 9.9} {
		if math.Abs(q[i]-want)/want > 0.07 {
			t.Errorf("quantile %d = %v ms, want %v within 7%%", i, q[i], want)
		}
	}
	for v := uint64(0); v < 1<<20; v += 7 {
		b := bucketOf(v)
		if mid := bucketMid(b); bucketOf(mid) != b {
			t.Fatalf("value %d: bucket %d has midpoint %d in bucket %d", v, b, mid, bucketOf(mid))
		}
	}
	h.add(0, -time.Second) // clock skew: counted as 0
	if n, _, _ := h.summary(); n != 10001 {
		t.Errorf("negative latency not counted")
	}
}

func TestDialers(t *testing.T) {
	for _, tc := range []struct {
		hub, addr string
		sources   int
	}{
		{"http://127.0.0.1:8080", "127.0.0.1:8080", 3},
		{"http://localhost", "127.0.0.1:80", 3},
		{"https://hub.example.com", "hub.example.com:443", 0},
		{"http://[::1]:8080", "[::1]:8080", 0},
	} {
		d, err := newDialers(&config{HubURL: tc.hub, SourceIPs: 3, ConnTO: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if d.addr != tc.addr || len(d.source) != tc.sources || len(d.raw) != max(1, tc.sources) {
			t.Errorf("%s: dial %s from %v, want %s from %d addresses", tc.hub, d.addr, d.source, tc.addr, tc.sources)
		}
		if (d.tls != nil) != strings.HasPrefix(tc.hub, "https") {
			t.Errorf("%s: tls %v", tc.hub, d.tls)
		}
		d.close()
	}
}
