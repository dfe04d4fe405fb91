package hub

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxTopologyIDLen is the longest topology id a client may subscribe to.
const MaxTopologyIDLen = 128

// Names of the events the hub itself emits.
const (
	EventSnapshot = "snapshot"
	EventError    = "error"
)

// ErrInvalidTopology is returned for a topology id that is empty, breaks the
// token rules or is longer than MaxTopologyIDLen.
var ErrInvalidTopology = errors.New("invalid topology id")

// ValidToken reports whether s is a legal topic token: non-empty, valid
// UTF-8, and free of '.', '*', '>' and white space.
func ValidToken(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// ValidateTopic checks that every dot-separated token of topic is legal.
func ValidateTopic(topic string) error {
	if topic == "" {
		return errors.New("empty topic")
	}
	rest := topic
	for i := 0; ; i++ {
		tok, tail, more := strings.Cut(rest, ".")
		if !ValidToken(tok) {
			return fmt.Errorf("topic %q: token %d is empty or holds '*', '>' or white space", topic, i)
		}
		if !more {
			return nil
		}
		rest = tail
	}
}

// ValidateTopologyID checks a topology id given by a client or a URL.
func ValidateTopologyID(id string) error {
	if len(id) > MaxTopologyIDLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidTopology, MaxTopologyIDLen)
	}
	if !ValidToken(id) {
		return fmt.Errorf("%w: %q is empty or holds '.', '*', '>' or white space", ErrInvalidTopology, id)
	}
	return nil
}

// EventName maps a bus topic to the client-facing event name. Both
// transports call it, so SSE `event:` and WebSocket `event` always agree.
//
//	topology.<id>.mutation.applied -> mutation.applied
//	decky.<name>.service_added     -> decky.service_added
//	a topic of fewer than 3 tokens -> the topic unchanged
func EventName(topic string) string {
	head, rest, ok := strings.Cut(topic, ".")
	if !ok {
		return topic
	}
	_, tail, ok := strings.Cut(rest, ".")
	if !ok {
		return topic
	}
	if head == "decky" {
		return topic[:len(head)+1] + tail
	}
	return tail
}
