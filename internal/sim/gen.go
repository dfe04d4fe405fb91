// Package sim generates producer traffic modelled on what the platform's
// producers publish (docs/protocol.md §3, "Events producers publish"): mutation lifecycles with their
// snapshot keys, decky service events and a flood of unrouted decky
// traffic. It also holds the soak checker, which follows the simulated
// topologies over WebSocket and SSE like real editors and compares what
// they end up with against Redis.
//
// The generator is deterministic: the same Config (seed, topologies,
// rates, duration, burst and start time) gives the same messages, byte
// for byte. Only the pacing against the wall clock is not.
package sim

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"
)

// Defaults of Config's zero values.
const (
	DefaultKeyPrefix   = "topohub:"
	DefaultMaxInFlight = 6
	// KeepFinished is how many applied or failed rows stay in a
	// topology's mutations hash before the oldest is deleted, so a long
	// soak does not grow the hash (and every snapshot read) without bound.
	KeepFinished = 32
)

// Config describes the traffic.
type Config struct {
	// Topologies are the simulated topology ids. Required.
	Topologies []string
	// Rate is topology events (mutation lifecycle steps, status changes
	// and decky service events) per second and topology. Zero means 5.
	Rate float64
	// TrafficRate is decky.<name>.traffic events per second in all; they
	// carry no topology_id, so the hub drops them unrouted. Zero means
	// none.
	TrafficRate float64
	// Duration is how long the traffic lasts; zero means until the
	// context ends.
	Duration time.Duration
	// Seed makes the traffic reproducible.
	Seed uint64
	// FailShare is the share of mutations that end failed (each followed
	// by a status change to degraded) rather than applied. 0 to 1.
	FailShare float64
	// KeyPrefix prefixes the snapshot keys. Zero means "topohub:".
	KeyPrefix string
	// Burst is a number of extra topology events sent at once, all to
	// Topologies[0], at BurstAt: enough of them overflow the queues of
	// that topology's clients and force resync snapshots.
	Burst int
	// BurstAt is when the burst starts; zero means half the duration (or
	// 1 s without a duration).
	BurstAt time.Duration
	// MaxInFlight bounds the pending and applying mutations of one
	// topology. Zero means 6.
	MaxInFlight int
	// Start is the time origin of the messages' timestamps: a message
	// scheduled at offset d carries ts Start+d. Zero means time.Now() when
	// the run starts.
	Start time.Time
}

func (c *Config) normalize() error {
	if len(c.Topologies) == 0 {
		return fmt.Errorf("sim: no topologies")
	}
	seen := map[string]bool{}
	for _, id := range c.Topologies {
		if !validID(id) {
			return fmt.Errorf("sim: topology id %q is empty, over 128 bytes or holds '.', '*', '>' or white space", id)
		}
		if seen[id] {
			return fmt.Errorf("sim: topology %q given twice", id)
		}
		seen[id] = true
	}
	if c.Rate == 0 {
		c.Rate = 5
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("sim: rate %v", c.Rate)
	}
	if c.TrafficRate < 0 || math.IsNaN(c.TrafficRate) || math.IsInf(c.TrafficRate, 0) {
		return fmt.Errorf("sim: traffic rate %v", c.TrafficRate)
	}
	if c.FailShare < 0 || c.FailShare > 1 || math.IsNaN(c.FailShare) {
		return fmt.Errorf("sim: fail share %v, want 0 to 1", c.FailShare)
	}
	if c.Duration < 0 || c.Burst < 0 || c.BurstAt < 0 {
		return fmt.Errorf("sim: negative duration or burst")
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.BurstAt == 0 {
		c.BurstAt = time.Second
		if c.Duration > 0 {
			c.BurstAt = c.Duration / 2
		}
	}
	return nil
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		switch r {
		case '.', '*', '>', ' ', '\t', '\n', '\r', '\v', '\f':
			return false
		}
	}
	return true
}

// TopologyKey is the hash holding a topology's status (docs/protocol.md §4).
func TopologyKey(prefix, id string) string { return prefix + "topology:" + id }

