package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// MarkerEvent is the event name of the checker's sync markers, published
// on topology.<id>.sim.marker once the traffic is over: a client that has
// seen one has seen (or been resynced past) everything before it.
const MarkerEvent = "sim.marker"

// wsTopologiesPerConn keeps a checker WebSocket under the hub's
// subscription limit (100) and the control rate's burst (40).
const wsTopologiesPerConn = 30

// CheckConfig configures the soak checker.
type CheckConfig struct {
	// Hub is the hub's base URL, e.g. http://127.0.0.1:8080. Required.
	Hub string
	// BasePath prefixes the API routes. Zero means /api/v1.
	BasePath string
	// Token is a JWT every client uses (they then share one user and its
	// connection cap); or Secret, to sign one token per client, each its
	// own user.
	Token  string
	Secret []byte
	// Claims of signed tokens; zero values mean decnet,
	// decnet-dashboard, access, viewer, and a TTL of one hour.
	Issuer, Audience, Type, Role string
	TokenTTL                     time.Duration
	// Topologies to follow. Required.
	Topologies []string
	// Clients is the number of clients per transport: that many
	// WebSocket connections each follow every topology, and that many
	// SSE streams follow each topology. Zero means 1.
	Clients int
	// WebSocket and SSE choose the transports; both false means both.
	WebSocket, SSE bool
	// Redis holds the snapshot keys the clients are compared with.
	Redis     redis.UniversalClient
	KeyPrefix string
	// ClientRate, when positive, makes every client a slow editor that
	// takes at most that many frames per second (a busy browser tab):
	// with a burst it makes the hub's queues overflow for certain.
	ClientRate float64
	// Settle bounds the wait for every client to catch up after the
	// traffic. Zero means 30 s.
	Settle time.Duration
	// Logger receives connection trouble. Zero means discard.
	Logger *slog.Logger
}

// Report is the checker's result.
type Report struct {
	OK          bool          `json:"ok"`
	Topologies  int           `json:"topologies"`
	Clients     int           `json:"clients"`
	Events      int           `json:"events"`
	Snapshots   int           `json:"snapshots"`
	Resyncs     int           `json:"resyncs"`
	Reconnects  int           `json:"reconnects"`
	Differing   int           `json:"clients_differing"`
	Differences []Difference  `json:"differences"`
	Anomalies   []string      `json:"anomalies"`
	Sent        *Stats        `json:"sent,omitempty"`
	Settled     time.Duration `json:"-"`
}

// maxListed bounds the differences and anomalies a report lists.
const maxListed = 50

// Checker follows topologies with WebSocket and SSE clients, building each
// one's state as the legacy editor did.
type Checker struct {
	cfg    CheckConfig
	runID  string
	http   *http.Client
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	clients []*client

	mu      sync.Mutex
	markers map[string]bool // nonces published
}

type client struct {
	c         *Checker
	name      string
	transport string
	token     string
	topos     []string

	mu         sync.Mutex
	views      map[string]*view
	events     int
	snapshots  int
	resyncs    int
	reconnects int
	anomalies  []string
	nAnomalies int
	fatal      string
	lastErr    string // the last connection trouble, for a failed start
	slow       *rate.Limiter
}

// pace holds a slow client back for n frames; false when it is closing.
func (cl *client) pace(ctx context.Context, n int) bool {
	if cl.slow == nil {
		return true
	}
	for n > 0 {
		k := min(n, cl.slow.Burst())
		if cl.slow.WaitN(ctx, k) != nil {
			return false
		}
		n -= k
	}
	return true
}

// view is one client's picture of one topology.
type view struct {
	state    State
	snapshot bool
	epoch    string
	seq      uint64
	cursor   string
	synced   bool // saw a marker published after the traffic
}

