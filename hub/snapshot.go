package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"time"
	"unicode/utf8"
)

// ErrNotFound is returned by a SnapshotSource for a topology that does not
// exist.
var ErrNotFound = errors.New("topology not found")

// A SnapshotSource knows whether a topology exists, its status and its
// in-flight mutations. Implementations: busredis.Snapshots.
type SnapshotSource interface {
	// Exists reports whether the topology exists.
	Exists(ctx context.Context, topologyID string) (bool, error)
	// Snapshot reads the topology's current state, or ErrNotFound.
	Snapshot(ctx context.Context, topologyID string) (Snapshot, error)
}

// A Snapshot is a topology's state at one moment.
type Snapshot struct {
	TopologyID string
	Status     string
	// InFlight holds mutation rows as stored by producers (JSON objects),
	// already in the order of OrderInFlight.
	InFlight []json.RawMessage
}

// EncodeSnapshot renders the snapshot's data per docs/protocol.md §3:
// {"topology_id","status","in_flight"} plus "resync":true after a gap.
// Rows that are not JSON objects (or not valid UTF-8) are left out.
func EncodeSnapshot(s Snapshot, resync bool) []byte {
	b := make([]byte, 0, 64+len(s.TopologyID)+len(s.Status))
	b = append(b, `{"topology_id":`...)
	b = AppendJSONString(b, s.TopologyID)
	b = append(b, `,"status":`...)
	b = AppendJSONString(b, s.Status)
	b = append(b, `,"in_flight":[`...)
	buf := bytes.NewBuffer(b)
	n := 0
	for _, row := range s.InFlight {
		mark := buf.Len()
		if n > 0 {
			buf.WriteByte(',')
		}
		start := buf.Len()
		if !utf8.Valid(row) {
			buf.Truncate(mark)
			continue
		}
		if err := json.Compact(buf, row); err != nil || buf.Len() == start || buf.Bytes()[start] != '{' {
			buf.Truncate(mark)
			continue
		}
		n++
	}
	buf.WriteByte(']')
	if resync {
		buf.WriteString(`,"resync":true`)
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// In-flight states, in the order the snapshot lists them.
var inFlightStates = []string{"pending", "applying"}

// OrderInFlight keeps the rows in state pending or applying and orders them
// per docs/protocol.md §3: pending (newest first) then applying (newest first), by
// requested_at (an ISO-8601 string or epoch seconds). Rows that are not
// JSON objects are dropped; a row whose requested_at cannot be read sorts
// last within its state, ties broken by id.
func OrderInFlight(rows []json.RawMessage) []json.RawMessage {
	type keyed struct {
		row   json.RawMessage
		state int
		at    time.Time
		id    string
	}
	var ks []keyed
	for _, row := range rows {
		var head struct {
			ID          json.RawMessage `json:"id"`
			State       string          `json:"state"`
			RequestedAt json.RawMessage `json:"requested_at"`
		}
		if err := json.Unmarshal(row, &head); err != nil {
			continue
		}
		state := -1
		for i, s := range inFlightStates {
			if head.State == s {
				state = i
			}
		}
		if state < 0 {
			continue
		}
		ks = append(ks, keyed{row: row, state: state, at: parseRequestedAt(head.RequestedAt), id: string(head.ID)})
	}
	sort.SliceStable(ks, func(i, j int) bool {
		a, b := ks[i], ks[j]
		if a.state != b.state {
			return a.state < b.state
		}
		if !a.at.Equal(b.at) {
			return a.at.After(b.at)
		}
		return a.id < b.id
	})
	out := make([]json.RawMessage, len(ks))
	for i, k := range ks {
		out[i] = k.row
	}
	return out
}

var isoLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
}

func parseRequestedAt(raw json.RawMessage) time.Time {
	if len(raw) == 0 {
		return time.Time{}
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return time.Time{}
		}
		for _, layout := range isoLayouts {
			if t, err := time.Parse(layout, s); err == nil {
				return t
			}
		}
		return time.Time{}
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return time.Time{}
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)).UTC()
}