// MutationsKey is the hash holding a topology's mutation rows.
func MutationsKey(prefix, id string) string { return prefix + "topology:" + id + ":mutations" }

// Kinds of messages, as counted in Stats.
const (
	KindEnqueued       = "enqueued"
	KindApplying       = "applying"
	KindApplied        = "applied"
	KindFailed         = "failed"
	KindStatus         = "status"
	KindServiceAdded   = "service_added"
	KindServiceRemoved = "service_removed"
	KindServiceConfig  = "service_config_changed"
	KindTraffic        = "traffic"
)

// Write is one snapshot-key change a producer makes before it publishes.
type Write struct {
	Del   bool   // HDEL Key Field (instead of HSET)
	Key   string // a hash
	Field string
	Value string
}

// Message is one PUBLISH and the key writes that precede it.
type Message struct {
	At       time.Duration // offset from the start of the run
	Kind     string
	Topology string // the topology the hub must route it to; "" when it must drop it unrouted
	Writes   []Write
	Channel  string
	Body     []byte
}

// State is a topology's state as its snapshot keys hold it.
type State struct {
	Status   string
	InFlight map[string]string // mutation id -> "pending" or "applying"
}

// Generator produces the messages of one run in order.
type Generator struct {
	cfg      Config
	rng      *rand.Rand // topology events and the burst
	traffic  *rand.Rand // the traffic flood, separate so --traffic-rate leaves the rest unchanged
	topos    []*topo
	next     int64 // index of the next topology event
	nextT    int64 // index of the next traffic event
	burstOut int   // burst events emitted
	followUp []Message
	pool     []string // decky names for traffic
}

type topo struct {
	id       string
	status   string
	pending  []*mutation // oldest first
	applying []*mutation
	finished []string // finished mutation ids still in the hash, oldest first
	deckies  []*decky
	mutN     int
}

type mutation struct {
	id, op      string
	request     json.RawMessage
	requestedAt string
}

type decky struct {
	name     string
	services []string
}

var (
	ops      = []string{"add_decky", "remove_decky", "update_service", "connect_deckies", "disconnect_deckies", "set_decky_image"}
	services = []string{"ssh", "http", "https", "smb", "rdp", "ftp", "telnet", "mysql", "redis", "ldap"}
	roles    = []string{"web", "db", "dc", "mail", "files", "jump"}
	images   = []string{"debian:12", "ubuntu:24.04", "alpine:3.20", "windows-2019-lite"}
	failures = []string{
		"MutationError: decky %s did not answer the agent in 30s",
		"MutationError: image pull failed for %s",
		"MutationError: port conflict on %s",
		"MutationError: network overlap for %s",
	}
)

// NewGenerator returns the generator for cfg. cfg.Start must be set (Run
// sets it when it is zero).
func NewGenerator(cfg Config) (*Generator, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	g := &Generator{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, 0x746f706f687562)),
		traffic: rand.New(rand.NewPCG(cfg.Seed, 0x74726166666963)),
	}
	for _, id := range cfg.Topologies {
		t := &topo{id: id, status: "active"}
		host := g.hex(g.rng, 4)
		for i := range 3 {
			d := &decky{name: fmt.Sprintf("host-%s:%s%d", host, roles[g.rng.IntN(len(roles))], i+1)}
			d.services = []string{services[g.rng.IntN(len(services))]}
			t.deckies = append(t.deckies, d)
		}
		g.topos = append(g.topos, t)
	}
	for range 16 {
		g.pool = append(g.pool, fmt.Sprintf("host-%s:%s%d", g.hex(g.traffic, 4), roles[g.traffic.IntN(len(roles))], 1+g.traffic.IntN(9)))
	}
	return g, nil
}

// Config returns the generator's configuration with defaults filled in.
func (g *Generator) Config() Config { return g.cfg }

