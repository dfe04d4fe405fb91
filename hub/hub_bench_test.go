package hub

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

func BenchmarkDecodeEnvelope(b *testing.B) {
	d := NewDecoder(DefaultFamilies(), 0)
	body := []byte(`{"v":1,"id":"0123456789abcdef0123456789abcdef","topic":"topology.T.mutation.applied","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky","payload":{"name":"web1","services":["ssh","http"]}}}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode("topology.T.mutation.applied", body, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeUnroutedTraffic is the high-volume decky.*.traffic case:
// no topology_id, skipped without decoding.
func BenchmarkDecodeUnroutedTraffic(b *testing.B) {
	d := NewDecoder(DefaultFamilies(), 0)
	body := []byte(`{"v":1,"id":"0123456789abcdef0123456789abcdef","type":"bytes","ts":1764300000.123,"payload":{"decky_name":"host:web1","src":"10.0.0.1","dst":"10.0.0.2","bytes":1234,"proto":"tcp"}}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode("decky.host:web1.traffic", body, testNow); err == nil {
			b.Fatal("routed")
		}
	}
}

// BenchmarkFanout publishes to one topology with N subscribers and drains
// their queues as a transport would (without the socket write). It
// reports deliveries per second of the core.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 100, 5000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			snaps := NewMemorySnapshots()
			snaps.Set("T", "active")
			h, _ := New(Config{Snapshots: snaps, QueueSize: 256})
			clients := make([]*Client, n)
			for i := range clients {
				clients[i] = h.NewClient("u")
				_ = clients[i].Subscribe(context.Background(), "T", "", nil)
			}
			ctx := context.Background()
			buf := make([]Item, 0, 256)
			drain := func() {
				for _, c := range clients {
					select {
					case <-c.Ready():
						buf, _ = c.Pop(ctx, buf[:0])
						clear(buf)
					default:
					}
				}
			}
			drain()
			body := []byte(`{"type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky"}}`)
			b.ReportAllocs()
			start := time.Now()
			i := 0
			for b.Loop() {
				if err := h.HandleMessage("topology.T.mutation.applied", body); err != nil {
					b.Fatal(err)
				}
				if i++; i%128 == 0 {
					drain()
				}
			}
			drain()
			b.ReportMetric(float64(b.N)*float64(n)/time.Since(start).Seconds(), "deliveries/s")
			if h.Stats().Resyncs.Load() != 0 {
				b.Fatalf("%d resyncs: queues overflowed, the benchmark measured the wrong path", h.Stats().Resyncs.Load())
			}
			for _, c := range clients {
				c.Close()
			}
		})
	}
}

// BenchmarkIdleClientMemory reports the hub's heap per idle client
// subscribed to one topology (transport buffers not included).
func BenchmarkIdleClientMemory(b *testing.B) {
	snaps := NewMemorySnapshots()
	h, _ := New(Config{Snapshots: snaps})
	const n = 10000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		clients := make([]*Client, n)
		for i := range clients {
			clients[i] = h.NewClient("u")
			_ = clients[i].Subscribe(context.Background(), fmt.Sprint("T", i%100), "", nil)
			_, _ = clients[i].Pop(context.Background(), nil) // the snapshot is not found: subscription ends
			_ = clients[i].Subscribe(context.Background(), fmt.Sprint("T", i%100), "", nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/client")
		for _, c := range clients {
			c.Close()
		}
	}
}

// BenchmarkPublishUnwatched is a producer flooding topologies nobody
// subscribes to: routed and counted, nothing kept.
func BenchmarkPublishUnwatched(b *testing.B) {
	h, _ := New(Config{Snapshots: NewMemorySnapshots()})
	channels := make([]string, 1024)
	for i := range channels {
		channels[i] = fmt.Sprintf("topology.ghost-%d.status", i)
	}
	body := []byte(`{"type":"status","ts":1764300000.123,"payload":{"state":"up"}}`)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := h.HandleMessage(channels[i%len(channels)], body); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if n := h.Stats().Topologies.Load(); n != 0 {
		b.Fatalf("%d topologies kept", n)
	}
}
