package hub

import (
	"fmt"
	"strings"
)

// RouteKind says how a family finds the topology an event belongs to.
type RouteKind int

const (
	// RouteSegment routes by the topic's second token: topology.<id>.…
	RouteSegment RouteKind = iota
	// RoutePayloadField routes by a string field of the payload:
	// decky.<name>.… with payload.topology_id.
	RoutePayloadField
)

// A Family is a topic prefix the hub subscribes to with one Redis pattern,
// and the rule that routes its events to a topology.
type Family struct {
	// Prefix is the first token of the family's topics, e.g. "topology".
	Prefix string
	// Route says how the topology id is found.
	Route RouteKind
	// Field is the payload field holding the topology id when Route is
	// RoutePayloadField.
	Field string
}

// DefaultFamilies returns the two families of docs/protocol.md §1:
// "topology=segment,decky=payload:topology_id".
func DefaultFamilies() []Family {
	return []Family{
		{Prefix: "topology", Route: RouteSegment},
		{Prefix: "decky", Route: RoutePayloadField, Field: "topology_id"},
	}
}

// ParseFamilies reads a family list such as
// "topology=segment,decky=payload:topology_id". An empty spec gives
// DefaultFamilies.
func ParseFamilies(spec string) ([]Family, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return DefaultFamilies(), nil
	}
	var out []Family
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		prefix, rule, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("family %q: want prefix=segment or prefix=payload:<field>", part)
		}
		if !ValidToken(prefix) {
			return nil, fmt.Errorf("family %q: prefix must be one topic token", part)
		}
		if seen[prefix] {
			return nil, fmt.Errorf("family %q: prefix given twice", prefix)
		}
		seen[prefix] = true
		f := Family{Prefix: prefix}
		switch {
		case rule == "segment":
			f.Route = RouteSegment
		case strings.HasPrefix(rule, "payload:") && len(rule) > len("payload:"):
			f.Route = RoutePayloadField
			f.Field = strings.TrimPrefix(rule, "payload:")
		default:
			return nil, fmt.Errorf("family %q: unknown route %q (want segment or payload:<field>)", prefix, rule)
		}
		out = append(out, f)
	}
	return out, nil
}

// Pattern is the Redis PSUBSCRIBE glob for the family: "<prefix>.*", with
// glob metacharacters in the prefix escaped.
func (f Family) Pattern() string {
	var b strings.Builder
	for _, r := range f.Prefix {
		switch r {
		case '?', '[', ']', '\\', '^':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteString(".*")
	return b.String()
}

func (f Family) String() string {
	if f.Route == RoutePayloadField {
		return f.Prefix + "=payload:" + f.Field
	}
	return f.Prefix + "=segment"
}
