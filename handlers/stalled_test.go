package handlers

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"topohub/hub"
)

// tcpSendQueues returns the send queue (tx_queue of /proc/net/tcp, bytes
// written and not yet acknowledged) of each IPv4 loopback socket whose
// local port is local, by remote port.
func tcpSendQueues(t *testing.T, local int) map[int]int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]int{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		port := func(addr string) int {
			_, p, _ := strings.Cut(addr, ":")
			n, _ := strconv.ParseInt(p, 16, 32)
			return int(n)
		}
		if port(fields[1]) != local {
			continue
		}
		tx, _, _ := strings.Cut(fields[4], ":")
		n, _ := strconv.ParseInt(tx, 16, 64)
		out[port(fields[2])] = int(n)
	}
	return out
}

// TestStalledReadersAreDroppedAndCostOthersNothing: 20 of 200 WebSocket
// clients stop reading while 1,000 events/s are published on 10
// topologies. The 180 others get every event; each stalled socket's
// hub-side send queue stays within what Config.SendBuffer allows (Linux
// doubles SO_SNDBUF); the hub's heap stays flat (a stalled client holds
// no events: they stay in the topology's log); and every stalled client
// is dropped once its buffers are full and a write has blocked for
// WriteTimeout.
func TestStalledReadersAreDroppedAndCostOthersNothing(t *testing.T) {
	const (
		topologies, clients, stalledCount = 10, 200, 20
		sendBuffer                        = 16 << 10
		writeTimeout                      = 2 * time.Second
		rate                              = 1000 // events/s, all topologies together
		publishFor                        = 6 * time.Second
	)
	th := newTestHub(t, withConfig(func(c *Config) {
		c.SendBuffer = sendBuffer
		c.WriteTimeout = writeTimeout
	}), withHubConfig(func(c *hub.Config) {
		// A reader starved of CPU on a loaded machine must not be
		// resynced for it: what is tested is that the stalled clients
		// cost the others nothing.
		c.MaxLag = 30 * time.Second
		c.QueueSize = 2048
	}))
	ctx := context.Background()
	ids := make([]string, topologies)
	for i := range ids {
		ids[i] = th.newTopology()
		th.rdb.HSet(ctx, th.snaps.TopologyKey(ids[i]), "status", "seq:0")
	}
	hubPort := th.http.Listener.Addr().(*net.TCPAddr).Port

	// Stalled clients: raw sockets with a small receive buffer, so their
	// windows close quickly; they read their ack and snapshot, then stop.
	small := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	stalledPorts := map[int]bool{}
	for i := range stalledCount {
		r := th.dialRawWith(small, bearer(th.token(claim("uuid", fmt.Sprint("stalled-", i)))))
		r.write(clientFrame(0x1, []byte(`{"op":"subscribe","id":"s","topology":"`+ids[i%topologies]+`"}`)))
		for seen := ""; !strings.Contains(seen, `"event":"snapshot"`); {
			_, p, err := r.readFrame()
			if err != nil {
				t.Fatalf("stalled client %d: %v", i, err)
			}
			seen += string(p)
		}
		_ = r.conn.SetDeadline(time.Time{})
		stalledPorts[r.conn.LocalAddr().(*net.TCPAddr).Port] = true
	}

	type reader struct {
		c     *wsClient
		id    string
		track overloadTracker
	}
	readers := make([]*reader, clients-stalledCount)
	for i := range readers {
		r := &reader{c: th.openWS(bearer(th.token(claim("uuid", fmt.Sprint("reader-", i))))), id: ids[i%topologies]}
		r.c.subscribe("s", r.id)
		readers[i] = r
	}
	waitFor(t, 10*time.Second, "all clients registered", func() bool { return th.hub.Clients() == clients })

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	perTopology := int(publishFor.Seconds()) * rate / topologies
	pad := strings.Repeat("x", 400)
	published := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond) // the publisher's pace, not synchronisation
		defer tick.Stop()
		for n := 1; n <= perTopology; n++ {
			<-tick.C
			pipe := th.rdb.Pipeline()
			for _, id := range ids {
				pipe.HSet(ctx, th.snaps.TopologyKey(id), "status", fmt.Sprint("seq:", n))
				pipe.Publish(ctx, "topology."+id+".bench", fmt.Sprintf(`{"payload":{"seq":%d,"pad":%q}}`, n, pad))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()

	var wg sync.WaitGroup
	errs := make(chan error, len(readers))
	for _, r := range readers {
		wg.Go(func() {
			for r.track.last < perTopology {
				msgs, err := r.c.read(20 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("reader of %s at %d: %w", r.id, r.track.last, err)
					return
				}
				for _, m := range msgs {
					if m.Op == "event" {
						if err := r.track.see(m); err != nil {
							errs <- err
							return
						}
					}
				}
			}
		})
	}

	// While publishing: the stalled sockets' queues never exceed what
	// their send buffer allows, and every stalled client is dropped.
	maxQueue, dropped := 0, false
	var droppedAfter time.Duration
	var publishErr error
	publishing := true
	start := time.Now()
	deadline := start.Add(publishFor + 60*time.Second) // generous: a loaded CI machine publishes late
	for !dropped || publishing {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d clients open, want %d (the stalled dropped); publishing done: %v; largest stalled send queue %d",
				time.Since(start), th.hub.Clients(), clients-stalledCount, !publishing, maxQueue)
		}
		select {
		case publishErr = <-published:
			publishing = false
		default:
		}
		for port, q := range tcpSendQueues(t, hubPort) {
			if stalledPorts[port] {
				maxQueue = max(maxQueue, q)
			}
		}
		if !dropped && th.hub.Clients() == clients-stalledCount {
			dropped, droppedAfter = true, time.Since(start)
		}
		time.Sleep(20 * time.Millisecond) // sampling interval of the queues
	}
	if publishErr != nil {
		t.Fatal(publishErr)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if maxQueue > 2*sendBuffer {
		t.Errorf("a stalled socket queued %d bytes in the kernel, over 2 x SendBuffer = %d", maxQueue, 2*sendBuffer)
	}
	if maxQueue == 0 {
		t.Error("no stalled socket ever had a send queue: the test did not stall anyone")
	}
	resyncs := 0
	for _, r := range readers {
		if r.track.uncoveredAt != 0 || r.track.dups != 0 {
			t.Errorf("reader of %s: event %d after an uncovered gap, %d duplicates", r.id, r.track.uncoveredAt, r.track.dups)
		}
		resyncs += r.track.resyncs
	}
	if resyncs != 0 {
		t.Errorf("%d resyncs among the readers: the stalled clients cost them events", resyncs)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	if growth > 32<<20 {
		t.Errorf("heap in use grew by %d MiB", growth>>20)
	}
	t.Logf("%d readers got all %d events of their topology; stalled clients dropped %v after publishing began; largest stalled send queue %d bytes (bound %d); heap in use %+d KiB",
		len(readers), perTopology, droppedAfter.Round(100*time.Millisecond), maxQueue, 2*sendBuffer, growth>>10)
}
