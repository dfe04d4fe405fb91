package main

import (
	"log/slog"
	"math/bits"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// subStats follows one client's subscription to one topology. Only the
// client's reader goroutine writes it; last and lastAt are atomic because
// the drain phase polls them, the other counters are read after the
// reader has exited.
type subStats struct {
	topo int // topology index

	// last is the highest seq the subscription has, delivered as an
	// event or reflected by a snapshot; -1 before the first snapshot.
	last atomic.Int64
	// lastAt is when last last advanced (unix nanoseconds).
	lastAt atomic.Int64
	// delivered counts bench events received (atomic for progress logs).
	delivered atomic.Int64

	ready      bool  // first snapshot seen
	base       int64 // seq of the first snapshot
	gap        int64 // events skipped by a jump in seq: lost, no resync covered them
	covered    int64 // events not received that a later resync snapshot reflected
	dups       int64 // events at or below last (seen in a snapshot or twice)
	resyncs    int64 // snapshots with "resync":true
	behind     int64 // resync snapshots reflecting an older seq than last
	unexpected int64 // frames the bench cannot place (no seq, before the snapshot, other events)
	flood      int64 // decky.traffic events delivered (the hub should drop them all)
}

func (s *subStats) init(topo int) {
	s.topo = topo
	s.last.Store(-1)
}

// onEvent accounts for bench event seq received at now.
func (s *subStats) onEvent(seq, now int64) {
	s.delivered.Add(1)
	if !s.ready {
		s.unexpected++
	}
	last := s.last.Load()
	if seq <= last {
		s.dups++
		return
	}
	if last >= 0 && seq > last+1 {
		s.gap += seq - last - 1
	}
	s.last.Store(seq)
	s.lastAt.Store(now)
}

// onSnapshot accounts for a snapshot whose status names seq (the
// publisher writes status seq:<n> before publishing event n, so the
// snapshot reflects every event up to n).
func (s *subStats) onSnapshot(seq int64, resync bool, now int64) {
	if resync {
		s.resyncs++
	}
	last := s.last.Load()
	if !s.ready {
		s.ready, s.base = true, seq
		if seq > last {
			s.last.Store(seq)
			s.lastAt.Store(now)
		}
		return
	}
	switch {
	case seq > last:
		s.covered += seq - last
		s.last.Store(seq)
		s.lastAt.Store(now)
	case seq < last:
		s.behind++
	}
}

// histogram is a log-linear latency histogram in microseconds with 16
// buckets per power of two (at most 6% relative error; quantiles report
// the bucket's midpoint), sharded so that readers on different cores do
// not share cache lines. Its size is fixed: about 128 KiB.
type histogram struct {
	shards [histShards]histShard
}

const (
	histSubBits = 4
	histBuckets = 64 << histSubBits
	histShards  = 16
)

type histShard struct {
	counts [histBuckets]atomic.Uint64
	max    atomic.Uint64
	_      [56]byte // keep max off the next shard's first line
}

func bucketOf(v uint64) int {
	if v < 1<<histSubBits {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits - 1
	return (e+1)<<histSubBits + int(v>>e) - 1<<histSubBits
}

// bucketMid is the midpoint of bucket i.
func bucketMid(i int) uint64 {
	if i < 1<<histSubBits {
		return uint64(i)
	}
	e := i>>histSubBits - 1
	m := uint64(i&(1<<histSubBits-1) + 1<<histSubBits)
	return m<<e + (uint64(1)<<e)/2
}

// add records d (negative durations, from clock skew, count as 0) in the
// shard of the caller's choice.
func (h *histogram) add(shard int, d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	sh := &h.shards[shard%histShards]
	sh.counts[bucketOf(us)].Add(1)
	for {
		m := sh.max.Load()
		if us <= m || sh.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// summary is the histogram's count, quantiles (q in 0..1) and max, in
// milliseconds.
func (h *histogram) summary(qs ...float64) (n uint64, vals []float64, maxMS float64) {
	var merged [histBuckets]uint64
	var mx uint64
	for s := range h.shards {
		for i := range merged {
			c := h.shards[s].counts[i].Load()
			merged[i] += c
			n += c
		}
		mx = max(mx, h.shards[s].max.Load())
	}
	vals = make([]float64, len(qs))
	if n == 0 {
		return 0, vals, 0
	}
	for k, q := range qs {
		rank := uint64(q*float64(n-1)) + 1
		var cum uint64
		for i, c := range merged {
			cum += c
			if cum >= rank {
				vals[k] = float64(min(bucketMid(i), mx)) / 1000
				break
			}
		}
	}
	return n, vals, float64(mx) / 1000
}

// durations is an exact quantile set for few values (one per client).
type durations []time.Duration

func (d durations) quantile(q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return ms(s[int(q*float64(len(s)-1)+0.5)])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// errorCounts counts errors by kind and logs the first few of each kind.
type errorCounts struct {
	log *slog.Logger
	mu  sync.Mutex
	n   map[string]int64
}

const logFirstErrors = 3

func newErrorCounts(log *slog.Logger) *errorCounts {
	return &errorCounts{log: log, n: map[string]int64{}}
}

// add counts one error of kind; detail (never a credential) goes to the
// log for the first few.
func (e *errorCounts) add(kind string, detail error) {
	e.mu.Lock()
	e.n[kind]++
	c := e.n[kind]
	e.mu.Unlock()
	if c <= logFirstErrors {
		e.log.Warn("error", "kind", kind, "err", detail, "count", c)
	}
}

func (e *errorCounts) snapshot() (map[string]int64, int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int64, len(e.n))
	var total int64
	for k, v := range e.n {
		out[k] = v
		total += v
	}
	return out, total
}
