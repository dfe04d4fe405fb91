package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"topohub/hub"
)

// Ops a client sends on the WebSocket (docs/protocol.md §8).
const (
	opSubscribe   = "subscribe"
	opUnsubscribe = "unsubscribe"
	opPing        = "ping"
	opRefresh     = "refresh"
)

// An errorCode is the "code" of an error frame. The connection stays open
// after every one of them.
type errorCode string

const (
	// codeBadRequest: not JSON, not an object, an unknown op, a missing
	// field or a field of the wrong type.
	codeBadRequest errorCode = "bad_request"
	// codeInvalidTopology: the topology id is empty, breaks the token
	// rules or is longer than hub.MaxTopologyIDLen.
	codeInvalidTopology errorCode = "invalid_topology"
	// codeNotFound: the topology does not exist (at subscribe), or no
	// longer exists (sent without an id when it is deleted later).
	codeNotFound errorCode = "not_found"
	// codeForbidden: a refresh whose credentials are refused or belong to
	// another user; the session is not extended.
	codeForbidden errorCode = "forbidden"
	// codeTooManySubscriptions: the connection already holds
	// hub.Config.MaxSubscriptions topologies.
	codeTooManySubscriptions errorCode = "too_many_subscriptions"
	// codeRateLimited: over Config.ControlRate; the message was ignored.
	codeRateLimited errorCode = "rate_limited"
	// codeUnavailable: the snapshot source or the ticket store failed;
	// the request may be retried. (topohub's addition to the contract.)
	codeUnavailable errorCode = "unavailable"
)

// maxControlMessage is the largest client message (docs/protocol.md §8); a larger
// one closes the connection with CloseTooBig.
const maxControlMessage = 4096

// controlFrame is one decoded client message.
type controlFrame struct {
	Op string
	// ID is the request id as the client wrote it (a JSON string or
	// number), echoed verbatim in the reply; nil when absent.
	ID       []byte
	Topology string // subscribe, unsubscribe
	Since    string // subscribe; "" means none
	Ticket   string // refresh: exactly one of Ticket and Token
	Token    string
}

// controlError is a refused client message, answered by an error frame.
type controlError struct {
	Code    errorCode
	Message string
}

func badRequest(msg string) *controlError {
	return &controlError{Code: codeBadRequest, Message: msg}
}

// controlWire is the JSON shape of a client message; pointers tell an
// absent field from an empty one.
type controlWire struct {
	Op       *string         `json:"op"`
	ID       json.RawMessage `json:"id"`
	Topology *string         `json:"topology"`
	Since    *string         `json:"since"`
	Ticket   *string         `json:"ticket"`
	Token    *string         `json:"token"`
}

// decodeControl parses and checks one client message. It is pure, so the
// fuzz target can drive it. On error the returned frame still carries the
// request id when one could be read, so the error frame can echo it.
// Unknown fields are ignored, for forward compatibility.
func decodeControl(msg []byte) (controlFrame, *controlError) {
	var f controlFrame
	trimmed := bytes.TrimLeft(msg, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if json.Valid(msg) {
			return f, badRequest("message is not a JSON object")
		}
		return f, badRequest("message is not JSON")
	}
	var w controlWire
	err := json.Unmarshal(msg, &w)
	var typeErr *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &typeErr) {
		return f, badRequest("message is not JSON")
	}
	// A type error still fills the other fields: keep the id if it is one.
	if id, ok := requestID(w.ID); ok {
		f.ID = id
	} else {
		return f, badRequest("id must be a string or a number")
	}
	if typeErr != nil {
		return f, badRequest("field " + strconv.Quote(typeErr.Field) + " must be a string")
	}
	if w.Op == nil {
		return f, badRequest("missing op")
	}
	f.Op = *w.Op
	switch f.Op {
	case opSubscribe, opUnsubscribe:
		if w.Topology == nil {
			return f, badRequest("missing topology")
		}
		if hub.ValidateTopologyID(*w.Topology) != nil {
			return f, &controlError{Code: codeInvalidTopology, Message: "topology id is empty, longer than 128 bytes, or holds '.', '*', '>' or white space"}
		}
		f.Topology = *w.Topology
		if f.Op == opSubscribe && w.Since != nil {
			f.Since = *w.Since
		}
	case opPing:
	case opRefresh:
		if w.Ticket != nil {
			f.Ticket = *w.Ticket
		}
		if w.Token != nil {
			f.Token = *w.Token
		}
		if (f.Ticket == "") == (f.Token == "") {
			return f, badRequest("refresh needs exactly one of ticket and token")
		}
	default:
		return f, badRequest("unknown op")
	}
	return f, nil
}

// requestID checks a raw "id": absent or null gives nil; a string or a
// number is kept as written, except that a string holding invalid UTF-8
// is re-encoded (a text message must be UTF-8, or the browser drops the
// connection).
func requestID(raw json.RawMessage) ([]byte, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	switch c := raw[0]; {
	case c == '-', c >= '0' && c <= '9':
		return raw, true
	case c == '"':
		if utf8.Valid(raw) {
			return raw, true
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return nil, false
		}
		return hub.AppendJSONString(nil, s), true
	}
	return nil, false
}

// Server messages. Each appends one frame of docs/protocol.md §8 to b.

// appendReply appends {"op":op,"id":id,"topology":topology}; id and
// topology are left out when empty.
func appendReply(b []byte, op string, id []byte, topology string) []byte {
	b = append(b, `{"op":`...)
	b = hub.AppendJSONString(b, op)
	b = appendID(b, id)
	if topology != "" {
		b = append(b, `,"topology":`...)
		b = hub.AppendJSONString(b, topology)
	}
	return append(b, '}')
}

// appendRefreshed appends the reply to a successful refresh; expires_at is
// left out for a session without an end.
func appendRefreshed(b []byte, id []byte, expires time.Time) []byte {
	b = append(b, `{"op":"refreshed"`...)
	b = appendID(b, id)
	if !expires.IsZero() {
		b = append(b, `,"expires_at":`...)
		b = strconv.AppendInt(b, expires.Unix(), 10)
	}
	return append(b, '}')
}

// appendError appends an error frame. id is left out when nil (an error
// no request caused), topology when empty.
func appendError(b []byte, id []byte, topology string, code errorCode, msg string) []byte {
	b = append(b, `{"op":"error"`...)
	b = appendID(b, id)
	if topology != "" {
		b = append(b, `,"topology":`...)
		b = hub.AppendJSONString(b, topology)
	}
	b = append(b, `,"code":`...)
	b = hub.AppendJSONString(b, string(code))
	b = append(b, `,"message":`...)
	b = hub.AppendJSONString(b, msg)
	return append(b, '}')
}

func appendID(b []byte, id []byte) []byte {
	if id == nil {
		return b
	}
	b = append(b, `,"id":`...)
	return append(b, id...)
}
