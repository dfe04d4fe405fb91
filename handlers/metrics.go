package handlers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"topohub/hub"
)

// hubCollector exposes the hub's counters; it reads them at scrape time,
// so the hot path only bumps atomics.
type hubCollector struct {
	hub                                              *hub.Hub
	ready                                            func() bool
	busLag                                           func() (time.Duration, bool)
	lag, overflows, snapshots                        *prometheus.Desc
	received, published, delivered, resyncs, busGaps *prometheus.Desc
	dropped, clients, busUp                          *prometheus.Desc
	snapReads, snapShared                            *prometheus.Desc
	topologies, historyBytes, unwatched              *prometheus.Desc
	historyDrops, topologyDrops, topologiesOver      *prometheus.Desc
}

func newHubCollector(h *hub.Hub, ready func() bool, busLag func() (time.Duration, bool)) *hubCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("topohub_"+name, help, labels, nil)
	}
	return &hubCollector{
		hub:        h,
		ready:      ready,
		busLag:     busLag,
		lag:        d("bus_lag_seconds", "Round trip of the newest bus lag probe: published through Redis, read back by the subscription."),
		overflows:  d("subscriber_overflows_total", "Subscribers found too far behind their topology's log (events or age) and resynced."),
		snapshots:  d("snapshots_sent_total", "Snapshots handed to client transports (first and resync)."),
		received:   d("bus_messages_received_total", "Bus messages handed to the hub."),
		published:  d("events_routed_total", "Bus events routed to a topology; those of topologies nobody watches are not kept (topohub_events_unwatched_total)."),
		delivered:  d("event_deliveries_total", "Events handed to client transports."),
		resyncs:    d("resyncs_total", "Resync snapshots queued, by reason: slow (the subscriber fell behind its queue, its lag or the history), bus_gap (the Redis subscription was re-established), cursor (a resume cursor that could not be honoured).", "reason"),
		busGaps:    d("bus_subscription_established_total", "Times the bus subscription was (re)established."),
		dropped:    d("bus_messages_dropped_total", "Bus messages that reached no client, by reason.", "reason"),
		clients:    d("clients", "Open client connections."),
		busUp:      d("bus_subscription_up", "1 when every pattern subscription is established."),
		snapReads:  d("snapshot_reads_total", "Snapshot reads from the snapshot source."),
		snapShared: d("snapshots_shared_total", "Snapshots served by joining a read already under way."),

		topologies:     d("topologies", "Topologies the hub keeps state for (TOPOHUB_MAX_TOPOLOGIES bounds those without subscribers)."),
		historyBytes:   d("history_bytes", "Data bytes held in all resume histories (bounded by TOPOHUB_MAX_HISTORY_BYTES)."),
		unwatched:      d("events_unwatched_total", "Events of topologies with no subscriber, now or within the history age: routed, not kept."),
		historyDrops:   d("history_dropped_total", "Histories dropped whole because all histories together were over TOPOHUB_MAX_HISTORY_BYTES."),
		topologyDrops:  d("topologies_forgotten_total", "Unwatched topologies forgotten because the hub kept more than TOPOHUB_MAX_TOPOLOGIES."),
		topologiesOver: d("topologies_over_bound_total", "Trims that left more than TOPOHUB_MAX_TOPOLOGIES, all of them watched."),
	}
}

func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.received, c.published, c.delivered, c.resyncs, c.busGaps, c.dropped, c.clients, c.busUp, c.snapReads, c.snapShared, c.lag, c.overflows, c.snapshots, c.topologies, c.historyBytes, c.unwatched, c.historyDrops, c.topologyDrops, c.topologiesOver} {
		ch <- d
	}
}

func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.hub.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.received, s.Received.Load())
	counter(c.published, s.Published.Load())
	counter(c.delivered, s.Delivered.Load())
	for _, r := range hub.ResyncReasons() {
		counter(c.resyncs, s.ResyncsBy[r].Load(), r.String())
	}
	counter(c.busGaps, s.BusGaps.Load())
	counter(c.snapReads, s.SnapshotReads.Load())
	counter(c.snapShared, s.SnapshotsShared.Load())
	counter(c.overflows, s.Overflows.Load())
	counter(c.snapshots, s.Snapshots.Load())
	counter(c.unwatched, s.Unwatched.Load())
	counter(c.historyDrops, s.HistoryDrops.Load())
	counter(c.topologyDrops, s.TopologyDrops.Load())
	counter(c.topologiesOver, s.TopologiesOver.Load())
	ch <- prometheus.MustNewConstMetric(c.topologies, prometheus.GaugeValue, float64(s.Topologies.Load()))
	ch <- prometheus.MustNewConstMetric(c.historyBytes, prometheus.GaugeValue, float64(s.HistoryBytes.Load()))
	if c.busLag != nil {
		if lag, ok := c.busLag(); ok {
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, lag.Seconds())
		}
	}
	for _, r := range hub.DropReasons() {
		counter(c.dropped, s.Dropped[r].Load(), r.String())
	}
	ch <- prometheus.MustNewConstMetric(c.clients, prometheus.GaugeValue, float64(c.hub.Clients()))
	up := 0.0
	if c.ready() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.busUp, prometheus.GaugeValue, up)
}

// BuildInfo names the running build, for topohub_build_info.
type BuildInfo struct {
	Version   string // module version, or "(devel)"
	Revision  string // VCS commit, "-dirty" when the tree was modified
	GoVersion string
}

// newMetricsRegistry holds the hub's metrics, the routes' and the Go
// runtime's.
func newMetricsRegistry(h *hub.Hub, ready func() bool, busLag func() (time.Duration, bool), build BuildInfo) (*prometheus.Registry, *serverMetrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newHubCollector(h, ready, busLag), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, newServerMetrics(reg, build)
}
