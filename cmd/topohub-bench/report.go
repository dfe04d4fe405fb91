package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sort"
	"strings"
	"time"
)

// report is the JSON line on stdout. Durations are in milliseconds (_ms)
// or seconds (_s); hub figures are null without --pid.
type report struct {
	RunID      string  `json:"run_id"`
	WSClients  int     `json:"ws_clients"`
	SSEClients int     `json:"sse_clients"`
	PerClient  int     `json:"per_client"`
	Topologies int     `json:"topologies"`
	Rate       float64 `json:"rate"`
	FloodRate  float64 `json:"flood_rate"`

	ConnectedClients int     `json:"connected_clients"`
	Connections      int     `json:"connections"` // WebSocket connections + SSE streams open
	Subscriptions    int     `json:"subscriptions"`
	ConnectFailures  int     `json:"connect_failures"`
	ConnectSeconds   float64 `json:"connect_s"`
	ConnectRate      float64 `json:"connect_rate"` // full handshakes (dial to last ack or first SSE bytes) per second
	HandshakeP50MS   float64 `json:"handshake_p50_ms"`
	HandshakeP99MS   float64 `json:"handshake_p99_ms"`
	HandshakeMaxMS   float64 `json:"handshake_max_ms"`

	PublishSeconds float64 `json:"publish_s"`
	Published      int64   `json:"published"`
	PublishRate    float64 `json:"publish_rate"`
	PublishBehind  int64   `json:"publish_behind"` // events the rate owed that were skipped to stay on time
	PublishErrors  int64   `json:"publish_errors"`
	Unreceived     int64   `json:"publish_unreceived"` // PUBLISHes no subscriber received
	FloodPublished int64   `json:"flood_published"`
	FloodDelivered int64   `json:"flood_delivered"`

	Expected       int64    `json:"expected"` // deliveries owed: per subscription, events after its first snapshot
	Delivered      int64    `json:"delivered"`
	DeliveriesPerS float64  `json:"deliveries_per_s"` // delivered / publish_s
	Duplicates     int64    `json:"duplicates"`
	LatencyP50MS   *float64 `json:"latency_p50_ms"`
	LatencyP90MS   *float64 `json:"latency_p90_ms"`
	LatencyP99MS   *float64 `json:"latency_p99_ms"`
	LatencyMaxMS   *float64 `json:"latency_max_ms"`

	Lost            int64 `json:"lost"` // covered_by_resync + lost_uncovered
	CoveredByResync int64 `json:"covered_by_resync"`
	LostUncovered   int64 `json:"lost_uncovered"` // gaps no resync covered + tail_missing
	TailMissing     int64 `json:"tail_missing"`   // events still missing when the drain ended
	Resyncs         int64 `json:"resyncs"`
	ResyncsBehind   int64 `json:"resyncs_behind"` // resync snapshots older than events already received
	Unexpected      int64 `json:"unexpected"`

	ClientsCurrent int      `json:"clients_current"`
	AllCurrentMS   *float64 `json:"all_current_ms"` // from the end of publishing until the last client was current; null unless all were
	Disconnected   int      `json:"disconnected"`   // connected clients the hub dropped before the end

	Errors      int64            `json:"errors"`
	ErrorCounts map[string]int64 `json:"error_counts"`

	HubPID           int      `json:"hub_pid,omitempty"`
	RSSBeforeKiB     *int64   `json:"rss_before_kib"`
	RSSConnectedKiB  *int64   `json:"rss_connected_kib"`
	RSSPublishEndKiB *int64   `json:"rss_publish_end_kib"`
	RSSPerConnKiB    *float64 `json:"rss_per_conn_kib"` // (connected - before) / connections
	CPUConnectPct    *float64 `json:"cpu_connect_pct"`  // of one core
	CPUIdlePct       *float64 `json:"cpu_idle_pct"`
	CPUPublishPct    *float64 `json:"cpu_publish_pct"`

	BenchCPUPublishPct float64 `json:"bench_cpu_publish_pct"`
	BenchGoroutines    int     `json:"bench_goroutines"` // after connecting
	Interrupted        bool    `json:"interrupted"`
}

