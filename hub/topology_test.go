package hub

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

func TestRing(t *testing.T) {
	r := ring{max: 5}
	seqs := func() string {
		var out []string
		r.each(func(ev *Event) { out = append(out, fmt.Sprint(ev.Seq)) })
		return strings.Join(out, ",")
	}
	for i := 1; i <= 3; i++ {
		if ev := r.push(&Event{Seq: uint64(i)}); ev != nil {
			t.Fatalf("push %d evicted %d before the ring was full", i, ev.Seq)
		}
	}
	if got := seqs(); got != "1,2,3" || len(r.buf) != 4 {
		t.Fatalf("ring %s (cap %d)", got, len(r.buf))
	}
	if ev := r.popOldest(); ev.Seq != 1 {
		t.Fatalf("popOldest %d", ev.Seq)
	}
	var evicted []string
	for i := 4; i <= 9; i++ {
		if ev := r.push(&Event{Seq: uint64(i)}); ev != nil {
			evicted = append(evicted, fmt.Sprint(ev.Seq))
		}
	}
	if got := seqs(); got != "5,6,7,8,9" || len(r.buf) != 5 {
		t.Fatalf("ring %s (cap %d), want 5..9 in a ring of 5", got, len(r.buf))
	}
	if got := strings.Join(evicted, ","); got != "2,3,4" {
		t.Fatalf("evicted %s", got)
	}
	r.clear()
	if r.len() != 0 || r.oldest() != nil || r.popOldest() != nil {
		t.Fatal("clear left events")
	}
}

func TestHistoryBoundedInBytes(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.HistoryBytes = 4096 })
	a := f.h.NewClient("a")
	defer a.Close()
	_ = a.Subscribe(context.Background(), "T", "", nil)
	first := pop(t, a)[0].Event.Cursor
	big := strings.Repeat("x", 1000)
	var items []Item
	for i := range 10 {
		if err := f.h.HandleMessage("topology.T.status", []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, big))); err != nil {
			t.Fatal(err)
		}
		items = append(items, pop(t, a)...) // a reader that keeps up gets every event
	}
	if len(items) != 10 {
		t.Fatalf("reader got %s", describe(items))
	}
	tp := f.h.lockTopology("T")
	tp.mu.Unlock()
	tp.mu.Lock()
	n, bytes := tp.hist.len(), tp.histBytes
	tp.mu.Unlock()
	if bytes > 4096 || n == 0 || n >= 10 {
		t.Fatalf("history holds %d events, %d bytes; want fewer than 10 within 4096 bytes", n, bytes)
	}
	// A cursor whose successors were dropped resyncs; a recent one replays.
	c := f.h.NewClient("c")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "T", first, nil)
	expect(t, pop(t, c), "T:snapshot(resync)")
	d := f.h.NewClient("d")
	defer d.Close()
	_ = d.Subscribe(context.Background(), "T", items[len(items)-2].Event.Cursor, nil)
	expect(t, pop(t, d), "T:9")

	// One event larger than the bound is still kept: the newest stays.
	huge := strings.Repeat("y", 8000)
	_ = f.h.HandleMessage("topology.T.status", []byte(fmt.Sprintf(`{"n":10,"pad":%q}`, huge)))
	tp.mu.Lock()
	n = tp.hist.len()
	tp.mu.Unlock()
	if n != 1 {
		t.Fatalf("history holds %d events after an oversized one, want 1", n)
	}
}
