package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxBatch bounds the messages sent in one pipeline when the run is
// behind its schedule (or in a burst).
const maxBatch = 256

// Stats is what a run sent.
type Stats struct {
	Seed       uint64           `json:"seed"`
	Topologies int              `json:"topologies"`
	Messages   int              `json:"messages"`
	ByKind     map[string]int   `json:"by_kind"`
	Writes     int              `json:"key_writes"`
	Burst      int              `json:"burst"`
	Elapsed    time.Duration    `json:"-"`
	Final      map[string]State `json:"-"`
}

// Sim publishes a Generator's messages to Redis, each after its key
// writes, paced to the messages' schedule.
type Sim struct {
	rdb redis.UniversalClient
	cfg Config
	// OnMessage, when set, is called with every message after it was
	// published (tests record the sequence with it).
	OnMessage func(Message)
}

// New returns a simulator writing to rdb.
func New(rdb redis.UniversalClient, cfg Config) (*Sim, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	return &Sim{rdb: rdb, cfg: cfg}, nil
}

// Config returns the simulator's configuration with defaults filled in.
func (s *Sim) Config() Config { return s.cfg }

// Setup (re)creates every simulated topology: status active and no
// mutation rows, then publishes the status change, as a producer would.
// The simulator owns these topologies; do not point it at real ones.
func (s *Sim) Setup(ctx context.Context) error {
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range s.cfg.Topologies {
			p.Del(ctx, MutationsKey(s.cfg.KeyPrefix, id))
			p.HSet(ctx, TopologyKey(s.cfg.KeyPrefix, id), "status", "active")
			body, _ := json.Marshal(map[string]any{
				"type":    "status",
				"ts":      json.Number(fmt.Sprintf("%.6f", float64(time.Now().UnixMicro())/1e6)),
				"payload": map[string]string{"state": "active", "reason": "simulator started"},
			})
			p.Publish(ctx, "topology."+id+".status", body)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sim: set up topologies: %w", err)
	}
	return nil
}

// Run publishes the traffic until the duration is over or ctx ends. It
// returns what it sent; the error is nil when the run ended by itself or
// by ctx.
func (s *Sim) Run(ctx context.Context) (*Stats, error) {
	cfg := s.cfg
	if cfg.Start.IsZero() {
		cfg.Start = time.Now()
	}
	g, err := NewGenerator(cfg)
	if err != nil {
		return nil, err
	}
	st := &Stats{Seed: cfg.Seed, Topologies: len(cfg.Topologies), ByKind: map[string]int{}, Burst: cfg.Burst}
	start := time.Now()
	var batch []Message
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// A batch is sent whole even when ctx ends (Ctrl-C): a key write
		// without its PUBLISH would be a difference no hub caused.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, err := s.rdb.Pipelined(pctx, func(p redis.Pipeliner) error {
			for _, m := range batch {
				for _, w := range m.Writes {
					if w.Del {
						p.HDel(pctx, w.Key, w.Field)
					} else {
						p.HSet(pctx, w.Key, w.Field, w.Value)
					}
				}
				p.Publish(pctx, m.Channel, m.Body)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, m := range batch {
			st.Messages++
			st.ByKind[m.Kind]++
			st.Writes += len(m.Writes)
			if s.OnMessage != nil {
				s.OnMessage(m)
			}
		}
		batch = batch[:0]
		return nil
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	done := func() (*Stats, error) {
		st.Elapsed = time.Since(start)
		st.Final = g.State()
		return st, nil
	}
	for {
		var m Message
		ok := ctx.Err() == nil // behind the schedule, no wait notices the end
		if ok {
			m, ok = g.Next()
		}
		if !ok {
			if err := flush(); err != nil && ctx.Err() == nil {
				return st, fmt.Errorf("sim: publish: %w", err)
			}
			return done()
		}
		if wait := time.Until(start.Add(m.At)); wait > 0 {
			if err := flush(); err != nil {
				if ctx.Err() != nil {
					return done()
				}
				return st, fmt.Errorf("sim: publish: %w", err)
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				// m is generated: send it, so that Final is what was sent.
				batch = append(batch, m)
				_ = flush()
				return done()
			case <-timer.C:
			}
		}
		batch = append(batch, m)
		if len(batch) >= maxBatch {
			if err := flush(); err != nil {
				if ctx.Err() != nil {
					return done()
				}
				return st, fmt.Errorf("sim: publish: %w", err)
			}
		}
	}
}

// ReadState reads a topology's state from its snapshot keys the way the
// hub's snapshot source does: the status field, and the rows in state
// pending or applying.
func ReadState(ctx context.Context, rdb redis.UniversalClient, prefix, id string) (State, error) {
	var status *redis.StringCmd
	var rows *redis.StringSliceCmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		status = p.HGet(ctx, TopologyKey(prefix, id), "status")
		rows = p.HVals(ctx, MutationsKey(prefix, id))
		return nil
	})
	if err != nil && err != redis.Nil {
		return State{}, err
	}
	s := State{Status: status.Val(), InFlight: map[string]string{}}
	for _, r := range rows.Val() {
		var m struct {
			ID    json.RawMessage `json:"id"`
			State string          `json:"state"`
		}
		if json.Unmarshal([]byte(r), &m) != nil {
			continue
		}
		if m.State == "pending" || m.State == "applying" {
			s.InFlight[idString(m.ID)] = m.State
		}
	}
	return s, nil
}