// connectPhase fills the connect figures.
func (r *report) connectPhase(b *bench, elapsed time.Duration) {
	var hs durations
	for i, d := range b.hsDur {
		if d > 0 {
			hs = append(hs, d)
			if i < b.cfg.WS {
				r.Connections++
			} else {
				r.Connections += b.cfg.PerClient
			}
		}
	}
	r.ConnectedClients = len(hs)
	r.Subscriptions = len(hs) * b.cfg.PerClient
	r.ConnectFailures = b.cfg.WS + b.cfg.SSE - len(hs)
	r.ConnectSeconds = round(elapsed.Seconds())
	if elapsed > 0 {
		r.ConnectRate = round(float64(len(hs)) / elapsed.Seconds())
	}
	r.HandshakeP50MS = hs.quantile(0.50)
	r.HandshakeP99MS = hs.quantile(0.99)
	r.HandshakeMaxMS = hs.quantile(1)
	r.BenchGoroutines = runtime.NumGoroutine()
}

// finish fills the rest once the clients are closed.
func (r *report) finish(b *bench, res *publishResult, current, live int, hub *hubProbe) {
	pubSecs := res.stop.Sub(res.start).Seconds()
	r.PublishSeconds = round(pubSecs)
	r.Published, r.PublishErrors, r.Unreceived, r.FloodPublished, r.PublishBehind = res.published, res.errors, res.unreceived, res.flood, res.behind
	if pubSecs > 0 {
		r.PublishRate = round(float64(res.published) / pubSecs)
	}
	var gap, lastAt int64
	b.eachSub(func(s *subStats, _ bool) {
		f := res.final[s.topo]
		base := int64(0)
		if s.ready {
			base = s.base
		}
		if f > base {
			r.Expected += f - base
		}
		r.Delivered += s.delivered.Load()
		r.Duplicates += s.dups
		r.CoveredByResync += s.covered
		r.Resyncs += s.resyncs
		r.ResyncsBehind += s.behind
		r.Unexpected += s.unexpected
		r.FloodDelivered += s.flood
		gap += s.gap
		if last := s.last.Load(); last < f {
			r.TailMissing += f - max(last, base)
		}
		lastAt = max(lastAt, s.lastAt.Load())
	})
	r.LostUncovered = gap + r.TailMissing
	r.Lost = r.LostUncovered + r.CoveredByResync
	if pubSecs > 0 {
		r.DeliveriesPerS = round(float64(r.Delivered) / pubSecs)
	}
	if n, q, mx := b.k.hist.summary(0.5, 0.9, 0.99); n > 0 {
		r.LatencyP50MS, r.LatencyP90MS, r.LatencyP99MS, r.LatencyMaxMS = ptr(q[0]), ptr(q[1]), ptr(q[2]), ptr(mx)
	}
	r.ClientsCurrent = current
	r.Disconnected = r.ConnectedClients - live
	if current == r.ConnectedClients {
		r.AllCurrentMS = ptr(max(0, round(float64(lastAt-res.stop.UnixNano())/1e6)))
	}
	r.ErrorCounts, r.Errors = b.k.errs.snapshot()
	r.Errors += res.errors

	if hub.pid == 0 {
		return
	}
	r.HubPID = hub.pid
	before, okB := hub.samples["before"]
	conn, okC := hub.samples["connected"]
	idle, okI := hub.samples["idle_end"]
	pubEnd, okP := hub.samples["publish_end"]
	if okB {
		r.RSSBeforeKiB = &before.rssKiB
	}
	if okC {
		r.RSSConnectedKiB = &conn.rssKiB
		if okB && r.Connections > 0 {
			r.RSSPerConnKiB = ptr(round(float64(conn.rssKiB-before.rssKiB) / float64(r.Connections)))
			r.CPUConnectPct = ptr(round(cpuPct(before, conn)))
		}
		if okI {
			r.CPUIdlePct = ptr(round(cpuPct(conn, idle)))
		}
	}
	if okP {
		r.RSSPublishEndKiB = &pubEnd.rssKiB
		if okI {
			r.CPUPublishPct = ptr(round(cpuPct(idle, pubEnd)))
		}
	}
}

