package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"topohub/hub"
)

// overloadTracker checks one client's view of one topology against the
// publisher's sequence numbers: every event after the last one it saw,
// or a resync snapshot that reflects the events it skips (the publisher
// writes "seq:<n>" into the status before publishing event n).
type overloadTracker struct {
	last              int // newest seq seen or reflected
	events, resyncs   int
	dups, uncoveredAt int // uncoveredAt: first seq that arrived after a gap no resync covered (0: none)
}

func (tr *overloadTracker) see(m wsMsg) error {
	if m.Event == "snapshot" {
		var d struct {
			Status string `json:"status"`
			Resync bool   `json:"resync"`
		}
		if err := json.Unmarshal(m.Data, &d); err != nil {
			return err
		}
		n, err := strconv.Atoi(strings.TrimPrefix(d.Status, "seq:"))
		if err != nil {
			return fmt.Errorf("snapshot status %q", d.Status)
		}
		if d.Resync {
			tr.resyncs++
		}
		tr.last = max(tr.last, n)
		return nil
	}
	var d struct {
		Payload struct{ Seq int } `json:"payload"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil {
		return err
	}
	switch seq := d.Payload.Seq; {
	case seq <= tr.last:
		tr.dups++
	case seq == tr.last+1:
		tr.events++
		tr.last = seq
	default:
		if tr.uncoveredAt == 0 {
			tr.uncoveredAt = seq
		}
		tr.last = seq
	}
	return nil
}

// TestOverloadResyncsSlowClientsAndTheBusKeepsUp offers the hub more than
// some of its clients can take: a burst of 4,000 events on two
// topologies, read by fast clients and by clients that pause after each
// message. The bus reader must keep up regardless (the hub has read
// every published message while the slow clients are still far behind),
// and every client must end current having lost nothing that a resync
// snapshot did not cover.
func TestOverloadResyncsSlowClientsAndTheBusKeepsUp(t *testing.T) {
	const (
		perTopology = 2000
		fast, slow  = 4, 6 // and one stalled client after them
	)
	th := newTestHub(t, withHubConfig(func(c *hub.Config) {
		c.QueueSize = 64
		c.MaxLag = 250 * time.Millisecond
	}))
	ids := []string{th.newTopology(), th.newTopology()}
	ctx := context.Background()
	for _, id := range ids {
		th.rdb.HSet(ctx, th.snaps.TopologyKey(id), "status", "seq:0")
	}

	type reader struct {
		c        *wsClient
		slow     bool
		track    map[string]*overloadTracker // the reader's goroutine only
		progress atomic.Int64                // the least seq it is current to
	}
	var readers []*reader
	for i := range fast + slow + 1 {
		r := &reader{c: th.openWS(bearer(th.token(claim("uuid", fmt.Sprint("over-", i))))), slow: i >= fast, track: map[string]*overloadTracker{}}
		for j, id := range ids {
			r.c.subscribe(fmt.Sprint(j), id)
			r.track[id] = &overloadTracker{}
		}
		readers = append(readers, r)
	}

	received := th.hub.Stats().Received.Load()
	go func() {
		for seq := 1; seq <= perTopology; seq += 100 {
			pipe := th.rdb.Pipeline()
			for n := seq; n < seq+100; n++ {
				for _, id := range ids {
					pipe.HSet(ctx, th.snaps.TopologyKey(id), "status", fmt.Sprint("seq:", n))
					pipe.Publish(ctx, "topology."+id+".bench", fmt.Sprintf(`{"payload":{"seq":%d}}`, n))
				}
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
		}
	}()

	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, len(readers))
	stalled := readers[len(readers)-1]
	for _, r := range readers {
		wg.Go(func() {
			if r == stalled {
				<-done // reads nothing until the hub has read the burst
			}
			for {
				least := perTopology
				for _, tr := range r.track {
					least = min(least, tr.last)
				}
				r.progress.Store(int64(least))
				if least >= perTopology {
					return
				}
				msgs, err := r.c.read(20 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("read: %w", err)
					return
				}
				for _, m := range msgs {
					if m.Op != "event" {
						continue
					}
					if err := r.track[m.Topology].see(m); err != nil {
						errs <- err
						return
					}
				}
				if r.slow {
					select {
					case <-done:
					case <-time.After(2 * time.Millisecond): // a slow tab: load shaping, not synchronisation
					}
				}
			}
		})
	}

	// The bus reader keeps up: the hub reads the whole burst while one of
	// its clients has not read a byte of it and others lag.
	waitFor(t, 20*time.Second, "the hub reading the whole burst", func() bool {
		return th.hub.Stats().Received.Load()-received >= 2*perTopology
	})
	behind := 0
	for _, r := range readers[fast:] {
		if r.progress.Load() < perTopology {
			behind++
		}
	}
	t.Logf("when the hub had read the burst, %d of %d slow and stalled clients were not current yet", behind, slow+1)
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var slowResyncs int
	for i, r := range readers {
		for id, tr := range r.track {
			if tr.uncoveredAt != 0 {
				t.Errorf("client %d, %s: event %d arrived after a gap no resync covered", i, id, tr.uncoveredAt)
			}
			if r.slow && r != stalled {
				slowResyncs += tr.resyncs
			}
		}
	}
	if slowResyncs == 0 {
		t.Fatal("no slow client was resynced: the test did not overload the hub")
	}
	// The stalled client's socket buffers may have held the whole burst,
	// so whether it needed a resync depends on the machine; what it got is
	// checked above like everyone's.
	if n := th.hub.Stats().Overflows.Load(); n == 0 {
		t.Error("no overflow counted")
	}
	t.Logf("slow clients: %d resyncs; overflows counted %d", slowResyncs, th.hub.Stats().Overflows.Load())
}