// StartChecker connects the clients and returns once every one of them
// has its first snapshot of every topology it follows.
func StartChecker(ctx context.Context, cfg CheckConfig) (*Checker, error) {
	if cfg.Hub == "" || len(cfg.Topologies) == 0 || cfg.Redis == nil {
		return nil, errors.New("check: a hub URL, topologies and Redis are required")
	}
	if cfg.Token == "" && len(cfg.Secret) == 0 {
		return nil, errors.New("check: a token or a secret is required")
	}
	cfg.Hub = strings.TrimRight(cfg.Hub, "/")
	if cfg.BasePath == "" {
		cfg.BasePath = "/api/v1"
	}
	cfg.BasePath = "/" + strings.Trim(cfg.BasePath, "/")
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if !cfg.WebSocket && !cfg.SSE {
		cfg.WebSocket, cfg.SSE = true, true
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = DefaultKeyPrefix
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 30 * time.Second
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	cctx, cancel := context.WithCancel(context.Background())
	c := &Checker{
		cfg: cfg, runID: hex.EncodeToString(b), log: cfg.Logger, ctx: cctx, cancel: cancel,
		http:    &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		markers: map[string]bool{},
	}
	for i := range cfg.Clients {
		if cfg.WebSocket {
			for j := 0; j < len(cfg.Topologies); j += wsTopologiesPerConn {
				topos := cfg.Topologies[j:min(j+wsTopologiesPerConn, len(cfg.Topologies))]
				c.add(fmt.Sprintf("ws-%d.%d", i+1, j/wsTopologiesPerConn+1), "ws", topos)
			}
		}
		if cfg.SSE {
			for _, id := range cfg.Topologies {
				c.add(fmt.Sprintf("sse-%d/%s", i+1, id), "sse", []string{id})
			}
		}
	}
	for _, cl := range c.clients {
		tok, err := c.tokenFor(cl.name)
		if err != nil {
			cancel()
			return nil, err
		}
		cl.token = tok
	}
	for _, cl := range c.clients {
		if cl.transport == "ws" {
			c.wg.Go(cl.runWS)
		} else {
			c.wg.Go(cl.runSSE)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready, fatal := c.ready()
		if fatal != "" {
			c.Close()
			return nil, errors.New("check: " + fatal)
		}
		if ready {
			return c, nil
		}
		if time.Now().After(deadline) {
			c.Close()
			msg := "check: the clients did not all get their first snapshot within 30s"
			for _, cl := range c.clients {
				if cl.lastErr != "" {
					msg += " (" + cl.name + ": " + cl.lastErr + ")"
					break
				}
			}
			return nil, errors.New(msg)
		}
		select {
		case <-ctx.Done():
			c.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
}

func (c *Checker) add(name, transport string, topos []string) {
	cl := &client{c: c, name: name, transport: transport, topos: topos, views: map[string]*view{}}
	if r := c.cfg.ClientRate; r > 0 {
		cl.slow = rate.NewLimiter(rate.Limit(r), max(1, int(r/20)))
	}
	for _, id := range topos {
		cl.views[id] = &view{}
	}
	c.clients = append(c.clients, cl)
}

func (c *Checker) tokenFor(name string) (string, error) {
	if c.cfg.Token != "" {
		return c.cfg.Token, nil
	}
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	user := "topohub-sim-" + c.runID + "-" + name
	now := time.Now()
	claims := jwt.MapClaims{
		"sub": user, "uuid": user, "role": def(c.cfg.Role, "viewer"),
		"iss": def(c.cfg.Issuer, "decnet"), "aud": def(c.cfg.Audience, "decnet-dashboard"), "typ": def(c.cfg.Type, "access"),
		"iat": now.Unix(), "exp": now.Add(c.cfg.TokenTTL).Unix(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(c.cfg.Secret)
}

func (c *Checker) ready() (bool, string) {
	all := true
	for _, cl := range c.clients {
		cl.mu.Lock()
		if cl.fatal != "" {
			f := cl.name + ": " + cl.fatal
			cl.mu.Unlock()
			return false, f
		}
		for _, v := range cl.views {
			if !v.snapshot {
				all = false
			}
		}
		cl.mu.Unlock()
	}
	return all, ""
}

// Close disconnects every client.
func (c *Checker) Close() {
	c.cancel()
	c.wg.Wait()
	c.http.CloseIdleConnections()
}

// Finish publishes sync markers until every client has seen one (or the
// settle time passes), compares every client's state with Redis,
// disconnects the clients and reports.
func (c *Checker) Finish(ctx context.Context) (*Report, error) {
	defer c.Close()
	start := time.Now()
	deadline := start.Add(c.cfg.Settle)
	for round := 0; ; round++ {
		if err := c.publishMarkers(ctx, fmt.Sprintf("%s-%d", c.runID, round)); err != nil {
			return nil, err
		}
		next := time.Now().Add(time.Second)
		for !c.synced() && time.Now().Before(next) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(10 * time.Millisecond): // poll interval
			}
		}
		if c.synced() || time.Now().After(deadline) {
			break
		}
	}
	settled := time.Since(start)
	want := map[string]State{}
	for _, id := range c.cfg.Topologies {
		s, err := ReadState(ctx, c.cfg.Redis, c.cfg.KeyPrefix, id)
		if err != nil {
			return nil, fmt.Errorf("check: read %s from Redis: %w", id, err)
		}
		want[id] = s
	}
	c.cancel()
	c.wg.Wait()

	r := &Report{Topologies: len(c.cfg.Topologies), Clients: len(c.clients), Settled: settled, Differences: []Difference{}, Anomalies: []string{}}
	nAnomalies := 0
	for _, cl := range c.clients {
		cl.mu.Lock()
		r.Events += cl.events
		r.Snapshots += cl.snapshots
		r.Resyncs += cl.resyncs
		r.Reconnects += cl.reconnects
		nAnomalies += cl.nAnomalies
		for _, a := range cl.anomalies {
			if len(r.Anomalies) < maxListed {
				r.Anomalies = append(r.Anomalies, cl.name+": "+a)
			}
		}
		differs := false
		add := func(d Difference) {
			differs = true
			d.Client, d.Transport = cl.name, cl.transport
			if len(r.Differences) < maxListed {
				r.Differences = append(r.Differences, d)
			}
		}
		if cl.fatal != "" {
			add(Difference{Field: "connection", Want: "open", Got: cl.fatal})
		}
		ids := make([]string, 0, len(cl.views))
		for id := range cl.views {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			v := cl.views[id]
			if !v.synced {
				add(Difference{Topology: id, Field: "sync", Want: "a marker within " + c.cfg.Settle.String(), Got: "none (last cursor " + orNone(v.cursor) + ")"})
			}
			for _, d := range Diff(want[id], v.state) {
				d.Topology = id
				add(d)
			}
		}
		if differs {
			r.Differing++
		}
		cl.mu.Unlock()
	}
	if nAnomalies > len(r.Anomalies) {
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("(%d more)", nAnomalies-len(r.Anomalies)))
	}
	r.OK = r.Differing == 0 && nAnomalies == 0
	return r, nil
}

func (c *Checker) publishMarkers(ctx context.Context, nonce string) error {
	c.mu.Lock()
	c.markers[nonce] = true
	c.mu.Unlock()
	body := `{"type":"marker","payload":{"nonce":"` + nonce + `"}}`
	_, err := c.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range c.cfg.Topologies {
			p.Publish(ctx, "topology."+id+"."+MarkerEvent, body)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check: publish markers: %w", err)
	}
	return nil
}

func (c *Checker) isMarker(nonce string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.markers[nonce]
}

func (c *Checker) synced() bool {
	for _, cl := range c.clients {
		cl.mu.Lock()
		for _, v := range cl.views {
			if !v.synced && cl.fatal == "" {
				cl.mu.Unlock()
				return false
			}
		}
		cl.mu.Unlock()
	}
	return true
}

func (cl *client) anomaly(format string, args ...any) {
	cl.nAnomalies++
	if len(cl.anomalies) < 10 {
		cl.anomalies = append(cl.anomalies, fmt.Sprintf(format, args...))
	}
}

// handle applies one event of topology id to the client's view, as the
// legacy editor did, and checks what the contract promises about it.
func (cl *client) handle(id, name, cursor string, data []byte) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	v := cl.views[id]
	if v == nil {
		cl.anomaly("event %s for %q, which it does not follow", name, id)
		return
	}
	epoch, seqText, ok := strings.Cut(cursor, "-")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if !ok || err != nil {
		cl.anomaly("%s: %s with cursor %q", id, name, cursor)
	}
	if epoch != v.epoch {
		v.epoch, v.seq = epoch, 0 // a new hub process
	}
	v.cursor = cursor
	if name == "snapshot" {
		var s struct {
			TopologyID string `json:"topology_id"`
			Status     string `json:"status"`
			InFlight   []struct {
				ID    json.RawMessage `json:"id"`
				State string          `json:"state"`
			} `json:"in_flight"`
			Resync bool `json:"resync"`
		}
		if err := json.Unmarshal(data, &s); err != nil || s.TopologyID != id {
			cl.anomaly("%s: bad snapshot %.200s", id, data)
			return
		}
		if seq < v.seq {
			cl.anomaly("%s: snapshot cursor %s is older than the event before it", id, cursor)
		}
		v.seq = seq
		v.snapshot = true
		v.state = State{Status: s.Status, InFlight: map[string]string{}}
		for _, m := range s.InFlight {
			v.state.InFlight[idString(m.ID)] = m.State
		}
		cl.snapshots++
		if s.Resync {
			cl.resyncs++
		}
		return
	}
	cl.events++
	var ev struct {
		Topic   string          `json:"topic"`
		Type    *string         `json:"type"`
		TS      *float64        `json:"ts"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(data, &ev); err != nil || ev.Type == nil || ev.TS == nil || len(ev.Payload) == 0 || ev.Payload[0] != '{' {
		cl.anomaly("%s: %s data is not {topic,type,ts,payload}: %.200s", id, name, data)
		return
	}
	if !v.snapshot {
		cl.anomaly("%s: %s before the first snapshot", id, name)
	}
	if seq <= v.seq {
		cl.anomaly("%s: %s cursor %s does not follow %d", id, name, cursor, v.seq)
	}
	v.seq = max(v.seq, seq)
	var p struct {
		MutationID json.RawMessage `json:"mutation_id"`
		State      *string         `json:"state"`
		TopologyID *string         `json:"topology_id"`
		Nonce      string          `json:"nonce"`
	}
	_ = json.Unmarshal(ev.Payload, &p)
	head, rest, _ := strings.Cut(ev.Topic, ".")
	tid, _, _ := strings.Cut(rest, ".")
	switch {
	case head == "topology" && tid != id,
		head == "decky" && (p.TopologyID == nil || *p.TopologyID != id):
		cl.anomaly("%s: %s misrouted here: %.200s", id, ev.Topic, data)
		return
	}
	switch name {
	case "status":
		if p.State != nil {
			v.state.Status = *p.State
		}
	case "mutation.enqueued":
		v.state.InFlight[idString(p.MutationID)] = "pending"
	case "mutation.applying":
		v.state.InFlight[idString(p.MutationID)] = "applying"
	case "mutation.applied", "mutation.failed":
		delete(v.state.InFlight, idString(p.MutationID))
	case MarkerEvent:
		if cl.c.isMarker(p.Nonce) {
			v.synced = true
		}
	}
}

func (cl *client) setFatal(msg string) {
	cl.mu.Lock()
	cl.fatal = msg
	cl.mu.Unlock()
}

// trouble notes a connection failure the client will retry.
func (cl *client) trouble(what string, err error) {
	cl.mu.Lock()
	repeated := cl.lastErr == what+": "+err.Error()
	cl.lastErr = what + ": " + err.Error()
	cl.mu.Unlock()
	if !repeated {
		cl.c.log.Warn("check: "+what+"; retrying", "client", cl.name, "err", err)
	}
}

func (cl *client) reconnected() {
	cl.mu.Lock()
	cl.reconnects++
	cl.mu.Unlock()
}

// ticket buys a single-use ticket with the client's token.
func (cl *client) ticket(ctx context.Context) (string, int, error) {
	c := cl.c
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.Hub+c.cfg.BasePath+"/auth/sse-ticket", nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", resp.StatusCode, fmt.Errorf("ticket: %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var t struct {
		Ticket string `json:"ticket"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil || t.Ticket == "" {
		return "", resp.StatusCode, fmt.Errorf("ticket: bad answer: %v", err)
	}
	return t.Ticket, resp.StatusCode, nil
}

// backoff waits before a reconnect; false when the checker is closing.
func (cl *client) backoff(d *time.Duration) bool {
	select {
	case <-cl.c.ctx.Done():
		return false
	case <-time.After(*d):
	}
	*d = min(*d*2, 3*time.Second)
	return true
}

// refused reports whether an HTTP status means retrying cannot help.
func refused(code int) bool { return code == 401 || code == 403 || code == 404 }

func (cl *client) runWS() {
	ctx := cl.c.ctx
	delay := 100 * time.Millisecond
	u, err := url.Parse(cl.c.cfg.Hub + cl.c.cfg.BasePath + "/ws")
	if err != nil {
		cl.setFatal(err.Error())
		return
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	for first := true; ; first = false {
		t, ok, stop := cl.attempt(ctx, first, &delay)
		if stop {
			return
		}
		if !ok {
			continue
		}
		q := u.Query()
		q.Set("ticket", t)
		u.RawQuery = q.Encode()
		conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{Subprotocols: []string{"topohub.v1"}, HTTPClient: cl.c.http})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if resp != nil && refused(resp.StatusCode) {
				cl.setFatal("websocket: " + err.Error())
				return
			}
			cl.trouble("websocket dial", err)
			continue
		}
		conn.SetReadLimit(16 << 20)
		if cl.serveWS(ctx, conn) {
			delay = 100 * time.Millisecond
		}
		if ctx.Err() != nil {
			_ = conn.Close(websocket.StatusNormalClosure, "")
			return
		}
		_ = conn.CloseNow()
	}
}

// serveWS subscribes and reads until the connection fails; it reports
// whether the connection got as far as reading events.
func (cl *client) serveWS(ctx context.Context, conn *websocket.Conn) bool {
	for _, id := range cl.topos {
		sub := map[string]string{"op": "subscribe", "id": id, "topology": id}
		cl.mu.Lock()
		if v := cl.views[id]; v.snapshot && v.cursor != "" {
			sub["since"] = v.cursor // as topohub.js resumes
		}
		cl.mu.Unlock()
		b, _ := json.Marshal(sub)
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			return false
		}
	}
	got := false
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() == nil {
				cl.trouble("websocket read", err)
			}
			return got
		}
		got = true
		if !cl.pace(ctx, bytes.Count(msg, []byte{'\n'})+1) {
			return got
		}
		for len(msg) > 0 {
			var line []byte
			if i := bytes.IndexByte(msg, '\n'); i >= 0 {
				line, msg = msg[:i], msg[i+1:]
			} else {
				line, msg = msg, nil
			}
			if len(line) == 0 {
				continue
			}
			var f struct {
				Op       string          `json:"op"`
				Topology string          `json:"topology"`
				Event    string          `json:"event"`
				ID       json.RawMessage `json:"id"`
				Data     json.RawMessage `json:"data"`
				Code     string          `json:"code"`
				Message  string          `json:"message"`
			}
			if err := json.Unmarshal(line, &f); err != nil {
				cl.mu.Lock()
				cl.anomaly("frame is not JSON: %.200s", line)
				cl.mu.Unlock()
				continue
			}
			switch f.Op {
			case "event":
				var cursor string
				_ = json.Unmarshal(f.ID, &cursor)
				cl.handle(f.Topology, f.Event, cursor, f.Data)
			case "error":
				if f.Code == "not_found" {
					cl.setFatal("topology " + f.Topology + " not found")
					return got
				}
				cl.mu.Lock()
				cl.anomaly("error frame %s: %s", f.Code, f.Message)
				cl.mu.Unlock()
			}
		}
	}
}

