package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"sync"
	"time"
)

// sink is what every client reports into.
type sink struct {
	hist *histogram
	errs *errorCounts
	// topoPrefix is "bench-<run>-": a topology id is it plus the index.
	topoPrefix []byte
	// readers counts the clients' reader goroutines.
	readers sync.WaitGroup
}

// Event names and markers of docs/protocol.md §2 and §3 the bench looks for. The
// publisher's topic topology.<id>.bench gives the event name "bench"; its
// decky.<name>.traffic flood would give "decky.traffic".
var (
	evBench    = []byte("bench")
	evSnapshot = []byte("snapshot")
	evFlood    = []byte("decky.traffic")
	keySeq     = []byte(`"seq":`)
	keySent    = []byte(`"sent":`)
	keyStatus  = []byte(`"status":"seq:`)
	markResync = []byte(`"resync":true`)
)

// topoIndex reads n from a topology id bench-<run>-<n>.
func (k *sink) topoIndex(id []byte) (int, bool) {
	if !bytes.HasPrefix(id, k.topoPrefix) {
		return 0, false
	}
	n, ok := atoiBytes(id[len(k.topoPrefix):])
	return int(n), ok
}

// event accounts for one event frame of subscription s received at now
// (unix nanoseconds). shard spreads histogram writes.
func (k *sink) event(s *subStats, name, data []byte, now int64, shard int) {
	switch {
	case bytes.Equal(name, evBench):
		seq, ok1 := intAfter(data, keySeq)
		sent, ok2 := intAfter(data, keySent)
		if !ok1 || !ok2 {
			s.unexpected++
			return
		}
		k.hist.add(shard, time.Duration(now-sent))
		s.onEvent(seq, now)
	case bytes.Equal(name, evSnapshot):
		seq, ok := intAfter(data, keyStatus)
		if !ok {
			// Someone else wrote the topology's status: the snapshot
			// cannot be placed in the sequence.
			s.unexpected++
			k.errs.add("snapshot_without_seq", errors.New("snapshot status is not seq:<n>"))
			return
		}
		s.onSnapshot(seq, bytes.Contains(data, markResync), now)
	case bytes.Equal(name, evFlood):
		s.flood++
	default:
		s.unexpected++
	}
}

// intAfter parses the decimal integer right after key in data.
func intAfter(data, key []byte) (int64, bool) {
	i := bytes.Index(data, key)
	if i < 0 {
		return 0, false
	}
	rest := data[i+len(key):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	return atoiBytes(rest[:j])
}

// atoiBytes parses a non-negative decimal int64 (unix nanoseconds have
// 19 digits).
func atoiBytes(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

// wsFrame is one server frame of docs/protocol.md §8. Its slices point into the
// message buffer and are valid until the next message is read.
type wsFrame struct {
	op, topology, event, id, code []byte
	data                          []byte
}

var (
	wsEventPrefix = []byte(`{"op":"event","topology":"`)
	wsEventName   = []byte(`,"event":"`)
	wsEventID     = []byte(`,"id":"`)
	wsEventData   = []byte(`,"data":`)
	opEvent       = []byte("event")
)

// parseWSFrame reads a frame. Event frames as the hub writes them today
// (op, topology, event, id, data in that order, no escapes in the
// strings) are sliced without decoding; anything else, including the
// same frame with other key order or spacing, goes through encoding/json.
func parseWSFrame(f []byte) (wsFrame, error) {
	if fr, ok := fastEventFrame(f); ok {
		return fr, nil
	}
	var v struct {
		Op       string          `json:"op"`
		Topology string          `json:"topology"`
		Event    string          `json:"event"`
		ID       json.RawMessage `json:"id"`
		Code     string          `json:"code"`
		Data     json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(f, &v); err != nil {
		return wsFrame{}, err
	}
	id := v.ID
	if s, err := strconv.Unquote(string(id)); err == nil {
		id = []byte(s)
	}
	return wsFrame{op: []byte(v.Op), topology: []byte(v.Topology), event: []byte(v.Event), id: id, code: []byte(v.Code), data: v.Data}, nil
}

func fastEventFrame(f []byte) (wsFrame, bool) {
	var fr wsFrame
	rest, ok := bytes.CutPrefix(f, wsEventPrefix)
	if !ok {
		return fr, false
	}
	if fr.topology, rest, ok = cutString(rest); !ok {
		return fr, false
	}
	if rest, ok = bytes.CutPrefix(rest, wsEventName); !ok {
		return fr, false
	}
	if fr.event, rest, ok = cutString(rest); !ok {
		return fr, false
	}
	if rest, ok = bytes.CutPrefix(rest, wsEventID); !ok {
		return fr, false
	}
	if fr.id, rest, ok = cutString(rest); !ok {
		return fr, false
	}
	if rest, ok = bytes.CutPrefix(rest, wsEventData); !ok || len(rest) < 3 || rest[0] != '{' || rest[len(rest)-1] != '}' {
		return fr, false
	}
	fr.op, fr.data = opEvent, rest[:len(rest)-1]
	return fr, true
}

// cutString cuts a JSON string body up to its closing quote; a string
// with escapes is refused (the caller decodes the frame instead).
func cutString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '"')
	if i < 0 || bytes.IndexByte(b[:i], '\\') >= 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}
