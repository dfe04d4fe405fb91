package handlers

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestDecodeControl(t *testing.T) {
	long := strings.Repeat("x", 129)
	cases := []struct {
		msg  string
		want controlFrame
		code errorCode // "" when the message is accepted
		id   string    // the id the error must echo
	}{
		{msg: `{"op":"subscribe","id":"1","topology":"T","since":"1-2"}`, want: controlFrame{Op: "subscribe", ID: []byte(`"1"`), Topology: "T", Since: "1-2"}},
		{msg: ` {"op":"subscribe","topology":"T"}`, want: controlFrame{Op: "subscribe", Topology: "T"}},
		{msg: `{"op":"unsubscribe","id":7,"topology":"host:web-1"}`, want: controlFrame{Op: "unsubscribe", ID: []byte(`7`), Topology: "host:web-1"}},
		{msg: `{"op":"ping","id":"3","extra":{"ignored":[1]}}`, want: controlFrame{Op: "ping", ID: []byte(`"3"`)}},
		{msg: `{"op":"ping","id":null}`, want: controlFrame{Op: "ping"}},
		{msg: `{"op":"refresh","id":"4","ticket":"abc"}`, want: controlFrame{Op: "refresh", ID: []byte(`"4"`), Ticket: "abc"}},
		{msg: `{"op":"refresh","id":"4","token":"a.b.c"}`, want: controlFrame{Op: "refresh", ID: []byte(`"4"`), Token: "a.b.c"}},

		{msg: ``, code: codeBadRequest},
		{msg: `not json`, code: codeBadRequest},
		{msg: `{"op":"ping"`, code: codeBadRequest},
		{msg: `{"op":"ping"} trailing`, code: codeBadRequest},
		{msg: `[1]`, code: codeBadRequest},
		{msg: `null`, code: codeBadRequest},
		{msg: `"ping"`, code: codeBadRequest},
		{msg: `{}`, code: codeBadRequest},
		{msg: `{"id":"1"}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":"dance","id":"1"}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":7,"id":"1"}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":"ping","id":{"a":1}}`, code: codeBadRequest},
		{msg: `{"op":"ping","id":true}`, code: codeBadRequest},
		{msg: `{"op":"subscribe","id":"1"}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":"subscribe","id":"1","topology":7}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":"subscribe","id":"1","topology":"T","since":5}`, code: codeBadRequest, id: `"1"`},
		{msg: `{"op":"refresh","id":"4"}`, code: codeBadRequest, id: `"4"`},
		{msg: `{"op":"refresh","id":"4","ticket":"","token":""}`, code: codeBadRequest, id: `"4"`},
		{msg: `{"op":"refresh","id":"4","ticket":"a","token":"b"}`, code: codeBadRequest, id: `"4"`},
		{msg: `{"op":"subscribe","id":"1","topology":""}`, code: codeInvalidTopology, id: `"1"`},
		{msg: `{"op":"subscribe","id":"1","topology":"a.b"}`, code: codeInvalidTopology, id: `"1"`},
		{msg: `{"op":"subscribe","id":"1","topology":"a*"}`, code: codeInvalidTopology, id: `"1"`},
		{msg: `{"op":"unsubscribe","id":"1","topology":"a b"}`, code: codeInvalidTopology, id: `"1"`},
		{msg: `{"op":"subscribe","id":"1","topology":"` + long + `"}`, code: codeInvalidTopology, id: `"1"`},
	}
	for _, c := range cases {
		f, cerr := decodeControl([]byte(c.msg))
		if c.code == "" {
			if cerr != nil {
				t.Errorf("%s: refused %s: %s", c.msg, cerr.Code, cerr.Message)
				continue
			}
			if f.Op != c.want.Op || string(f.ID) != string(c.want.ID) || f.Topology != c.want.Topology || f.Since != c.want.Since || f.Ticket != c.want.Ticket || f.Token != c.want.Token {
				t.Errorf("%s: got %+v (id %s), want %+v", c.msg, f, f.ID, c.want)
			}
			continue
		}
		if cerr == nil || cerr.Code != c.code {
			t.Errorf("%s: got %+v, want code %s", c.msg, cerr, c.code)
			continue
		}
		if string(f.ID) != c.id {
			t.Errorf("%s: error echoes id %q, want %q", c.msg, f.ID, c.id)
		}
	}
}

