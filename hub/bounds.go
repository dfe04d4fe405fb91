package hub

import (
	"slices"
	"time"
)

// The hub's memory is bounded whatever producers publish: events of
// topologies nobody watches are not kept (Publish), each history is
// bounded (Config.HistorySize, HistoryBytes, HistoryAge), all of them
// together by MaxHistoryBytes (trimHistory), and the topologies the hub
// keeps state for by MaxTopologies (trimTopologies).

// trimHistory drops whole histories, the topology whose newest event is
// oldest first, until an eighth of MaxHistoryBytes is free again. The
// topology just published to (current) is spared: its newest event may
// not have reached its readers yet, and it alone is within HistoryBytes,
// which is at most MaxHistoryBytes. A reader that still needed a dropped
// event resyncs; one that had read everything is not disturbed.
func (h *Hub) trimHistory(current *topology) {
	if !h.trimming.CompareAndSwap(false, true) {
		return
	}
	defer h.trimming.Store(false)
	type victim struct {
		t      *topology
		newest time.Time
	}
	var victims []victim
	h.eachTopology(func(_ *shard, t *topology) {
		if ev := t.newest(); ev != nil && t != current {
			victims = append(victims, victim{t, ev.received})
		}
	})
	slices.SortFunc(victims, func(a, b victim) int { return a.newest.Compare(b.newest) })
	low := int64(h.cfg.MaxHistoryBytes - h.cfg.MaxHistoryBytes/8)
	before := h.stats.HistoryBytes.Load()
	dropped := 0
	for _, v := range victims {
		if h.stats.HistoryBytes.Load() <= low {
			break
		}
		v.t.mu.Lock()
		v.t.drop()
		v.t.mu.Unlock()
		dropped++
	}
	h.stats.HistoryDrops.Add(uint64(dropped))
	h.logCaps.Do(func() {
		h.log.Warn("history over its hub-wide bound: oldest histories dropped",
			"max_bytes", h.cfg.MaxHistoryBytes, "bytes_before", before,
			"bytes_after", h.stats.HistoryBytes.Load(), "histories_dropped", dropped)
	})
}

// trimTopologies forgets topologies that have no subscriber, the longest
// unwatched first, until an eighth of MaxTopologies is free again.
func (h *Hub) trimTopologies() {
	if !h.trimming.CompareAndSwap(false, true) {
		return
	}
	defer h.trimming.Store(false)
	type idle struct {
		sh    *shard
		t     *topology
		since time.Time
	}
	var idles []idle
	// A state with no subscriber that never had one is being created for
	// a subscribe under way (failed subscribes release theirs): it is
	// left alone, or that subscribe would create it again and again.
	h.eachTopology(func(sh *shard, t *topology) {
		if len(t.subs) == 0 && !t.idleSince.IsZero() {
			idles = append(idles, idle{sh, t, t.idleSince})
		}
	})
	slices.SortFunc(idles, func(a, b idle) int { return a.since.Compare(b.since) })
	low := int64(h.cfg.MaxTopologies - h.cfg.MaxTopologies/8)
	before := h.stats.Topologies.Load()
	forgotten := 0
	for _, v := range idles {
		if h.stats.Topologies.Load() <= low {
			break
		}
		v.sh.mu.Lock()
		v.t.mu.Lock()
		if !v.t.dead && len(v.t.subs) == 0 && !v.t.idleSince.IsZero() && v.sh.topologies[v.t.id] == v.t {
			h.forgetLocked(v.sh, v.t)
			forgotten++
		}
		v.t.mu.Unlock()
		v.sh.mu.Unlock()
	}
	h.stats.TopologyDrops.Add(uint64(forgotten))
	after := h.stats.Topologies.Load()
	if after > int64(h.cfg.MaxTopologies) {
		h.stats.TopologiesOver.Add(1)
	}
	h.logCaps.Do(func() {
		h.log.Warn("topologies over their bound: unwatched ones forgotten",
			"max_topologies", h.cfg.MaxTopologies, "before", before, "after", after, "forgotten", forgotten)
	})
}

// eachTopology calls fn for every live topology with its shard's and its
// own lock held.
func (h *Hub) eachTopology(fn func(*shard, *topology)) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, t := range sh.topologies {
			t.mu.Lock()
			fn(sh, t)
			t.mu.Unlock()
		}
		sh.mu.Unlock()
	}
}
