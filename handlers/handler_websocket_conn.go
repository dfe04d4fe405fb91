package handlers

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

// Buffer sizes of a hijacked WebSocket connection. net/http hands the
// hijacker 4 KiB for each direction, held for the connection's life;
// most connections are idle, so they keep only small ones:
//   - reads are client control messages of at most 4 KiB, usually under
//     200 bytes, and a larger one is read straight through;
//   - writes of the hub's own messages are gathered in a pooled buffer
//     (batchConn) only while a writer runs, so the library's bufio.Writer
//     need only hold what it writes alone: a control frame (2 + 125 bytes).
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 128
)

// hijackCapture hands coder/websocket the hijacked connection wrapped in
// a batchConn with small buffers, and keeps it, so that writes are
// bounded by a deadline on it rather than by a context (and its timer)
// per write.
type hijackCapture struct {
	gin.ResponseWriter
	conn *batchConn
}

func (h *hijackCapture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := h.ResponseWriter.Hijack()
	if err != nil {
		return conn, brw, err
	}
	h.conn = &batchConn{Conn: conn}
	br := brw.Reader
	if br.Buffered() == 0 {
		// Nothing pipelined after the handshake: the 4 KiB reader can go.
		br = bufio.NewReaderSize(h.conn, wsReadBuffer)
	}
	return h.conn, bufio.NewReadWriter(br, bufio.NewWriterSize(h.conn, wsWriteBuffer)), nil
}

// batchConn gathers what the library writes between begin and end (a
// frame header and its payload arrive as separate writes) into one
// buffer, sent with one system call; outside them, writes go straight
// through, as the library's own pongs and close frames do.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      *bytes.Buffer
}

// batchBuffers are shared by all connections' writers while they write.
var batchBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.batching {
		n, err := b.buf.Write(p)
		b.mu.Unlock()
		return n, err
	}
	b.mu.Unlock()
	return b.Conn.Write(p)
}

// begin starts gathering writes; the deadline bounds end's write.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.buf = batchBuffers.Get().(*bytes.Buffer)
	b.mu.Unlock()
}

// end writes what was gathered, within timeout, and stops gathering.
func (b *batchConn) end(timeout time.Duration, keep int) error {
	b.mu.Lock()
	buf := b.buf
	b.batching, b.buf = false, nil
	b.mu.Unlock()
	var err error
	if buf.Len() > 0 {
		_ = b.Conn.SetWriteDeadline(time.Now().Add(timeout))
		_, err = b.Conn.Write(buf.Bytes())
		// Cleared: pings and close frames are bounded by the library.
		_ = b.Conn.SetWriteDeadline(time.Time{})
	}
	if buf.Cap() <= keep {
		buf.Reset()
		batchBuffers.Put(buf)
	}
	return err
}

var _ io.Writer = (*batchConn)(nil)
