package l7

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"
)

// goAwayLinger bounds how long a connection ended for abuse waits: for a
// frame boundary to write its GOAWAY at, then for the peer to read it
// before the socket closes.
const goAwayLinger = time.Second

// Go's net/http answers a request whose headers pass MaxHeaderBytes itself,
// before any handler: over HTTP/1.1 with these exact bytes, over HTTP/2
// with this body. A termConn recognises them to count the refusal.
const (
	go431HTTP1 = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large"
	go431HTTP2 = "<h1>HTTP Error 431</h1><p>Request Header Field(s) Too Large</p>"
)

// termConn is a terminated connection handed to the HTTP server,
// carrying its export. It watches the HTTP/2 frames that cross it for
// premature resets, and ends a connection that abuses them with GOAWAY.
// done runs once when the server closes it.
type termConn struct {
	net.Conn          // the TLS connection
	raw      net.Conn // under it
	t        *Terminator
	pc       *peerConn
	guard    h2Guard
	once     sync.Once
	closed   chan struct{} // closed with the connection

	closeOnce  sync.Once
	wmu        sync.Mutex
	goAway     []byte        // to write at the next frame boundary
	goAwayDone chan struct{} // closed once written or given up
	tripped    bool
}

func newTermConn(t *Terminator, tc *tls.Conn, raw net.Conn, pc *peerConn) *termConn {
	c := &termConn{Conn: tc, raw: raw, t: t, pc: pc, closed: make(chan struct{})}
	c.guard.now = time.Now
	c.guard.onTooLarge = func() { t.refuse(nil, ReasonHeadersTooLarge) }
	c.guard.onGoAway = func(code uint32) {
		// Go's HTTP/2 server ends a connection with an error code for a
		// protocol violation (a header value longer than the bound, say):
		// count it. Its own GOAWAY for premature resets is counted already.
		if code != 0 && !c.tripped {
			t.refuse(nil, ReasonHTTP2Error)
		}
	}
	return c
}

func (c *termConn) Read(p []byte) (int, error) {
	if c.guard.done() {
		// The server reads nothing more: let the GOAWAY go out first.
		select {
		case <-c.goAwayDone:
		case <-time.After(goAwayLinger):
		}
		return 0, io.EOF
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		was := c.guard.stopped
		n = c.guard.inbound(p[:n])
		if c.guard.stopped && !was {
			c.trip()
		}
	}
	return n, err
}

// trip ends a connection that reset too many streams: counted, logged,
// and a GOAWAY at the next frame boundary of the server's writes.
func (c *termConn) trip() {
	c.t.refuse(nil, ReasonPrematureResets)
	c.t.logger().Info("l7: an HTTP/2 connection reset too many streams before their answer: GOAWAY",
		"remote", c.raw.RemoteAddr().String(), "peer", c.pc.name.Peer, "service", c.pc.name.Service, "reason", ReasonPrematureResets,
		"premature", c.guard.premature, "closed", c.guard.closed)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.tripped = true
	c.goAway = goAwayFrame(c.guard.lastStream())
	c.goAwayDone = make(chan struct{})
	if c.guard.outboundBoundary() {
		c.flushGoAwayLocked()
	}
}

func (c *termConn) flushGoAwayLocked() {
	if c.goAway == nil {
		return
	}
	c.Conn.SetWriteDeadline(time.Now().Add(goAwayLinger))
	c.Conn.Write(c.goAway)
	c.goAway = nil
	close(c.goAwayDone)
}

func (c *termConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.guard.mode != modeHTTP2 {
		if len(p) == len(go431HTTP1) && string(p) == go431HTTP1 {
			c.t.refuse(nil, ReasonHeadersTooLarge)
		}
		return c.Conn.Write(p)
	}
	if c.goAway != nil {
		// Finish the frame under way, then the GOAWAY.
		k := c.guard.out.untilBoundary(p)
		if k >= 0 {
			c.guard.outbound(p[:k])
			n, err := c.Conn.Write(p[:k])
			c.flushGoAwayLocked()
			if err != nil || k == len(p) {
				return n, err
			}
			// Frames after GOAWAY for streams it covers are allowed.
			c.guard.outbound(p[k:])
			m, err := c.Conn.Write(p[k:])
			return n + m, err
		}
	}
	c.guard.outbound(p)
	return c.Conn.Write(p)
}

func (c *termConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() { err = c.close() })
	return err
}

func (c *termConn) close() error {
	c.wmu.Lock()
	tripped := c.tripped
	if c.goAwayDone != nil && c.goAway != nil {
		c.goAway = nil // no boundary came: the connection ends without it
		close(c.goAwayDone)
	}
	c.wmu.Unlock()
	var err error
	if tripped {
		// Let the peer read the GOAWAY before the socket goes: close our
		// side, drain theirs for a while, then close.
		if tc, ok := c.Conn.(*tls.Conn); ok {
			tc.CloseWrite()
		}
		if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		c.raw.SetReadDeadline(time.Now().Add(goAwayLinger))
		go func() {
			io.Copy(io.Discard, c.raw)
			c.Conn.Close()
			c.done()
		}()
		return nil
	}
	err = c.Conn.Close()
	c.done()
	return err
}

// done runs once the connection is closed.
func (c *termConn) done() {
	c.once.Do(func() { c.t.track(c.raw, false); close(c.closed) })
}
