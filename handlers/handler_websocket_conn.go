package handlers

import (
	"bufio"
	"net"

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
	conn net.Conn
}

func (h *hijackCapture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := h.ResponseWriter.Hijack()
	if err != nil {
		return conn, brw, err
	}
	h.conn = conn
	br := brw.Reader
	if br.Buffered() == 0 {
		// Nothing pipelined after the handshake: the 4 KiB reader can go.
		br = bufio.NewReaderSize(conn, wsReadBuffer)
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, wsWriteBuffer)), nil
}
