package handlers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

func TestSSEPublishReachesClientWithExactFrames(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	th.addMutation(id, "m1", `{"id":"m1","topology_id":"`+id+`","op":"add_decky","payload":{"name":"web1"},"state":"pending","requested_at":"2026-04-28T23:53:25+00:00","applied_at":null,"reason":null}`)
	th.addMutation(id, "m0", `{"id":"m0","topology_id":"`+id+`","op":"remove_decky","payload":{},"state":"applied","requested_at":"2026-04-28T23:50:00+00:00","applied_at":"2026-04-28T23:50:01+00:00","reason":null}`)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := th.get(ctx, th.sseURL(id), bearer(th.token()))
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	first := make([]byte, len(": keepalive\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != ": keepalive\n\n" {
		t.Fatalf("first bytes %q (%v)", first, err)
	}
	epoch := th.hub.Epoch()
	snap := fmt.Sprintf("id: %d-0\nevent: snapshot\ndata: {\"topology_id\":%q,\"status\":\"active\",\"in_flight\":[{\"id\":\"m1\",\"topology_id\":%q,\"op\":\"add_decky\",\"payload\":{\"name\":\"web1\"},\"state\":\"pending\",\"requested_at\":\"2026-04-28T23:53:25+00:00\",\"applied_at\":null,\"reason\":null}]}\n\n", epoch, id, id)
	buf := make([]byte, len(snap))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != snap {
		t.Fatalf("snapshot frame\n got %q\nwant %q (%v)", buf, snap, err)
	}

	// What `redis-cli publish` sends, in the producers' envelope.
	th.publish("topology."+id+".mutation.applied", `{"v":1,"id":"0123456789abcdef0123456789abcdef","topic":"topology.`+id+`.mutation.applied","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky"}}`)
	want := fmt.Sprintf("id: %d-1\nevent: mutation.applied\ndata: {\"topic\":\"topology.%s.mutation.applied\",\"type\":\"applied\",\"ts\":1764300000.123,\"payload\":{\"mutation_id\":\"m1\",\"op\":\"add_decky\"}}\n\n", epoch, id)
	buf = make([]byte, len(want))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != want {
		t.Fatalf("event frame\n got %q\nwant %q (%v)", buf, want, err)
	}
}

func TestSSEDeckyRoutedByTopologyID(t *testing.T) {
	th := newTestHub(t)
	id, other := th.newTopology(), th.newTopology()
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	if f := parseFrame(t, s.nextEvent()); f.event != "snapshot" {
		t.Fatalf("first event %q", f.event)
	}
	th.publish("decky.host:web1.service_added", `{"v":1,"id":"a","type":"","ts":1.5,"payload":{"decky_name":"host:web1","service_name":"ssh","topology_id":"`+other+`","services":["ssh"]}}`)
	th.publish("decky.host:web1.service_added", `{"v":1,"id":"b","type":"","ts":1.5,"payload":{"decky_name":"host:web1","service_name":"ssh","topology_id":null,"services":["ssh"]}}`)
	th.publish("decky.host:web1.traffic", `{"v":1,"id":"c","type":"bytes","ts":1.5,"payload":{"decky_name":"host:web1","bytes":123}}`)
	th.publish("decky.host:web1.service_added", `{"v":1,"id":"d","type":"","ts":2.5,"payload":{"decky_name":"host:web1","service_name":"http","topology_id":"`+id+`","services":["ssh","http"]}}`)
	f := parseFrame(t, s.nextEvent())
	if f.event != "decky.service_added" || !strings.Contains(f.data, `"service_name":"http"`) {
		t.Fatalf("got %+v; events for other or missing topology_id leaked or the routed one was lost", f)
	}
	if want := `{"topic":"decky.host:web1.service_added","type":"","ts":2.5,"payload":{"decky_name":"host:web1","service_name":"http","topology_id":"` + id + `","services":["ssh","http"]}}`; f.data != want {
		t.Fatalf("data\n got %s\nwant %s", f.data, want)
	}
}

func TestSSEBadBodiesDroppedStreamKeepsWorking(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	s.nextEvent() // snapshot
	before := th.hub.Stats().Received.Load()
	bad := []string{`not json`, `[1,2]`, `{"payload":[1]}`, `{"payload":"x"}`, `{"type":7,"payload":{}}`, `"str"`, ``, `{"x":` + strings.Repeat("1", 10) + `}}`}
	for _, b := range bad {
		th.publish("topology."+id+".status", b)
	}
	th.publish("topology."+id+"..bad", `{"x":1}`)
	th.publish("topology."+id+".status", `{"state":"degraded"}`)
	f := parseFrame(t, s.nextEvent())
	if f.event != "status" || !strings.Contains(f.data, `"payload":{"state":"degraded"}`) {
		t.Fatalf("got %+v", f)
	}
	if got := th.hub.Stats().Received.Load() - before; got != uint64(len(bad)+2) {
		t.Errorf("hub received %d messages, want %d", got, len(bad)+2)
	}
	var dropped uint64
	for _, r := range hub.DropReasons() {
		dropped += th.hub.Stats().Dropped[r].Load()
	}
	if dropped < uint64(len(bad)+1) {
		t.Errorf("dropped %d, want at least %d", dropped, len(bad)+1)
	}
	resp := th.get(context.Background(), th.http.URL+"/metrics", nil)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`topohub_bus_messages_dropped_total{reason="not_json"} 3`, `topohub_bus_messages_dropped_total{reason="bad_channel"} 1`, "topohub_clients 1", "topohub_bus_subscription_up 1"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestSSEAuthRefusals(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	th.addMutation(id, "m1", `{"id":"m1","state":"pending"}`)
	other := []byte("another-secret-another-secret-0123456789")
	noneTok := func() string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"uuid": "u", "role": "viewer", "exp": time.Now().Add(time.Hour).Unix(), "iss": "decnet", "aud": "decnet-dashboard", "typ": "access"}).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hs512 := func() string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"uuid": "u", "role": "viewer", "exp": time.Now().Add(time.Hour).Unix(), "iss": "decnet", "aud": "decnet-dashboard", "typ": "access"}).SignedString(testSecret)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cases := []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"missing", th.sseURL(id), nil, 401},
		{"not bearer", th.sseURL(id), http.Header{"Authorization": {"Basic dTpw"}}, 401},
		{"garbage", th.sseURL(id), bearer("not.a.jwt"), 401},
		{"bad signature", th.sseURL(id), bearer(signToken(t, other)), 401},
		{"alg none", th.sseURL(id), bearer(noneTok()), 401},
		{"other algorithm", th.sseURL(id), bearer(hs512()), 401},
		{"expired", th.sseURL(id), bearer(th.token(claim("exp", time.Now().Add(-time.Minute).Unix()))), 401},
		{"no exp", th.sseURL(id), bearer(th.token(without("exp"))), 401},
		{"not yet valid", th.sseURL(id), bearer(th.token(claim("nbf", time.Now().Add(time.Hour).Unix()))), 401},
		{"wrong audience", th.sseURL(id), bearer(th.token(claim("aud", "someone-else"))), 401},
		{"wrong issuer", th.sseURL(id), bearer(th.token(claim("iss", "evil"))), 401},
		{"wrong typ", th.sseURL(id), bearer(th.token(claim("typ", "refresh"))), 401},
		{"no user", th.sseURL(id), bearer(th.token(without("uuid"), without("sub"))), 401},
		{"query token refused", th.sseURL(id) + "?token=" + th.token(), nil, 401},
		{"unknown ticket", th.sseURL(id) + "?ticket=nope", nil, 401},
		{"role", th.sseURL(id), bearer(th.token(claim("role", "guest"))), 403},
		{"no role", th.sseURL(id), bearer(th.token(without("role"))), 403},
		{"not found", th.sseURL("nope-" + id), bearer(th.token()), 404},
		{"unauthenticated not found is 401", th.sseURL("nope-" + id), nil, 401},
		{"invalid id", th.sseURL(strings.Repeat("x", 129)), bearer(th.token()), 400},
		// id's mutations hash exists: the id naming that key is no topology.
		{"key of another topology", th.sseURL(id + ":mutations"), bearer(th.token()), 404},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := th.get(context.Background(), c.url, c.header)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, c.want, body)
			}
			if !strings.Contains(string(body), `"error"`) {
				t.Errorf("body %s has no error message", body)
			}
		})
	}
	// aud as an array containing the audience is accepted; sub stands in for uuid.
	s := th.openSSE(th.sseURL(id), bearer(th.token(claim("aud", []string{"x", "decnet-dashboard"}), without("uuid"))))
	s.nextEvent()
}