// attempt starts one connection attempt of a reconnect loop: it waits out
// the backoff (not before the first attempt) and gets a fresh ticket.
// ok=false asks the loop to try again; stop=true ends it (the checker is
// stopping, or the hub refused the credentials for good).
func (cl *client) attempt(ctx context.Context, first bool, delay *time.Duration) (ticket string, ok, stop bool) {
	if !first {
		cl.reconnected()
		if !cl.backoff(delay) {
			return "", false, true
		}
	}
	t, code, err := cl.ticket(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", false, true
		}
		if refused(code) {
			cl.setFatal(err.Error())
			return "", false, true
		}
		cl.trouble("ticket", err)
		return "", false, false
	}
	return t, true, false
}

func (cl *client) runSSE() {
	ctx := cl.c.ctx
	id := cl.topos[0]
	delay := 100 * time.Millisecond
	for first := true; ; first = false {
		t, ok, stop := cl.attempt(ctx, first, &delay)
		if stop {
			return
		}
		if !ok {
			continue
		}
		// Like the legacy editor: a new EventSource with a fresh ticket,
		// no Last-Event-ID, so every reconnect starts from a snapshot.
		u := cl.c.cfg.Hub + cl.c.cfg.BasePath + "/topologies/" + url.PathEscape(id) + "/events?ticket=" + url.QueryEscape(t)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			cl.setFatal(err.Error())
			return
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, err := cl.c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			cl.trouble("sse", err)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if refused(resp.StatusCode) {
				cl.setFatal(fmt.Sprintf("sse: %d %s", resp.StatusCode, strings.TrimSpace(string(b))))
				return
			}
			continue
		}
		if cl.readSSE(id, resp.Body) {
			delay = 100 * time.Millisecond
		}
		resp.Body.Close()
		if ctx.Err() != nil {
			return
		}
	}
}