func TestServerFramesAreExact(t *testing.T) {
	cases := []struct{ got, want string }{
		{string(appendReply(nil, "subscribed", []byte(`"1"`), "T")), `{"op":"subscribed","id":"1","topology":"T"}`},
		{string(appendReply(nil, "pong", []byte(`3`), "")), `{"op":"pong","id":3}`},
		{string(appendReply(nil, "pong", nil, "")), `{"op":"pong"}`},
		{string(appendRefreshed(nil, []byte(`"4"`), time.Unix(1764303600, 0))), `{"op":"refreshed","id":"4","expires_at":1764303600}`},
		{string(appendError(nil, []byte(`"1"`), "", codeNotFound, "topology not found")), `{"op":"error","id":"1","code":"not_found","message":"topology not found"}`},
		{string(appendError(nil, nil, "T", codeNotFound, "topology not found")), `{"op":"error","topology":"T","code":"not_found","message":"topology not found"}`},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got  %s\nwant %s", c.got, c.want)
		}
	}
}

// FuzzDecodeControl checks that no client message panics the decoder, that
// an accepted message is one the handler can act on, and that the error
// frame answering a refused one is valid UTF-8 JSON echoing a valid id.
// The seed corpus runs with go test.
func FuzzDecodeControl(f *testing.F) {
	for _, seed := range []string{
		`{"op":"subscribe","id":"1","topology":"T","since":"1764300000000-42"}`,
		`{"op":"unsubscribe","id":"2","topology":"T"}`,
		`{"op":"ping","id":"3"}`,
		`{"op":"ping","id":-1.5e3}`,
		`{"op":"refresh","id":"4","ticket":"abc"}`,
		`{"op":"refresh","id":"4","token":"a.b.c"}`,
		"{\"op\":\"subscribe\",\"id\":\"\xff\xfe\",\"topology\":\"T\"}",
		`{"op":"subscribe","id":"\u00e9","topology":"caf\u00e9"}`,
		"{\"op\":\"subscribe\",\"topology\":\"\xff\"}",
		`{"OP":"PING"}`,
		`{"op":"subscribe","op":"ping"}`,
		`{"op":"subscribe","id":[],"topology":{}}`,
		`{"op":null,"id":null}`,
		`{`, `}`, `[]`, `null`, `0`, ``, " \t\n{}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		fr, cerr := decodeControl(msg)
		if fr.ID != nil && !json.Valid(fr.ID) {
			t.Fatalf("id %q is not JSON", fr.ID)
		}
		if cerr != nil {
			frame := appendError(nil, fr.ID, fr.Topology, cerr.Code, cerr.Message)
			if !json.Valid(frame) || !utf8.Valid(frame) {
				t.Fatalf("error frame %q is not valid UTF-8 JSON", frame)
			}
			return
		}
		if !json.Valid(msg) {
			t.Fatalf("accepted %q, which is not JSON", msg)
		}
		reply := appendReply(nil, "subscribed", fr.ID, fr.Topology)
		if !json.Valid(reply) || !utf8.Valid(reply) {
			t.Fatalf("reply %q is not valid UTF-8 JSON", reply)
		}
		switch fr.Op {
		case opSubscribe, opUnsubscribe:
			if fr.Topology == "" || len(fr.Topology) > 128 {
				t.Fatalf("accepted topology %q", fr.Topology)
			}
		case opPing:
		case opRefresh:
			if (fr.Ticket == "") == (fr.Token == "") {
				t.Fatalf("accepted refresh without exactly one credential: %+v", fr)
			}
		default:
			t.Fatalf("accepted op %q", fr.Op)
		}
	})
}
