package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// subprotocol is the WebSocket subprotocol of docs/protocol.md §8.
const subprotocol = "topohub.v1"

// wsSubscribeBurst is how many subscribes a client sends at once; beyond
// it they are paced under the hub's default control rate (20/s, burst 40).
const (
	wsSubscribeBurst = 30
	wsSubscribePace  = 55 * time.Millisecond
)

// wsReadLimit accepts any single event the hub may send (a bus body may
// be 1 MiB; one frame over the hub's message cap goes alone).
const wsReadLimit = 8 << 20

// wsClient is one WebSocket connection subscribed to its topologies. It
// runs one goroutine, the reader.
type wsClient struct {
	idx  int
	k    *sink
	subs []subStats
	conn *websocket.Conn

	// Reader-only handshake state: acks counted, hs receives the
	// handshake's outcome once (nil when every subscribe is acked).
	acks   int
	hsDone bool
	hs     chan error

	closing atomic.Bool   // set before the bench closes the connection
	alive   atomic.Bool   // false once the reader has exited
	done    chan struct{} // closed when the reader exits
}

// connectError is a failed handshake with the kind it is counted under.
type connectError struct {
	kind string
	err  error
}

func (e *connectError) Error() string { return e.kind + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

func newWSClient(idx int, k *sink, topos []int) *wsClient {
	c := &wsClient{idx: idx, k: k, subs: make([]subStats, len(topos)), hs: make(chan error, 1), done: make(chan struct{})}
	for j, t := range topos {
		c.subs[j].init(t)
	}
	return c
}

// connect dials, subscribes to every topology and waits for the acks. On
// success the reader keeps running until close.
func (c *wsClient) connect(ctx context.Context, d *dialers, url, token string, timeout time.Duration) error {
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, resp, err := websocket.Dial(hctx, url, &websocket.DialOptions{
		HTTPClient:   d.ws[d.pick(c.idx)],
		HTTPHeader:   http.Header{"Authorization": {"Bearer " + token}},
		Subprotocols: []string{subprotocol},
	})
	if err != nil {
		kind := "ws_dial"
		if resp != nil {
			kind = "ws_http_" + strconv.Itoa(resp.StatusCode)
		} else if hctx.Err() != nil {
			kind = "ws_dial_timeout"
		}
		return &connectError{kind, err}
	}
	if conn.Subprotocol() != subprotocol {
		_ = conn.CloseNow()
		return &connectError{"ws_subprotocol", fmt.Errorf("hub selected subprotocol %q", conn.Subprotocol())}
	}
	conn.SetReadLimit(wsReadLimit)
	c.conn = conn
	c.alive.Store(true)
	c.k.readers.Add(1)
	go c.read()

	msg := make([]byte, 0, 128)
	for j := range c.subs {
		if j >= wsSubscribeBurst {
			select {
			case <-time.After(wsSubscribePace):
			case <-hctx.Done():
			}
		}
		msg = append(msg[:0], `{"op":"subscribe","id":"`...)
		msg = strconv.AppendInt(msg, int64(j), 10)
		msg = append(msg, `","topology":"`...)
		msg = append(msg, c.k.topoPrefix...)
		msg = strconv.AppendInt(msg, int64(c.subs[j].topo), 10)
		msg = append(msg, `"}`...)
		if err := conn.Write(hctx, websocket.MessageText, msg); err != nil {
			c.abort()
			return &connectError{"ws_subscribe_write", err}
		}
	}
	select {
	case err := <-c.hs:
		if err != nil {
			c.abort()
			var ce *connectError
			if errors.As(err, &ce) {
				return ce
			}
			return &connectError{"ws_subscribe", err}
		}
		return nil
	case <-hctx.Done():
		c.abort()
		return &connectError{"ws_subscribe_timeout", fmt.Errorf("not all %d subscribes acknowledged within %s", len(c.subs), timeout)}
	}
}

// abort drops a connection whose handshake failed.
func (c *wsClient) abort() {
	c.closing.Store(true)
	_ = c.conn.CloseNow()
	<-c.done
}

// close ends the connection with a normal closure and waits for the
// reader.
func (c *wsClient) close() {
	if c.conn == nil {
		return
	}
	c.closing.Store(true)
	if err := c.conn.Close(websocket.StatusNormalClosure, "bench done"); err != nil {
		_ = c.conn.CloseNow()
	}
	<-c.done
}

// msgBufs recycles message buffers: only readers that are processing a
// message hold one, not every idle connection.
var msgBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (c *wsClient) read() {
	defer c.k.readers.Done()
	defer close(c.done)
	defer c.alive.Store(false)
	for {
		typ, r, err := c.conn.Reader(context.Background())
		if err != nil {
			c.ended(err)
			return
		}
		bp := msgBufs.Get().(*[]byte)
		b, err := readInto((*bp)[:0], r)
		if err == nil && typ == websocket.MessageText {
			c.message(b, time.Now().UnixNano())
		}
		if cap(b) <= 1<<20 {
			*bp = b[:0]
			msgBufs.Put(bp)
		}
		if err != nil {
			c.ended(err)
			return
		}
	}
}

// ended records why the reader stopped.
func (c *wsClient) ended(err error) {
	c.finishHS(&connectError{"ws_closed_during_handshake", err})
	if c.closing.Load() {
		return
	}
	kind := "ws_disconnect"
	if code := websocket.CloseStatus(err); code != -1 {
		kind = "ws_closed_" + strconv.Itoa(int(code))
	}
	c.k.errs.add(kind, err)
}

func (c *wsClient) finishHS(err error) {
	if !c.hsDone {
		c.hsDone = true
		c.hs <- err
	}
}

// message handles one server message: frames separated by '\n'.
func (c *wsClient) message(b []byte, now int64) {
	for len(b) > 0 {
		f := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			f, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(f) > 0 {
			c.frame(f, now)
		}
	}
}

func (c *wsClient) frame(f []byte, now int64) {
	fr, err := parseWSFrame(f)
	if err != nil {
		c.k.errs.add("ws_bad_frame", err)
		return
	}
	switch string(fr.op) {
	case "event":
		s := c.sub(fr.topology)
		if s == nil {
			c.k.errs.add("ws_unknown_topology", fmt.Errorf("event for topology %q", fr.topology))
			return
		}
		c.k.event(s, fr.event, fr.data, now, c.idx)
	case "subscribed":
		c.acks++
		if c.acks == len(c.subs) {
			c.finishHS(nil)
		}
	case "error":
		err := fmt.Errorf("error frame: %s", f)
		kind := "ws_error_" + string(fr.code)
		if !c.hsDone {
			c.finishHS(&connectError{kind, err})
			return
		}
		c.k.errs.add(kind, err)
	case "pong", "unsubscribed", "refreshed":
	default:
		c.k.errs.add("ws_unknown_op", fmt.Errorf("frame %.200s", f))
	}
}

// sub finds the subscription to a topology id.
func (c *wsClient) sub(id []byte) *subStats {
	n, ok := c.k.topoIndex(id)
	if !ok {
		return nil
	}
	for j := range c.subs {
		if c.subs[j].topo == n {
			return &c.subs[j]
		}
	}
	return nil
}

// readInto reads r to the end, appending to b.
func readInto(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}
