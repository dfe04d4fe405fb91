package hub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultMaxBodySize is the largest Redis message body the hub accepts.
const DefaultMaxBodySize = 1 << 20

// DropReason names why a bus message never reached a client.
type DropReason int

const (
	DropTooLarge   DropReason = iota // body over the size limit
	DropBadChannel                   // channel breaks the token rules
	DropNoFamily                     // channel outside every configured family
	DropNotJSON                      // body is not JSON
	DropNotObject                    // body is JSON but not an object
	DropBadPayload                   // "payload" is not an object
	DropBadField                     // "type" not a string or "ts" not a number
	DropUnrouted                     // no topology: missing routing field, or one that is not a valid id
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"too_large", "bad_channel", "no_family", "not_json", "not_object",
	"bad_payload", "bad_field", "unrouted",
}

func (r DropReason) String() string {
	if r < 0 || r >= numDropReasons {
		return "unknown"
	}
	return dropReasonNames[r]
}

// DropReasons lists every reason, for metrics.
func DropReasons() []DropReason {
	out := make([]DropReason, numDropReasons)
	for i := range out {
		out[i] = DropReason(i)
	}
	return out
}

// A DropError says why a bus message was dropped.
type DropError struct {
	Reason  DropReason
	Channel string
	Detail  string
}

func (e *DropError) Error() string {
	return fmt.Sprintf("drop %s on %q: %s", e.Reason, e.Channel, e.Detail)
}

// An Event is one message for the clients of one topology: a bus event or
// a snapshot. Its data is encoded once and its frames are built at most
// once per transport; every subscriber shares the same bytes.
type Event struct {
	Topology string
	Name     string // client-facing event name (EventName, or "snapshot")
	Seq      uint64 // cursor sequence; set by the hub
	Cursor   string // "<epoch>-<seq>"; set by the hub
	Data     []byte // one line of compact JSON

	received time.Time

	sseOnce sync.Once
	sse     []byte
	wsOnce  sync.Once
	ws      []byte
}

// SSEFrame is the event as one SSE frame: id, event and data lines and a
// blank line. Built once, shared by every SSE subscriber.
func (e *Event) SSEFrame() []byte {
	e.sseOnce.Do(func() {
		b := make([]byte, 0, len(e.Cursor)+len(e.Name)+len(e.Data)+24)
		b = append(b, "id: "...)
		b = append(b, e.Cursor...)
		b = append(b, "\nevent: "...)
		b = append(b, e.Name...)
		b = append(b, "\ndata: "...)
		b = append(b, e.Data...)
		b = append(b, "\n\n"...)
		e.sse = b
	})
	return e.sse
}

// WSFrame is the event as one WebSocket frame of docs/protocol.md §8, without a
// trailing newline. Built once, shared by every WebSocket subscriber.
func (e *Event) WSFrame() []byte {
	e.wsOnce.Do(func() {
		b := make([]byte, 0, len(e.Topology)+len(e.Cursor)+len(e.Name)+len(e.Data)+56)
		b = append(b, `{"op":"event","topology":`...)
		b = AppendJSONString(b, e.Topology)
		b = append(b, `,"event":`...)
		b = AppendJSONString(b, e.Name)
		b = append(b, `,"id":`...)
		b = AppendJSONString(b, e.Cursor)
		b = append(b, `,"data":`...)
		b = append(b, e.Data...)
		b = append(b, '}')
		e.ws = b
	})
	return e.ws
}

// A Decoder turns bus messages into events per docs/protocol.md §1 and §3.
type Decoder struct {
	families []Family
	maxBody  int
	fields   map[string][]byte // payload field -> `"field"` for the fast path
}

// NewDecoder returns a decoder for the given families. maxBody <= 0 means
// DefaultMaxBodySize.
func NewDecoder(families []Family, maxBody int) *Decoder {
	if maxBody <= 0 {
		maxBody = DefaultMaxBodySize
	}
	d := &Decoder{families: families, maxBody: maxBody, fields: map[string][]byte{}}
	for _, f := range families {
		if f.Route == RoutePayloadField {
			d.fields[f.Field] = AppendJSONString(nil, f.Field)
		}
	}
	return d
}

// Families returns the families the decoder routes.
func (d *Decoder) Families() []Family { return d.families }

// errNoRoutingField is the fast path's drop: shared, so skipping a
// high-volume event allocates nothing.
var errNoRoutingField = &DropError{Reason: DropUnrouted, Detail: "no routing field in the body"}

func drop(r DropReason, channel, format string, args ...any) *DropError {
	return &DropError{Reason: r, Channel: channel, Detail: fmt.Sprintf(format, args...)}
}

// Decode turns one (channel, body) pair into an event for one topology,
// with its data encoded. now is the receive time, used when the body has
// no ts. A message that cannot reach a client gives a *DropError.
func (d *Decoder) Decode(channel string, body []byte, now time.Time) (*Event, error) {
	return d.decode(channel, body, func() time.Time { return now })
}

