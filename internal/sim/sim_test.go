package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
	"topohub/internal/redistest"
	"topohub/internal/testwait"
)

var pkgRedis *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &pkgRedis)) }

// recorder is a PSUBSCRIBE on both families: what the hub would receive.
type recorder struct {
	mu   sync.Mutex
	msgs []*redis.Message
	// rank checks, made as each message arrives: the key must already
	// hold the state the event announces (or a later one).
	early []string
}

func startRecorder(t *testing.T, rdb *redis.Client, prefix string) *recorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ps := rdb.PSubscribe(ctx, "topology.*", "decky.*")
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch := ps.Channel(redis.WithChannelSize(100000))
		for m := range ch {
			r.checkRank(ctx, rdb, prefix, m)
			r.mu.Lock()
			r.msgs = append(r.msgs, m)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); ps.Close(); <-done })
	return r
}

var rank = map[string]int{"pending": 0, "applying": 1, "applied": 2, "failed": 2, "": 3}

func (r *recorder) checkRank(ctx context.Context, rdb *redis.Client, prefix string, m *redis.Message) {
	parts := strings.SplitN(m.Channel, ".", 4)
	if len(parts) != 4 || parts[0] != "topology" || parts[2] != "mutation" {
		return
	}
	var env struct {
		Payload struct {
			MutationID string `json:"mutation_id"`
		} `json:"payload"`
	}
	if json.Unmarshal([]byte(m.Payload), &env) != nil {
		r.early = append(r.early, "undecodable "+m.Channel)
		return
	}
	want := map[string]int{"enqueued": 0, "applying": 1, "applied": 2, "failed": 2}[parts[3]]
	v, err := rdb.HGet(ctx, MutationsKey(prefix, parts[1]), env.Payload.MutationID).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return // the test is ending
	}
	var row struct{ State string }
	_ = json.Unmarshal([]byte(v), &row)
	if rank[row.State] < want {
		r.early = append(r.early, m.Channel+" "+env.Payload.MutationID+" arrived while its row was "+orNone(row.State))
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, d, what, cond)
}

func testConfig(ids []string, prefix string) Config {
	return Config{
		Topologies:  ids,
		Rate:        150,
		TrafficRate: 400,
		Duration:    2 * time.Second,
		Seed:        42,
		FailShare:   0.2,
		KeyPrefix:   prefix,
		Burst:       300,
		Start:       time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC),
	}
}