// State returns the state every topology's snapshot keys hold after the
// messages generated so far.
func (g *Generator) State() map[string]State {
	out := make(map[string]State, len(g.topos))
	for _, t := range g.topos {
		s := State{Status: t.status, InFlight: map[string]string{}}
		for _, m := range t.pending {
			s.InFlight[m.id] = "pending"
		}
		for _, m := range t.applying {
			s.InFlight[m.id] = "applying"
		}
		out[t.id] = s
	}
	return out
}

func (g *Generator) eventAt(k int64) time.Duration {
	return time.Duration(float64(k) / (g.cfg.Rate * float64(len(g.topos))) * float64(time.Second))
}

func (g *Generator) trafficAt(k int64) time.Duration {
	return time.Duration(float64(k) / g.cfg.TrafficRate * float64(time.Second))
}

func (g *Generator) inTime(at time.Duration) bool {
	return g.cfg.Duration == 0 || at < g.cfg.Duration
}

// Next returns the next message in schedule order, and false once the
// duration is over.
func (g *Generator) Next() (Message, bool) {
	if len(g.followUp) > 0 {
		m := g.followUp[0]
		g.followUp = g.followUp[1:]
		return m, true
	}
	const never = time.Duration(math.MaxInt64)
	evAt, trAt, buAt := never, never, never
	if g.cfg.Rate > 0 {
		if at := g.eventAt(g.next); g.inTime(at) {
			evAt = at
		}
	}
	if g.cfg.TrafficRate > 0 {
		if at := g.trafficAt(g.nextT); g.inTime(at) {
			trAt = at
		}
	}
	if g.burstOut < g.cfg.Burst && g.inTime(g.cfg.BurstAt) {
		buAt = g.cfg.BurstAt
	}
	switch {
	case buAt != never && buAt <= evAt && buAt <= trAt:
		g.burstOut++
		return g.topologyEvent(g.topos[0], buAt), true
	case evAt != never && evAt <= trAt:
		t := g.topos[g.next%int64(len(g.topos))]
		g.next++
		return g.topologyEvent(t, evAt), true
	case trAt != never:
		g.nextT++
		return g.trafficEvent(trAt), true
	}
	return Message{}, false
}

func (g *Generator) hex(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return hex.EncodeToString(b)
}

