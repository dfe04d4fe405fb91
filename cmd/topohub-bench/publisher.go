package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// publisherTick paces the publisher: every tick it sends, in pipelines,
// what the rate owes since the start. Owing by elapsed time, not by tick
// count, keeps the rate exact whatever the ticker's jitter.
const (
	publisherTick     = 5 * time.Millisecond
	publisherMaxBatch = 1000 // events per pipeline
)

// publisher plays the producers: per bench event it writes the topology's
// status seq:<n> and then PUBLISHes event n on topology.<id>.bench, in
// one pipeline, so a snapshot read after the hub received event n
// reflects it. Flood events go to decky.<name>.traffic without a
// topology_id.
type publisher struct {
	rdb       *redis.Client
	log       *slog.Logger
	keys      []string // status hash of each topology
	channels  []string // topology.<id>.bench
	floodChan string
	rate      float64
	floodRate float64
}

// publishResult is what the publisher did.
type publishResult struct {
	start, stop time.Time
	final       []int64 // per topology, the last seq published successfully
	published   int64   // bench events PUBLISHed without error
	unreceived  int64   // of those, PUBLISHes that reached no subscriber
	flood       int64   // flood events published
	errors      int64   // commands that failed
	lastErr     error
	behind      int64 // events the rate owed but the publisher could not send in time
}

func newPublisher(rdb *redis.Client, log *slog.Logger, prefix string, ids []string, runID string, rate, floodRate float64) *publisher {
	p := &publisher{rdb: rdb, log: log, rate: rate, floodRate: floodRate, floodChan: "decky.bench-" + runID + ".traffic"}
	for _, id := range ids {
		p.keys = append(p.keys, topologyKey(prefix, id))
		p.channels = append(p.channels, "topology."+id+".bench")
	}
	return p
}

// run publishes for d or until ctx ends.
func (p *publisher) run(ctx context.Context, d time.Duration) publishResult {
	res := publishResult{final: make([]int64, len(p.keys)), start: time.Now()}
	seq := make([]int64, len(p.keys))
	var sent, floodSent int64 // events attempted
	next := 0                 // round-robin topology
	tick := time.NewTicker(publisherTick)
	defer tick.Stop()
	end := res.start.Add(d)
	type pub struct {
		cmd  *redis.IntCmd
		topo int
		seq  int64
	}
	var pubs []pub
	var floods []*redis.IntCmd
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-tick.C:
			if !now.Before(end) {
				now, done = end, true
			}
			el := now.Sub(res.start).Seconds()
			owe := int64(p.rate*el) - sent
			oweFlood := int64(p.floodRate*el) - floodSent
			for owe > 0 || oweFlood > 0 {
				n, nf := min(owe, publisherMaxBatch), min(oweFlood, publisherMaxBatch)
				owe, oweFlood = owe-n, oweFlood-nf
				sentAt := strconv.FormatInt(time.Now().UnixNano(), 10)
				pubs, floods = pubs[:0], floods[:0]
				pipe := p.rdb.Pipeline()
				for range n {
					t := next
					next = (next + 1) % len(p.keys)
					seq[t]++
					s := strconv.FormatInt(seq[t], 10)
					pipe.HSet(ctx, p.keys[t], "status", "seq:"+s)
					pubs = append(pubs, pub{pipe.Publish(ctx, p.channels[t], `{"type":"bench","payload":{"seq":`+s+`,"sent":`+sentAt+`}}`), t, seq[t]})
				}
				for range nf {
					floods = append(floods, pipe.Publish(ctx, p.floodChan, `{"type":"traffic","payload":{"decky_name":"bench","bytes":1500,"sent":`+sentAt+`}}`))
				}
				sent += n
				floodSent += nf
				cmds, _ := pipe.Exec(ctx)
				for _, c := range cmds {
					if err := c.Err(); err != nil {
						res.errors++
						res.lastErr = err
					}
				}
				for _, pb := range pubs {
					if pb.cmd.Err() != nil {
						continue
					}
					res.published++
					if pb.cmd.Val() == 0 {
						res.unreceived++
					}
					res.final[pb.topo] = max(res.final[pb.topo], pb.seq)
				}
				for _, c := range floods {
					if c.Err() == nil {
						res.flood++
					}
				}
				if time.Since(now) > time.Second && owe+oweFlood > 0 {
					// A second behind: give up on this backlog rather than
					// burst it out later; report it.
					res.behind += owe + oweFlood
					sent, floodSent = sent+owe, floodSent+oweFlood
					break
				}
			}
		}
	}
	res.stop = time.Now()
	if res.errors > 0 {
		p.log.Warn("publish errors", "count", res.errors, "last", res.lastErr)
	}
	return res
}

// topologyKey is the hash the hub's default snapshot source reads
// (docs/protocol.md §4).
func topologyKey(prefix, id string) string { return prefix + "topology:" + id }

// createTopologies writes each topology's hash with status seq:0, in
// pipelines.
func createTopologies(ctx context.Context, rdb *redis.Client, prefix string, ids []string) error {
	for i := 0; i < len(ids); i += publisherMaxBatch {
		pipe := rdb.Pipeline()
		for _, id := range ids[i:min(i+publisherMaxBatch, len(ids))] {
			pipe.HSet(ctx, topologyKey(prefix, id), "status", "seq:0")
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("create topologies in Redis: %w", err)
		}
	}
	return nil
}

// deleteTopologies removes what createTopologies wrote.
func deleteTopologies(ctx context.Context, rdb *redis.Client, prefix string, ids []string) error {
	for i := 0; i < len(ids); i += publisherMaxBatch {
		keys := make([]string, 0, publisherMaxBatch)
		for _, id := range ids[i:min(i+publisherMaxBatch, len(ids))] {
			keys = append(keys, topologyKey(prefix, id))
		}
		if err := rdb.Del(ctx, keys...).Err(); err != nil {
			return fmt.Errorf("delete topologies: %w", err)
		}
	}
	return nil
}