// TestSimulatorAgainstRedis runs the simulator for two seconds against a
// real redis-server and checks what went over the bus and into the keys.
//
// Not parallel: its subscription would see the other tests' messages.
func TestSimulatorAgainstRedis(t *testing.T) {
	rdb := pkgRedis.Client(t)
	prefix := redistest.UniqueID("s") + ":"
	ids := []string{redistest.UniqueID("a-"), redistest.UniqueID("b-"), redistest.UniqueID("c-")}
	rec := startRecorder(t, rdb, prefix)

	s, err := New(rdb, testConfig(ids, prefix))
	if err != nil {
		t.Fatal(err)
	}
	var sent []Message
	s.OnMessage = func(m Message) { sent = append(sent, m) }
	ctx := context.Background()
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Elapsed < 1900*time.Millisecond || st.Elapsed > 6*time.Second {
		t.Errorf("run took %s, want about its 2s duration", st.Elapsed)
	}
	// 150/s for each of 3 topologies for 2 s, plus follow-up status
	// changes, plus the burst; 400/s of traffic.
	if n := st.ByKind[KindTraffic]; n != 800 {
		t.Errorf("traffic %d, want 800", n)
	}
	if n := st.Messages - st.ByKind[KindTraffic]; n < 900+300 || n > 900+300+400 {
		t.Errorf("%d topology messages, want 1200 and the follow-ups", n)
	}
	for _, k := range []string{KindEnqueued, KindApplying, KindApplied, KindFailed, KindStatus, KindServiceAdded, KindServiceRemoved, KindServiceConfig} {
		if st.ByKind[k] == 0 {
			t.Errorf("no %s message sent", k)
		}
	}
	setupMsgs := len(ids) // Setup's status changes
	waitFor(t, 10*time.Second, "every message on the subscription", func() bool { return rec.count() == st.Messages+setupMsgs })

	// Every message decodes under the contract; routed ones go to their
	// topology, traffic and topology_id:null ones are dropped unrouted.
	dec := hub.NewDecoder(hub.DefaultFamilies(), 0)
	rec.mu.Lock()
	got := rec.msgs[setupMsgs:]
	rec.mu.Unlock()
	for i, m := range got {
		want := sent[i]
		if m.Channel != want.Channel || m.Payload != string(want.Body) {
			t.Fatalf("message %d on the bus is %s %s, the simulator sent %s %s", i, m.Channel, m.Payload, want.Channel, want.Body)
		}
		ev, err := dec.Decode(m.Channel, []byte(m.Payload), time.Now())
		if want.Topology == "" {
			var de *hub.DropError
			if !errors.As(err, &de) || de.Reason != hub.DropUnrouted {
				t.Fatalf("%s %s: err %v, want dropped unrouted", m.Channel, m.Payload, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s %s does not decode: %v", m.Channel, m.Payload, err)
		}
		if ev.Topology != want.Topology {
			t.Fatalf("%s routed to %q, want %q", m.Channel, ev.Topology, want.Topology)
		}
		var data struct {
			Topic   string          `json:"topic"`
			Type    *string         `json:"type"`
			TS      *float64        `json:"ts"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.Type == nil || data.TS == nil || data.Topic != m.Channel {
			t.Fatalf("event data %s: %v", ev.Data, err)
		}
	}
	if len(rec.early) > 0 {
		t.Errorf("%d events published before their key was written, e.g. %s", len(rec.early), rec.early[0])
	}

	// The keys hold the lifecycle state at the end.
	for _, id := range ids {
		have, err := ReadState(ctx, rdb, prefix, id)
		if err != nil {
			t.Fatal(err)
		}
		if d := Diff(st.Final[id], have); d != nil {
			t.Errorf("topology %s: Redis differs from the lifecycle state: %+v", id, d)
		}
		if n, _ := rdb.HLen(ctx, MutationsKey(prefix, id)).Result(); n > int64(KeepFinished+DefaultMaxInFlight) {
			t.Errorf("topology %s keeps %d rows, want at most %d", id, n, KeepFinished+DefaultMaxInFlight)
		}
	}
}

// TestMessagesFollowTheLifecycle replays a long generated sequence on a
// model of the keys and checks every message against it: each key write
// precedes its PUBLISH in the same message, and the event says what the
// key now holds.
func TestMessagesFollowTheLifecycle(t *testing.T) {
	t.Parallel()
	cfg := testConfig([]string{"T1", "T2"}, "p:")
	cfg.Duration = 8 * time.Second
	g, err := NewGenerator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]map[string]string{}
	apply := func(ws []Write) {
		for _, w := range ws {
			if keys[w.Key] == nil {
				keys[w.Key] = map[string]string{}
			}
			if w.Del {
				delete(keys[w.Key], w.Field)
			} else {
				keys[w.Key][w.Field] = w.Value
			}
		}
	}
	var prev Message
	names := 0
	for {
		m, ok := g.Next()
		if !ok {
			break
		}
		if m.At < prev.At {
			t.Fatalf("message at %s after one at %s", m.At, prev.At)
		}
		apply(m.Writes)
		var env struct {
			V       int             `json:"v"`
			ID      string          `json:"id"`
			Topic   string          `json:"topic"`
			Type    string          `json:"type"`
			TS      float64         `json:"ts"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(m.Body, &env); err != nil || env.V != 1 || len(env.ID) != 32 || env.Topic != m.Channel || env.TS < 1.7e9 {
			t.Fatalf("envelope %s: %v", m.Body, err)
		}
		var p map[string]any
		if err := json.Unmarshal(env.Payload, &p); err != nil {
			t.Fatal(err)
		}
		rowOf := func() map[string]any {
			raw, ok := keys[MutationsKey("p:", m.Topology)][p["mutation_id"].(string)]
			if !ok {
				t.Fatalf("%s: no row for %v", m.Channel, p["mutation_id"])
			}
			var r map[string]any
			if err := json.Unmarshal([]byte(raw), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
		switch m.Kind {
		case KindEnqueued, KindApplying, KindApplied, KindFailed:
			if env.Type != m.Kind || m.Channel != "topology."+m.Topology+".mutation."+m.Kind {
				t.Fatalf("%s type %q", m.Channel, env.Type)
			}
			r := rowOf()
			want := map[string]string{KindEnqueued: "pending", KindApplying: "applying", KindApplied: "applied", KindFailed: "failed"}[m.Kind]
			if r["state"] != want || r["id"] != p["mutation_id"] || r["topology_id"] != m.Topology || r["op"] != p["op"] {
				t.Fatalf("%s: row %v", m.Channel, r)
			}
			switch m.Kind {
			case KindEnqueued:
				if _, ok := p["payload"].(map[string]any); !ok {
					t.Fatalf("enqueued payload %v is not an object", p["payload"])
				}
			case KindApplying:
				text, ok := p["payload"].(string)
				if !ok || !json.Valid([]byte(text)) {
					t.Fatalf("applying payload %v is not JSON text", p["payload"])
				}
			case KindApplied:
				if r["applied_at"] == nil {
					t.Fatalf("applied row without applied_at: %v", r)
				}
			case KindFailed:
				if !strings.HasPrefix(p["reason"].(string), "MutationError: ") || r["reason"] != p["reason"] {
					t.Fatalf("failed: payload %v row %v", p, r)
				}
				next, _ := g.Next()
				if next.Kind != KindStatus || next.Topology != m.Topology || !bytes.Contains(next.Body, []byte(`"state":"degraded"`)) {
					t.Fatalf("a failure is followed by %s %s, want the status change", next.Channel, next.Body)
				}
				prev = m
				m = next
				apply(m.Writes)
				_ = json.Unmarshal(m.Body, &env)
				_ = json.Unmarshal(env.Payload, &p)
			}
		}
		switch m.Kind {
		case KindStatus:
			if keys[TopologyKey("p:", m.Topology)]["status"] != p["state"] || p["state"] == nil {
				t.Fatalf("status %v but the key holds %q", p["state"], keys[TopologyKey("p:", m.Topology)]["status"])
			}
		case KindServiceAdded, KindServiceRemoved, KindServiceConfig:
			name := strings.TrimSuffix(strings.TrimPrefix(m.Channel, "decky."), "."+m.Kind)
			if !strings.Contains(name, ":") || p["decky_name"] != name || env.Type != "" {
				t.Fatalf("decky event %s %s", m.Channel, m.Body)
			}
			if m.Topology == "" && p["topology_id"] != nil || m.Topology != "" && p["topology_id"] != m.Topology {
				t.Fatalf("decky event %s topology_id %v, routed %q", m.Channel, p["topology_id"], m.Topology)
			}
			names++
		case KindTraffic:
			if _, ok := p["topology_id"]; ok || !strings.HasSuffix(m.Channel, ".traffic") || m.Topology != "" {
				t.Fatalf("traffic %s %s", m.Channel, m.Body)
			}
		}
		prev = m
	}
	if names == 0 {
		t.Fatal("no decky service events")
	}
	for id, s := range g.State() {
		model := State{Status: keys[TopologyKey("p:", id)]["status"], InFlight: map[string]string{}}
		for _, raw := range keys[MutationsKey("p:", id)] {
			var r struct{ ID, State string }
			_ = json.Unmarshal([]byte(raw), &r)
			if r.State == "pending" || r.State == "applying" {
				model.InFlight[r.ID] = r.State
			}
		}
		if d := Diff(s, model); d != nil {
			t.Errorf("%s: %+v", id, d)
		}
	}
}

// TestSameSeedSameTraffic: two runs with one seed send the same bytes
// (over a real Redis), another seed different ones.
func TestSameSeedSameTraffic(t *testing.T) {
	rdb := pkgRedis.Client(t)
	run := func(seed uint64) []string {
		cfg := testConfig([]string{"same-seed-1", "same-seed-2"}, redistest.UniqueID("seed")+":")
		cfg.Seed = seed
		cfg.Duration = 300 * time.Millisecond
		cfg.Rate = 300
		s, err := New(rdb, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		s.OnMessage = func(m Message) { out = append(out, m.Channel+" "+string(m.Body)) }
		if err := s.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b, c := run(7), run(7), run(8)
	if len(a) < 200 {
		t.Fatalf("only %d messages", len(a))
	}
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Error("the same seed gave different traffic")
	}
	if strings.Join(a, "\n") == strings.Join(c, "\n") {
		t.Error("another seed gave the same traffic")
	}
}