func (g *Generator) uuid() string {
	h := g.hex(g.rng, 16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-" + h[16:20] + "-" + h[20:32]
}

func (g *Generator) ts(at time.Duration) time.Time { return g.cfg.Start.Add(at).UTC() }

// envelope builds a producer's event envelope.
func (g *Generator) envelope(r *rand.Rand, channel, typ string, at time.Duration, payload any) []byte {
	p, err := json.Marshal(payload)
	if err != nil {
		panic(err) // payloads are built here from plain values
	}
	micro := g.ts(at).UnixMicro()
	body, err := json.Marshal(struct {
		V       int             `json:"v"`
		ID      string          `json:"id"`
		Topic   string          `json:"topic"`
		Type    string          `json:"type"`
		TS      json.Number     `json:"ts"`
		Payload json.RawMessage `json:"payload"`
	}{1, g.hex(r, 16), channel, typ, json.Number(strconv.FormatFloat(float64(micro)/1e6, 'f', 6, 64)), p})
	if err != nil {
		panic(err)
	}
	return body
}

// isoTime is how the legacy API writes requested_at and applied_at.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000+00:00") }

type row struct {
	ID          string          `json:"id"`
	TopologyID  string          `json:"topology_id"`
	Op          string          `json:"op"`
	Payload     json.RawMessage `json:"payload"`
	State       string          `json:"state"`
	RequestedAt string          `json:"requested_at"`
	AppliedAt   *string         `json:"applied_at"`
	Reason      *string         `json:"reason"`
}

func (g *Generator) rowWrite(t *topo, m *mutation, state string, appliedAt, reason *string) Write {
	b, err := json.Marshal(row{m.id, t.id, m.op, m.request, state, m.requestedAt, appliedAt, reason})
	if err != nil {
		panic(err)
	}
	return Write{Key: MutationsKey(g.cfg.KeyPrefix, t.id), Field: m.id, Value: string(b)}
}

// topologyEvent is one step of topology t: a lifecycle step or a decky
// service event.
func (g *Generator) topologyEvent(t *topo, at time.Duration) Message {
	inFlight := len(t.pending) + len(t.applying)
	var choices []func(*topo, time.Duration) Message
	if inFlight < g.cfg.MaxInFlight {
		choices = append(choices, g.enqueue, g.enqueue)
	}
	if len(t.pending) > 0 {
		choices = append(choices, g.startApplying)
	}
	if len(t.applying) > 0 {
		choices = append(choices, g.finish, g.finish)
	}
	if g.rng.Float64() < 0.25 || len(choices) == 0 {
		return g.serviceEvent(t, at)
	}
	return choices[g.rng.IntN(len(choices))](t, at)
}

func (g *Generator) enqueue(t *topo, at time.Duration) Message {
	t.mutN++
	op := ops[g.rng.IntN(len(ops))]
	d := t.deckies[g.rng.IntN(len(t.deckies))]
	req, _ := json.Marshal(map[string]any{
		"decky_name": d.name,
		"image":      images[g.rng.IntN(len(images))],
		"services":   []string{services[g.rng.IntN(len(services))]},
		"seq":        t.mutN,
	})
	m := &mutation{id: g.uuid(), op: op, request: req, requestedAt: isoTime(g.ts(at))}
	t.pending = append(t.pending, m)
	ch := "topology." + t.id + ".mutation.enqueued"
	return Message{
		At: at, Kind: KindEnqueued, Topology: t.id, Channel: ch,
		Writes: []Write{g.rowWrite(t, m, "pending", nil, nil)},
		Body: g.envelope(g.rng, ch, "enqueued", at, struct {
			MutationID string          `json:"mutation_id"`
			Op         string          `json:"op"`
			Payload    json.RawMessage `json:"payload"`
		}{m.id, m.op, m.request}),
	}
}

func (g *Generator) startApplying(t *topo, at time.Duration) Message {
	m := t.pending[0]
	t.pending = t.pending[1:]
	t.applying = append(t.applying, m)
	ch := "topology." + t.id + ".mutation.applying"
	return Message{
		At: at, Kind: KindApplying, Topology: t.id, Channel: ch,
		Writes: []Write{g.rowWrite(t, m, "applying", nil, nil)},
		// The producers send the request as JSON text here.
		Body: g.envelope(g.rng, ch, "applying", at, struct {
			MutationID string `json:"mutation_id"`
			Op         string `json:"op"`
			Payload    string `json:"payload"`
		}{m.id, m.op, string(m.request)}),
	}
}

func (g *Generator) finish(t *topo, at time.Duration) Message {
	m := t.applying[0]
	t.applying = t.applying[1:]
	fail := g.rng.Float64() < g.cfg.FailShare
	var writes []Write
	var msg Message
	if fail {
		reason := fmt.Sprintf(failures[g.rng.IntN(len(failures))], t.deckies[g.rng.IntN(len(t.deckies))].name)
		writes = append(writes, g.rowWrite(t, m, "failed", nil, &reason))
		ch := "topology." + t.id + ".mutation.failed"
		msg = Message{At: at, Kind: KindFailed, Topology: t.id, Channel: ch,
			Body: g.envelope(g.rng, ch, "failed", at, struct {
				MutationID string `json:"mutation_id"`
				Op         string `json:"op"`
				Reason     string `json:"reason"`
			}{m.id, m.op, reason})}
		g.followUp = append(g.followUp, g.statusChange(t, at, "degraded", "mutation "+m.id+" failed"))
	} else {
		applied := isoTime(g.ts(at))
		writes = append(writes, g.rowWrite(t, m, "applied", &applied, nil))
		ch := "topology." + t.id + ".mutation.applied"
		msg = Message{At: at, Kind: KindApplied, Topology: t.id, Channel: ch,
			Body: g.envelope(g.rng, ch, "applied", at, struct {
				MutationID string `json:"mutation_id"`
				Op         string `json:"op"`
			}{m.id, m.op})}
		if t.status != "active" {
			g.followUp = append(g.followUp, g.statusChange(t, at, "active", "mutation "+m.id+" applied"))
		}
	}
	t.finished = append(t.finished, m.id)
	for len(t.finished) > KeepFinished {
		writes = append(writes, Write{Del: true, Key: MutationsKey(g.cfg.KeyPrefix, t.id), Field: t.finished[0]})
		t.finished = t.finished[1:]
	}
	msg.Writes = writes
	return msg
}

func (g *Generator) statusChange(t *topo, at time.Duration, state, reason string) Message {
	t.status = state
	ch := "topology." + t.id + ".status"
	return Message{
		At: at, Kind: KindStatus, Topology: t.id, Channel: ch,
		Writes: []Write{{Key: TopologyKey(g.cfg.KeyPrefix, t.id), Field: "status", Value: state}},
		Body: g.envelope(g.rng, ch, "status", at, struct {
			State  string `json:"state"`
			Reason string `json:"reason"`
		}{state, reason}),
	}
}

// serviceEvent is a decky service change. A few name no topology
// (topology_id null), as producers do for deckies outside any topology:
// the hub must drop those unrouted.
func (g *Generator) serviceEvent(t *topo, at time.Duration) Message {
	d := t.deckies[g.rng.IntN(len(t.deckies))]
	var topology any = t.id
	routed := t.id
	if g.rng.IntN(20) == 0 {
		topology, routed = nil, ""
	}
	var kind string
	var payload any
	switch r := g.rng.IntN(3); {
	case r == 0 && len(d.services) > 1:
		i := g.rng.IntN(len(d.services))
		svc := d.services[i]
		d.services = append(d.services[:i:i], d.services[i+1:]...)
		kind = KindServiceRemoved
		payload = servicePayload{d.name, svc, topology, append([]string{}, d.services...)}
	case r == 2:
		svc := d.services[g.rng.IntN(len(d.services))]
		kind = KindServiceConfig
		payload = struct {
			DeckyName     string         `json:"decky_name"`
			ServiceName   string         `json:"service_name"`
			TopologyID    any            `json:"topology_id"`
			ServiceConfig map[string]any `json:"service_config"`
			Recreated     bool           `json:"recreated"`
		}{d.name, svc, topology, map[string]any{"port": 1024 + g.rng.IntN(30000), "banner": "OpenSSH_9." + strconv.Itoa(g.rng.IntN(9))}, g.rng.IntN(2) == 0}
	default:
		svc := services[g.rng.IntN(len(services))]
		if !contains(d.services, svc) {
			d.services = append(d.services, svc)
		}
		kind = KindServiceAdded
		payload = servicePayload{d.name, svc, topology, append([]string{}, d.services...)}
	}
	ch := "decky." + d.name + "." + kind
	return Message{At: at, Kind: kind, Topology: routed, Channel: ch, Body: g.envelope(g.rng, ch, "", at, payload)}
}

type servicePayload struct {
	DeckyName   string   `json:"decky_name"`
	ServiceName string   `json:"service_name"`
	TopologyID  any      `json:"topology_id"`
	Services    []string `json:"services"`
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// trafficEvent is one of the high-volume decky traffic reports: no
// topology_id, never routed.
func (g *Generator) trafficEvent(at time.Duration) Message {
	r := g.traffic
	name := g.pool[r.IntN(len(g.pool))]
	ch := "decky." + name + ".traffic"
	payload := struct {
		DeckyName string `json:"decky_name"`
		SrcIP     string `json:"src_ip"`
		DstPort   int    `json:"dst_port"`
		Proto     string `json:"proto"`
		Bytes     int    `json:"bytes"`
		Packets   int    `json:"packets"`
	}{name, fmt.Sprintf("10.%d.%d.%d", r.IntN(256), r.IntN(256), 1+r.IntN(254)), []int{22, 80, 443, 445, 3389}[r.IntN(5)], "tcp", 40 + r.IntN(9000), 1 + r.IntN(20)}
	return Message{At: at, Kind: KindTraffic, Channel: ch, Body: g.envelope(r, ch, "traffic", at, payload)}
}