// idString reads a mutation id that may be a JSON string or number.
func idString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return strings.TrimSpace(string(raw))
}

// Diff lists how got differs from want, as "field: detail" strings; nil
// when they are equal.
func Diff(want, got State) []Difference {
	var out []Difference
	if want.Status != got.Status {
		out = append(out, Difference{Field: "status", Want: want.Status, Got: got.Status})
	}
	ids := map[string]bool{}
	for id := range want.InFlight {
		ids[id] = true
	}
	for id := range got.InFlight {
		ids[id] = true
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	for _, id := range sorted {
		w, g := want.InFlight[id], got.InFlight[id]
		if w != g {
			out = append(out, Difference{Field: "in_flight[" + id + "]", Want: orNone(w), Got: orNone(g)})
		}
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "(absent)"
	}
	return s
}

// Difference is one field where a client's state is not Redis's.
type Difference struct {
	Client    string `json:"client,omitempty"`
	Transport string `json:"transport,omitempty"`
	Topology  string `json:"topology,omitempty"`
	Field     string `json:"field"`
	Want      string `json:"want"`
	Got       string `json:"got"`
}

// WriteSummary prints what a run sent, for people.
func (st *Stats) WriteSummary(w io.Writer) {
	kinds := make([]string, 0, len(st.ByKind))
	for k := range st.ByKind {
		kinds = append(kinds, k)
	}
	order := []string{KindEnqueued, KindApplying, KindApplied, KindFailed, KindStatus, KindServiceAdded, KindServiceRemoved, KindServiceConfig, KindTraffic}
	sort.Slice(kinds, func(i, j int) bool {
		return slices.Index(order, kinds[i]) < slices.Index(order, kinds[j])
	})
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, st.ByKind[k]))
	}
	secs := st.Elapsed.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(st.Messages) / secs
	}
	fmt.Fprintf(w, "sent %d messages in %.1fs (%.0f/s) to %d topologies, seed %d: %s\n",
		st.Messages, secs, rate, st.Topologies, st.Seed, strings.Join(parts, ", "))
	fmt.Fprintf(w, "wrote %d snapshot-key changes, each before its PUBLISH", st.Writes)
	if st.Burst > 0 {
		fmt.Fprintf(w, "; burst of %d events", st.Burst)
	}
	fmt.Fprintln(w)
	if len(st.Final) > 0 {
		ids := make([]string, 0, len(st.Final))
		for id := range st.Final {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		parts = parts[:0]
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf("%s %s/%d in flight", id, st.Final[id].Status, len(st.Final[id].InFlight)))
		}
		fmt.Fprintf(w, "at the end: %s\n", strings.Join(parts, ", "))
	}
}
