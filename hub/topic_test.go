package hub

import (
	"strings"
	"testing"
)

func TestEventName(t *testing.T) {
	cases := []struct{ topic, want string }{
		{"topology.T.mutation.applied", "mutation.applied"},
		{"topology.T.mutation.enqueued", "mutation.enqueued"},
		{"topology.T.status", "status"},
		{"decky.web1.service_added", "decky.service_added"},
		{"decky.web1.service_removed", "decky.service_removed"},
		{"decky.host:web1.state", "decky.state"},
		{"decky.host-uuid:web1.service_config_changed", "decky.service_config_changed"},
		{"topology.T", "topology.T"},
		{"topology", "topology"},
		{"other.x.a.b", "a.b"},
	}
	for _, c := range cases {
		if got := EventName(c.topic); got != c.want {
			t.Errorf("EventName(%q) = %q, want %q", c.topic, got, c.want)
		}
	}
}

func TestValidToken(t *testing.T) {
	valid := []string{"T", "web1", "host:web1", "host-uuid:web1", "ünïcødé", "a_b", "42"}
	invalid := []string{"", "a.b", "a*", "*", ">", "a>b", "a b", "a\tb", "a\nb", "a\u00a0b", "\xff"}
	for _, s := range valid {
		if !ValidToken(s) {
			t.Errorf("ValidToken(%q) = false, want true", s)
		}
	}
	for _, s := range invalid {
		if ValidToken(s) {
			t.Errorf("ValidToken(%q) = true, want false", s)
		}
	}
}

func TestValidateTopic(t *testing.T) {
	for _, s := range []string{"topology.T.status", "decky.host:web1.state", "topology.T"} {
		if err := ValidateTopic(s); err != nil {
			t.Errorf("ValidateTopic(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "topology..status", "topology.T.", ".T", "topology.*", "topology.a b.status", "topology.>"} {
		if err := ValidateTopic(s); err == nil {
			t.Errorf("ValidateTopic(%q) = nil, want an error", s)
		}
	}
}

func TestValidateTopologyID(t *testing.T) {
	if err := ValidateTopologyID(strings.Repeat("a", MaxTopologyIDLen)); err != nil {
		t.Errorf("128 bytes: %v", err)
	}
	for _, id := range []string{strings.Repeat("a", MaxTopologyIDLen+1), "", "a.b", "a b", "*"} {
		if err := ValidateTopologyID(id); err == nil {
			t.Errorf("ValidateTopologyID(%.20q) = nil, want an error", id)
		}
	}
}

func TestParseFamilies(t *testing.T) {
	fs, err := ParseFamilies("topology=segment, decky=payload:topology_id")
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 2 || fs[0].Route != RouteSegment || fs[1].Route != RoutePayloadField || fs[1].Field != "topology_id" {
		t.Fatalf("ParseFamilies = %+v", fs)
	}
	if got := fs[1].Pattern(); got != "decky.*" {
		t.Errorf("Pattern = %q", got)
	}
	if got := (Family{Prefix: "a?b"}).Pattern(); got != `a\?b.*` {
		t.Errorf("Pattern escapes globs: got %q", got)
	}
	for _, bad := range []string{"x", "a.b=segment", "a=payload:", "a=other", "a=segment,a=segment"} {
		if _, err := ParseFamilies(bad); err == nil {
			t.Errorf("ParseFamilies(%q) = nil error", bad)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := FormatCursor(1764300000123, 42)
	if c != "1764300000123-42" {
		t.Fatalf("FormatCursor = %q", c)
	}
	e, s, ok := ParseCursor(c)
	if !ok || e != 1764300000123 || s != 42 {
		t.Fatalf("ParseCursor(%q) = %d, %d, %v", c, e, s, ok)
	}
	for _, bad := range []string{"", "1", "a-1", "1-a", "-1-2", "1-2-3", "1--2"} {
		if _, _, ok := ParseCursor(bad); ok {
			t.Errorf("ParseCursor(%q) accepted", bad)
		}
	}
}

// FuzzTopic holds the topic parser to its rules for any input: a topic is
// valid exactly when every dot-separated token is, the event name of a
// valid topic is a valid topic made of its own tokens, and a family
// specification either parses into families whose patterns are valid
// topics with a trailing wildcard, or fails with an error.
func FuzzTopic(f *testing.F) {
	for _, s := range []string{
		"topology.T.status", "decky.host:web1.state", "topology.T", "topology",
		"a..b", ".", "a.b*", "a.>", "ü.\xff", "topology=segment,decky=payload:topology_id", "x=", "=segment",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tokens := strings.Split(s, ".")
		allValid := s != ""
		for _, tok := range tokens {
			allValid = allValid && ValidToken(tok)
		}
		if (ValidateTopic(s) == nil) != allValid {
			t.Fatalf("ValidateTopic(%q) = %v, but its tokens valid = %v", s, ValidateTopic(s), allValid)
		}
		name := EventName(s)
		if allValid {
			if ValidateTopic(name) != nil {
				t.Fatalf("EventName(%q) = %q is not a valid topic", s, name)
			}
			if !strings.HasSuffix(s, name) && !(tokens[0] == "decky" && len(tokens) >= 3) {
				t.Fatalf("EventName(%q) = %q is not a suffix of the topic", s, name)
			}
		}
		if err := ValidateTopologyID(s); err == nil && (len(s) > MaxTopologyIDLen || len(tokens) != 1) {
			t.Fatalf("ValidateTopologyID accepted %q", s)
		}
		fams, err := ParseFamilies(s)
		if err != nil {
			return
		}
		for _, fam := range fams {
			p := fam.Pattern()
			if !strings.HasSuffix(p, ".*") || ValidateTopic(strings.TrimSuffix(p, ".*")) != nil {
				t.Fatalf("ParseFamilies(%q): pattern %q", s, p)
			}
		}
	})
}
