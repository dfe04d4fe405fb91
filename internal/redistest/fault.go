package redistest

import (
	"net"
	"sync"
	"syscall"
	"testing"
)

// Freeze stops the server process with SIGSTOP: it keeps its sockets and
// the kernel keeps accepting connections for it, but nothing is answered,
// as with a hung host. Thaw (or the test's end) resumes it.
func (s *Server) Freeze(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGSTOP)
	tb.Cleanup(func() { s.signalQuiet(syscall.SIGCONT) })
}

// Thaw resumes a frozen server with SIGCONT.
func (s *Server) Thaw(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGCONT)
}

func (s *Server) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if s.external {
		tb.Skip("redistest: cannot signal the external server of " + EnvURL)
	}
	if s.cmd == nil {
		tb.Fatal("redistest: the server is not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("redistest: %v: %v", sig, err)
	}
}

func (s *Server) signalQuiet(sig syscall.Signal) {
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Proxy forwards TCP to a target until frozen: then it keeps every
// connection open but passes nothing, as a dead network path or a node
// stuck in a failover does. Connections made after a freeze are
// forwarded.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen []chan struct{} // one per live connection pair
	conns  []net.Conn
	cut    bool // new connections are blackholed too
}

// StartProxy listens on a free loopback port and forwards to target
// until the test ends.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			freeze := make(chan struct{})
			p.mu.Lock()
			if p.cut {
				close(freeze)
			} else {
				p.frozen = append(p.frozen, freeze)
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-freeze:
						// Swallow everything; keep the sockets open.
						if err != nil {
							return
						}
						continue
					default:
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							src.Close()
							return
						}
					}
					if err != nil {
						// One side ended: end the other, as a forwarded
						// TCP connection would.
						dst.Close()
						return
					}
				}
			}
			wg.Go(func() { pipe(up, c) })
			wg.Go(func() { pipe(c, up) })
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

// Addr is the address to dial instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze blackholes every connection open now.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		close(f)
	}
	p.frozen = nil
}

// Partition blackholes every connection, those open now and those made
// until Heal, as a network partition does.
func (p *Proxy) Partition() {
	p.Freeze()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
}

// Heal forwards new connections again; those open during the partition
// stay dead.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}