// write prints the JSON line on stdout and the summary on stderr.
func (r *report) write(stdout, stderr io.Writer) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\ntopohub-bench run %s: %d WS + %d SSE clients x %d of %d topologies\n", r.RunID, r.WSClients, r.SSEClients, r.PerClient, r.Topologies)
	fmt.Fprintf(&sb, "  connect   %d clients (%d connections, %d failed) in %.2fs: %.0f/s, handshake p50 %.1f ms p99 %.1f ms max %.1f ms\n",
		r.ConnectedClients, r.Connections, r.ConnectFailures, r.ConnectSeconds, r.ConnectRate, r.HandshakeP50MS, r.HandshakeP99MS, r.HandshakeMaxMS)
	fmt.Fprintf(&sb, "  publish   %d events in %.2fs (%.0f/s, target %.0f/s; %d errors, %d skipped to keep pace), flood %d\n",
		r.Published, r.PublishSeconds, r.PublishRate, r.Rate, r.PublishErrors, r.PublishBehind, r.FloodPublished)
	fmt.Fprintf(&sb, "  deliver   %d of %d expected (%.0f/s), duplicates %d, flood delivered %d\n", r.Delivered, r.Expected, r.DeliveriesPerS, r.Duplicates, r.FloodDelivered)
	if r.LatencyP50MS != nil {
		fmt.Fprintf(&sb, "  latency   p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n", *r.LatencyP50MS, *r.LatencyP90MS, *r.LatencyP99MS, *r.LatencyMaxMS)
	}
	fmt.Fprintf(&sb, "  loss      lost %d = covered by resync %d + uncovered %d (of which still missing at the end %d); resyncs %d\n",
		r.Lost, r.CoveredByResync, r.LostUncovered, r.TailMissing, r.Resyncs)
	cur := "not all current"
	if r.AllCurrentMS != nil {
		cur = fmt.Sprintf("all current %.0f ms after publishing stopped", *r.AllCurrentMS)
	}
	fmt.Fprintf(&sb, "  drain     %d of %d clients current (%s), %d disconnected\n", r.ClientsCurrent, r.ConnectedClients, cur, r.Disconnected)
	if r.HubPID != 0 {
		fmt.Fprintf(&sb, "  hub       pid %d: RSS %s -> %s KiB (%s KiB per connection), CPU connect %s%% idle %s%% publish %s%% of one core\n",
			r.HubPID, fmtp(r.RSSBeforeKiB), fmtp(r.RSSConnectedKiB), fmtp(r.RSSPerConnKiB), fmtp(r.CPUConnectPct), fmtp(r.CPUIdlePct), fmtp(r.CPUPublishPct))
	}
	fmt.Fprintf(&sb, "  bench     CPU while publishing %.0f%% of one core, %d goroutines\n", r.BenchCPUPublishPct, r.BenchGoroutines)
	if r.Errors > 0 {
		kinds := make([]string, 0, len(r.ErrorCounts))
		for k := range r.ErrorCounts {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		fmt.Fprintf(&sb, "  errors    %d:", r.Errors)
		for _, k := range kinds {
			fmt.Fprintf(&sb, " %s=%d", k, r.ErrorCounts[k])
		}
		sb.WriteString("\n")
	}
	_, err = io.WriteString(stderr, sb.String())
	return err
}

// hubProbe samples the hub process at the phase boundaries.
type hubProbe struct {
	pid     int
	log     *slog.Logger
	samples map[string]procSample
}

func newHubProbe(pid int, log *slog.Logger) *hubProbe {
	return &hubProbe{pid: pid, log: log, samples: map[string]procSample{}}
}

// sample records the hub's RSS and CPU under name. The first sample's
// failure is a setup error (a wrong --pid); later ones are logged.
func (h *hubProbe) sample(name string) error {
	if h.pid == 0 {
		return nil
	}
	s, err := readProc(h.pid)
	if err != nil {
		if len(h.samples) == 0 {
			return fmt.Errorf("--pid %d: %w", h.pid, err)
		}
		h.log.Warn("hub sample", "phase", name, "err", err)
		return err
	}
	h.samples[name] = s
	return nil
}

func round(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return math.Round(f*1000) / 1000
}

func ptr[T any](v T) *T { return &v }

func fmtp[T int64 | float64](p *T) string {
	if p == nil {
		return "?"
	}
	return fmt.Sprint(*p)
}