func (cl *client) readSSE(id string, body io.Reader) bool {
	r := bufio.NewReaderSize(body, 64<<10)
	var cursor, event string
	var data []byte
	got := false
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long data line: gather it whole.
			long := append([]byte{}, line...)
			for err == bufio.ErrBufferFull {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			return got
		}
		line = line[:len(line)-1]
		switch {
		case len(line) == 0:
			if event != "" {
				got = true
				if event == "error" {
					cl.setFatal("sse error event: " + string(data))
					return got
				}
				if !cl.pace(cl.c.ctx, 1) {
					return got
				}
				cl.handle(id, event, cursor, data)
			}
			cursor, event, data = "", "", data[:0]
		case line[0] == ':':
		default:
			k, v, _ := strings.Cut(string(line), ": ")
			switch k {
			case "id":
				cursor = v
			case "event":
				event = v
			case "data":
				data = append(data[:0], v...)
			}
		}
	}
}

// WriteSummary prints the report for people.
func (r *Report) WriteSummary(w io.Writer) {
	verdict := "OK: every client's state equals Redis's"
	if !r.OK {
		verdict = fmt.Sprintf("FAILED: %d of %d clients differ from Redis, %d anomalies", r.Differing, r.Clients, len(r.Anomalies))
	}
	fmt.Fprintf(w, "check %s\n", verdict)
	fmt.Fprintf(w, "  %d topologies, %d clients, %d events received, %d snapshots of which %d resyncs, %d reconnects; caught up %.1fs after the traffic\n",
		r.Topologies, r.Clients, r.Events, r.Snapshots, r.Resyncs, r.Reconnects, r.Settled.Seconds())
	for _, d := range r.Differences {
		fmt.Fprintf(w, "  differs: %s (%s) topology %s field %s: Redis %q, client %q\n", d.Client, d.Transport, d.Topology, d.Field, d.Want, d.Got)
	}
	for _, a := range r.Anomalies {
		fmt.Fprintf(w, "  anomaly: %s\n", a)
	}
	if r.Resyncs == 0 {
		fmt.Fprintln(w, "  note: no resync was seen, so recovery from overflow was not exercised (try --burst above the hub's queue size)")
	}
}