func TestSSEQueryTokenWhenEnabled(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) { c.Auth.AllowQueryToken = true }))
	id := th.newTopology()
	s := th.openSSE(th.sseURL(id)+"?token="+th.token(), nil)
	if f := parseFrame(t, s.nextEvent()); f.event != "snapshot" {
		t.Fatalf("got %+v", f)
	}
}

func TestSSEConnectionCap(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	tok := th.token()
	var streams []*sseStream
	for range 5 {
		s := th.openSSE(th.sseURL(id), bearer(tok))
		s.nextEvent()
		streams = append(streams, s)
	}
	resp := th.get(context.Background(), th.sseURL(id), bearer(tok))
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("6th stream: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		t.Fatal("429 came after the stream started")
	}
	// Another user is not affected.
	th.openSSE(th.sseURL(id), bearer(th.token(claim("uuid", "user-2")))).nextEvent()

	streams[0].Close()
	waitFor(t, 10*time.Second, "slot released", func() bool {
		resp := th.get(context.Background(), th.sseURL(id), bearer(tok))
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// publishingSource publishes a real event between the subscription and
// the snapshot read, to prove the ordering guarantee of docs/protocol.md §4.
type publishingSource struct {
	hub.SnapshotSource
	before atomic.Pointer[func()]
}

func (p *publishingSource) Snapshot(ctx context.Context, id string) (hub.Snapshot, error) {
	if f := p.before.Swap(nil); f != nil {
		(*f)()
	}
	return p.SnapshotSource.Snapshot(ctx, id)
}

func TestSSEEventBetweenSubscribeAndSnapshotIsDelivered(t *testing.T) {
	src := &publishingSource{}
	th := newTestHub(t, withSnapshotWrapper(func(s hub.SnapshotSource) hub.SnapshotSource {
		src.SnapshotSource = s
		return src
	}))
	id := th.newTopology()
	hook := func() {
		n := th.hub.Stats().Published.Load()
		th.publish("topology."+id+".mutation.enqueued", `{"type":"enqueued","payload":{"mutation_id":"m9","op":"add_decky","payload":{}}}`)
		waitFor(t, 10*time.Second, "hub to route the event", func() bool { return th.hub.Stats().Published.Load() > n })
	}
	src.before.Store(&hook)
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	snap := parseFrame(t, s.nextEvent())
	ev := parseFrame(t, s.nextEvent())
	if snap.event != "snapshot" || ev.event != "mutation.enqueued" {
		t.Fatalf("got %q then %q", snap.event, ev.event)
	}
	_, snapSeq, ok1 := hub.ParseCursor(snap.id)
	_, evSeq, ok2 := hub.ParseCursor(ev.id)
	if !ok1 || !ok2 || snapSeq >= evSeq {
		t.Errorf("snapshot cursor %s not before event cursor %s", snap.id, ev.id)
	}
}

func TestSSEResumeFromCursor(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	tok := th.token()
	s := th.openSSE(th.sseURL(id), bearer(tok))
	s.nextEvent()
	for i := 1; i <= 2; i++ {
		th.publish("topology."+id+".status", fmt.Sprintf(`{"n":%d}`, i))
	}
	s.nextEvent()
	cursor := parseFrame(t, s.nextEvent()).id
	s.Close()
	for i := 3; i <= 4; i++ {
		th.publish("topology."+id+".status", fmt.Sprintf(`{"n":%d}`, i))
	}
	waitFor(t, 10*time.Second, "events routed", func() bool { return th.hub.Stats().Published.Load() >= 4 })

	h := bearer(tok)
	h.Set("Last-Event-ID", cursor)
	r := th.openSSE(th.sseURL(id), h)
	for _, n := range []string{`{"n":3}`, `{"n":4}`} {
		if f := parseFrame(t, r.nextEvent()); f.event != "status" || !strings.Contains(f.data, n) {
			t.Fatalf("resumed stream: got %+v, want the event with %s (no snapshot)", f, n)
		}
	}
	r.Close()
	q := th.openSSE(th.sseURL(id)+"?lastEventId="+cursor, bearer(tok))
	if f := parseFrame(t, q.nextEvent()); !strings.Contains(f.data, `{"n":3}`) {
		t.Fatalf("?lastEventId: got %+v", f)
	}
	q.Close()
	old := th.openSSE(th.sseURL(id)+"?lastEventId=1-1", bearer(tok))
	if f := parseFrame(t, old.nextEvent()); f.event != "snapshot" || !strings.Contains(f.data, `"resync":true`) {
		t.Fatalf("cursor from another epoch: got %+v", f)
	}
}

func TestSSETopologyDeletedEndsStream(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	s.nextEvent()
	th.rdb.Del(context.Background(), th.snaps.TopologyKey(id))
	th.hub.BusGap() // forces a snapshot read
	f := parseFrame(t, s.nextEvent())
	if f.event != "error" || !strings.Contains(f.data, "not_found") {
		t.Fatalf("got %+v", f)
	}
	if !s.ended(10 * time.Second) {
		t.Fatal("stream still open")
	}
}

func TestSSERedisRestartResyncsEveryStream(t *testing.T) {
	rs := redistest.StartDurable(t)
	th := newTestHub(t, withRedis(rs))
	a, b := th.newTopology(), th.newTopology()
	tok := th.token()
	var streams []*sseStream
	for _, id := range []string{a, a, b} {
		s := th.openSSE(th.sseURL(id), bearer(tok))
		s.nextEvent()
		streams = append(streams, s)
	}
	before := th.sub.Established()
	rs.Kill(t)
	waitFor(t, 10*time.Second, "subscription to notice the loss", func() bool { return !th.sub.Ready() })
	rs.Restart(t)
	waitFor(t, 15*time.Second, "subscription re-established", func() bool { return th.sub.Established() > before && th.sub.Ready() })
	for i, s := range streams {
		if f := parseFrame(t, s.nextEvent()); f.event != "snapshot" || !strings.Contains(f.data, `"resync":true`) {
			t.Fatalf("stream %d: got %+v, want a resync snapshot", i, f)
		}
	}
	pub := rs.Client(t)
	pub.Publish(context.Background(), "topology."+a+".status", `{"state":"back"}`)
	pub.Publish(context.Background(), "topology."+b+".status", `{"state":"back"}`)
	for i, s := range streams {
		if f := parseFrame(t, s.nextEvent()); f.event != "status" || !strings.Contains(f.data, "back") {
			t.Fatalf("stream %d after restart: got %+v", i, f)
		}
	}
}

func TestOneRedisSubscriptionForAllClients(t *testing.T) {
	th := newTestHub(t)
	tok := func(i int) string { return th.token(claim("uuid", fmt.Sprint("u", i))) }
	for i := range 12 {
		s := th.openSSE(th.sseURL(th.newTopology()), bearer(tok(i)))
		s.nextEvent()
	}
	list, err := th.rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	subs := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+busredis.SubscriberName+" ") {
			subs++
			if !strings.Contains(line, " psub=2 ") {
				t.Errorf("subscription connection holds other than 2 patterns: %s", line)
			}
		}
	}
	// Other test hubs of this package are closed by now; with an external
	// Redis other packages may add theirs, so count only this hub's by
	// its two patterns on one connection.
	if subs < 1 {
		t.Fatalf("no subscription connection in CLIENT LIST:\n%s", list)
	}
	if !redisIsExternal() && subs != 1 {
		t.Fatalf("%d subscription connections for 12 clients, want 1:\n%s", subs, list)
	}
	if !redisIsExternal() {
		if n, err := th.rdb.PubSubNumPat(context.Background()).Result(); err != nil || n != 2 {
			t.Fatalf("PUBSUB NUMPAT = %d (%v), want 2", n, err)
		}
	}
}

func redisIsExternal() bool { return pkgRedis.External() }

// TestSSEOverHTTP10 checks the stream of a client that cannot take
// chunked encoding: frames as they are, ended by closing.
func TestSSEOverHTTP10(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	conn, err := net.Dial("tcp", strings.TrimPrefix(th.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/topologies/%s/events HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n", id, th.token())
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte("event: snapshot\ndata: ")) || !bytes.HasSuffix(got, []byte("\n\n")) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v; got %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
	head, body, _ := bytes.Cut(got, []byte("\r\n\r\n"))
	if !bytes.HasPrefix(head, []byte("HTTP/1.0 200 OK\r\n")) || bytes.Contains(head, []byte("chunked")) || !bytes.Contains(head, []byte("Content-Type: text/event-stream")) {
		t.Fatalf("head %q", head)
	}
	if !bytes.HasPrefix(body, []byte(": keepalive\n\nid: ")) {
		t.Fatalf("body %q: want the keepalive then the snapshot, unframed", body)
	}
}