// decode is Decode reading the clock only for a message it keeps: the
// high-volume drops of the fast path must not pay for it.
func (d *Decoder) decode(channel string, body []byte, clock func() time.Time) (*Event, error) {
	if len(body) > d.maxBody {
		return nil, drop(DropTooLarge, channel, "%d bytes, limit %d", len(body), d.maxBody)
	}
	if err := ValidateTopic(channel); err != nil {
		return nil, drop(DropBadChannel, channel, "%v", err)
	}
	head, rest, ok := strings.Cut(channel, ".")
	var fam *Family
	for i := range d.families {
		if d.families[i].Prefix == head {
			fam = &d.families[i]
			break
		}
	}
	if fam == nil || !ok {
		return nil, drop(DropNoFamily, channel, "no family routes this topic")
	}
	if fam.Route == RoutePayloadField {
		// High-volume families (decky.*.traffic) mostly carry no routing
		// field: skip them without decoding. A backslash might hide the
		// key behind escapes, so only then is the slow path taken.
		if !bytes.Contains(body, d.fields[fam.Field]) && bytes.IndexByte(body, '\\') < 0 {
			return nil, errNoRoutingField
		}
	}

	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if !utf8.Valid(body) {
		// encoding/json would pass invalid bytes through, and a browser
		// fails a WebSocket on a text message that is not UTF-8: every
		// subscriber of the topology would be knocked off on each replay.
		return nil, drop(DropNotJSON, channel, "body is not valid UTF-8")
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if json.Valid(body) {
			return nil, drop(DropNotObject, channel, "body is not a JSON object")
		}
		return nil, drop(DropNotJSON, channel, "body is not JSON")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, drop(DropNotJSON, channel, "%v", err)
	}

	payload, isEnvelope := top["payload"]
	typ := []byte(`""`)
	var ts []byte
	if isEnvelope {
		if len(payload) == 0 || payload[0] != '{' {
			return nil, drop(DropBadPayload, channel, "payload is not a JSON object")
		}
		if raw, ok := top["type"]; ok && !isNull(raw) {
			if raw[0] != '"' {
				return nil, drop(DropBadField, channel, "type is not a string")
			}
			typ = raw
		}
		if raw, ok := top["ts"]; ok && !isNull(raw) {
			if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
				return nil, drop(DropBadField, channel, "ts is not a number")
			}
			ts = raw
		}
	} else {
		payload = body
	}

	var topology string
	switch fam.Route {
	case RouteSegment:
		topology, _, _ = strings.Cut(rest, ".")
		if len(topology) > MaxTopologyIDLen {
			return nil, drop(DropUnrouted, channel, "topology id longer than %d bytes", MaxTopologyIDLen)
		}
	case RoutePayloadField:
		src := top
		if isEnvelope {
			src = nil
			if err := json.Unmarshal(payload, &src); err != nil {
				return nil, drop(DropBadPayload, channel, "%v", err)
			}
		}
		raw, ok := src[fam.Field]
		if !ok || len(raw) == 0 || raw[0] != '"' {
			return nil, drop(DropUnrouted, channel, "%s missing, null or not a string", fam.Field)
		}
		if err := json.Unmarshal(raw, &topology); err != nil || ValidateTopologyID(topology) != nil {
			return nil, drop(DropUnrouted, channel, "%s is not a valid topology id", fam.Field)
		}
	}

	now := clock()
	data := make([]byte, 0, len(channel)+len(typ)+len(payload)+64)
	data = append(data, `{"topic":`...)
	data = AppendJSONString(data, channel)
	data = append(data, `,"type":`...)
	data = append(data, typ...)
	data = append(data, `,"ts":`...)
	if ts != nil {
		data = append(data, ts...)
	} else {
		data = strconv.AppendFloat(data, float64(now.UnixMicro())/1e6, 'f', -1, 64)
	}
	data = append(data, `,"payload":`...)
	buf := bytes.NewBuffer(data)
	if err := json.Compact(buf, payload); err != nil {
		return nil, drop(DropBadPayload, channel, "%v", err)
	}
	buf.WriteByte('}')

	name := EventName(channel)
	if n := wsFrameLen(topology, name, buf.Len()); n > MaxWSMessage {
		// Common clients read at most 1 MiB per message (Python websockets'
		// max_size, and others'), and close with 1009 on more: the event
		// goes to no transport rather than knocking every WebSocket
		// subscriber of the topology off on each replay.
		return nil, drop(DropTooLarge, channel, "websocket frame would be %d bytes, limit %d", n, MaxWSMessage)
	}
	return &Event{
		Topology: topology,
		Name:     name,
		Data:     buf.Bytes(),
		received: now,
	}, nil
}

// MaxWSMessage is the largest WebSocket message the hub sends: the
// default read limit of common client libraries (1 MiB).
const MaxWSMessage = 1 << 20

// maxCursorLen bounds a cursor: a millisecond epoch and a sequence, each
// at most 20 digits.
const maxCursorLen = 41

// wsFrameLen bounds the length of WSFrame for an event of that topology,
// name and data length.
func wsFrameLen(topology, name string, dataLen int) int {
	var scratch [2 * (MaxTopologyIDLen + 8)]byte
	n := len(`{"op":"event","topology":,"event":,"id":"","data":}`) + maxCursorLen + dataLen
	n += len(AppendJSONString(scratch[:0], topology))
	n += len(AppendJSONString(scratch[:0], name))
	return n
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// AppendJSONString appends s as a JSON string literal. s is expected to be
// valid UTF-8; invalid bytes become U+FFFD.
func AppendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
