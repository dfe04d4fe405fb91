package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// sseClient is one legacy EventSource user: one stream per topology
// (docs/protocol.md §7), each read by one goroutine. The request is written and
// the response read on a plain connection, not through http.Transport,
// which would add two goroutines per stream.
type sseClient struct {
	idx     int
	k       *sink
	subs    []subStats
	streams []*sseStream
	closing atomic.Bool
}

// sseStream is one open stream of an sseClient.
type sseStream struct {
	c     *sseClient
	sub   *subStats
	conn  net.Conn
	alive atomic.Bool
	done  chan struct{}
}

// sseLineBuffer is the read buffer of one stream; longer lines are
// assembled in a side buffer.
const sseLineBuffer = 4096

func newSSEClient(idx int, k *sink, topos []int) *sseClient {
	c := &sseClient{idx: idx, k: k, subs: make([]subStats, len(topos))}
	for j, t := range topos {
		c.subs[j].init(t)
	}
	return c
}

// connect opens every stream in turn; the handshake ends at the first
// bytes of the last one. On failure the streams already open are closed.
func (c *sseClient) connect(ctx context.Context, d *dialers, urlOf func(topo int) string, token string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for j := range c.subs {
		s, err := c.open(ctx, d, &c.subs[j], urlOf(c.subs[j].topo), token, deadline)
		if err != nil {
			c.close()
			return err
		}
		c.streams = append(c.streams, s)
	}
	return nil
}

func (c *sseClient) open(ctx context.Context, d *dialers, sub *subStats, url, token string, deadline time.Time) (*sseStream, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := d.raw[d.pick(c.idx)].DialContext(dctx, "tcp", d.addr)
	if err != nil {
		return nil, &connectError{"sse_dial", err}
	}
	if d.tls != nil {
		tc := tls.Client(conn, d.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			conn.Close()
			return nil, &connectError{"sse_tls", err}
		}
		conn = tc
	}
	_ = conn.SetDeadline(deadline)
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		conn.Close()
		return nil, &connectError{"sse_request", err}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, &connectError{"sse_write", err}
	}
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, &connectError{"sse_response", err}
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		conn.Close()
		return nil, &connectError{"sse_http_" + strconv.Itoa(resp.StatusCode), fmt.Errorf("GET %s: %s %s", req.URL.Path, resp.Status, bytes.TrimSpace(body))}
	}
	lr := bufio.NewReaderSize(resp.Body, sseLineBuffer)
	if _, err := lr.Peek(1); err != nil {
		conn.Close()
		return nil, &connectError{"sse_first_bytes", err}
	}
	_ = conn.SetDeadline(time.Time{})
	s := &sseStream{c: c, sub: sub, conn: conn, done: make(chan struct{})}
	s.alive.Store(true)
	c.k.readers.Add(1)
	go s.read(lr)
	return s, nil
}

// close ends every stream and waits for their readers.
func (c *sseClient) close() {
	c.closing.Store(true)
	for _, s := range c.streams {
		s.conn.Close()
	}
	for _, s := range c.streams {
		<-s.done
	}
}

// alive reports whether every stream is still open.
func (c *sseClient) alive() bool {
	for _, s := range c.streams {
		if !s.alive.Load() {
			return false
		}
	}
	return true
}

var (
	sseData  = []byte("data:")
	sseEvent = []byte("event:")
	sseError = []byte("error")
)

// read parses frames (id:, event:, data: lines, a blank line ends one;
// comments start with ':').
func (s *sseStream) read(lr *bufio.Reader) {
	defer s.c.k.readers.Done()
	defer close(s.done)
	defer s.alive.Store(false)
	var name, data, long []byte
	for {
		line, err := lr.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			continue
		}
		if err != nil {
			s.ended(err)
			return
		}
		if len(long) > 0 {
			long = append(long, line...)
			line = long
		}
		line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
		switch {
		case len(line) == 0:
			if len(data) > 0 || len(name) > 0 {
				s.dispatch(name, data)
			}
			name, data = name[:0], data[:0]
		case line[0] == ':':
		case bytes.HasPrefix(line, sseData):
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, fieldValue(line, len(sseData))...)
		case bytes.HasPrefix(line, sseEvent):
			name = append(name[:0], fieldValue(line, len(sseEvent))...)
		}
		long = long[:0]
	}
}

func fieldValue(line []byte, n int) []byte {
	v := line[n:]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v
}

func (s *sseStream) dispatch(name, data []byte) {
	if bytes.Equal(name, sseError) {
		s.c.k.errs.add("sse_error_event", fmt.Errorf("error event: %.200s", data))
		return
	}
	s.c.k.event(s.sub, name, data, time.Now().UnixNano(), s.c.idx)
}

func (s *sseStream) ended(err error) {
	if s.c.closing.Load() {
		return
	}
	kind := "sse_disconnect"
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		kind = "sse_ended_by_hub"
	}
	s.c.k.errs.add(kind, err)
}
