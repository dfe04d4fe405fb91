package handlers

import (
	"github.com/prometheus/client_golang/prometheus"

	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
)

// Buffer sizes of a hijacked WebSocket connection. net/http hands the
// hijacker 4 KiB for each direction, held for the connection's life;
// most connections are idle, so they keep only small ones:
//   - reads are client control messages of at most 4 KiB, usually under
//     200 bytes, and a larger one is read straight through;
//   - the hub frames its own messages in a pooled buffer (wsConn.write)
//     only while a writer runs, so the library's writer need only hold
//     what it writes itself: a control frame (2 + 125 bytes), in one
//     write.
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 128
)

// hijackCapture hands coder/websocket the hijacked connection with small
// buffers, and keeps it for the hub's own writes.
type hijackCapture struct {
	gin.ResponseWriter
	conn   net.Conn
	linger *lingerConn // what the library holds, and closes
	gate   wsGate
}

// wsGate orders the hub's own writes and the library's: the hub writes
// its frames straight to the connection (wsConn.write), the library its
// pongs and close frame through closeFilter, and once the close frame is
// out nothing may follow it. A frame written after it made Chromium fail
// the connection (1006) instead of reporting the close code: a 1009
// raced the snapshot of a subscribe read just before.
type wsGate struct {
	mu     sync.Mutex
	closed bool // the close frame was written
}

// errAfterClose refuses a hub write after the close frame.
var errAfterClose = errors.New("websocket: close frame already sent")

// write writes b unless the close frame went first.
func (g *wsGate) write(conn net.Conn, b []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errAfterClose
	}
	_, err := conn.Write(b)
	return err
}

// writeBuffers is write for a vectored write.
func (g *wsGate) writeBuffers(conn net.Conn, bufs *net.Buffers) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errAfterClose
	}
	_, err := bufs.WriteTo(conn)
	return err
}

func (h *hijackCapture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := h.ResponseWriter.Hijack()
	if err != nil {
		return conn, brw, err
	}
	h.conn = conn
	h.linger = &lingerConn{Conn: conn}
	br := brw.Reader
	if br.Buffered() == 0 {
		// Nothing pipelined after the handshake: the 4 KiB reader can go.
		br = bufio.NewReaderSize(conn, wsReadBuffer)
	}
	return h.linger, bufio.NewReadWriter(br, bufio.NewWriterSize(closeFilter{conn, &h.gate}, wsWriteBuffer)), nil
}

// Lingering close: how long, and how much, a closed WebSocket connection
// still reads from its client.
const (
	lingerTimeout = time.Second
	lingerBytes   = 64 << 10
)

// lingerConn is the connection as coder/websocket holds it: its Close
// lingers. Closing a TCP socket with unread input makes the kernel send a
// reset, and a browser that gets it may drop the close frame it had not
// read yet: the 1009 the hub sends after a message over the limit, whose
// rest is still unread, reached the page as 1006 and the client
// reconnected. So Close sends FIN after what was written (shutdown), and
// reads and discards what the client still sends for up to lingerTimeout
// and lingerBytes, before closing; a connection dropped because its
// writes timed out (abort) is reset at once instead.
type lingerConn struct {
	net.Conn
	abort atomic.Bool
}

func (c *lingerConn) Close() error {
	tc, ok := c.Conn.(*net.TCPConn)
	if !ok || c.abort.Load() {
		return c.Conn.Close()
	}
	if err := tc.CloseWrite(); err != nil {
		return tc.Close()
	}
	go func() {
		_ = tc.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.CopyN(io.Discard, tc, lingerBytes)
		_ = tc.Close()
	}()
	return nil
}

// closeFilter is the library's writer: it sees only the frames the
// library writes itself (pongs and close frames, each flushed in one
// write, since wsWriteBuffer holds the largest), never the hub's
// messages. coder/websocket echoes a client's close frame as it came;
// one whose reason is not UTF-8 is answered 1007 instead (RFC 6455 §8.1:
// fail the connection), never echoed with its code.
type closeFilter struct {
	conn net.Conn
	gate *wsGate
}

// closeInvalidData is an unmasked close frame with code 1007, no reason.
var closeInvalidData = []byte{0x88, 0x02, 0x03, 0xEF}

func (f closeFilter) Write(b []byte) (int, error) {
	f.gate.mu.Lock()
	defer f.gate.mu.Unlock()
	if len(b) > 0 && b[0] == 0x88 {
		f.gate.closed = true
	}
	if len(b) > 4 && b[0] == 0x88 && int(b[1]) == len(b)-2 && !utf8.Valid(b[4:]) {
		if _, err := f.conn.Write(closeInvalidData); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return f.conn.Write(b)
}

// limitSendBuffer sets Config.SendBuffer as the socket send buffer of a
// hijacked connection (see Config.SendBuffer).
func (s *Server) limitSendBuffer(conn net.Conn) {
	if s.cfg.SendBuffer <= 0 {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		if err := tc.SetWriteBuffer(s.cfg.SendBuffer); err != nil {
			s.log.Debug("socket send buffer not set", "err", err)
		}
	}
}

// discardUnsent makes the close of a connection whose write timed out
// abortive (SO_LINGER 0: a reset), so the kernel frees the bytes the
// client never read at once rather than keeping the socket orphaned,
// still holding its send buffer, while it probes a zero window.
// It counts the drop of a slow client (topohub_slow_client_drops_total)
// in slow, which may be nil.
func discardUnsent(conn net.Conn, err error, slow prometheus.Counter) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	if slow != nil {
		slow.Inc()
	}
	if lc, ok := conn.(*lingerConn); ok {
		lc.abort.Store(true)
		conn = lc.Conn
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}
