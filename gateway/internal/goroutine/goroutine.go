// Package goroutine is the gateway's goroutine engine: a goroutine per
// connection, on net.Conns, reading the ClientHello with sni.Reader and
// dialling with the server's Dial. It carries every connection of a Server
// without EventLoop, and what the other engines hand over (Conn.HandOver).
// It reaches the server only through the engine contract.
package goroutine

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/engine"
	"github.com/meshgate/meshgate/sni"
)

// MaxIdleWorkers bounds the goroutines that wait for the next accepted
// connection once theirs is forwarding.
const MaxIdleWorkers = 64

// Engine is the goroutine engine of one server.
type Engine struct {
	lc          engine.Lifecycle
	handoff     chan job     // accepted connections, to idle workers
	idleWorkers atomic.Int32 // workers waiting on handoff
}

// job is an accepted connection for a worker.
type job struct {
	c engine.Conn
	h *Hold
}

// New returns the goroutine engine of lc.
func New(lc engine.Lifecycle) *Engine {
	return &Engine{lc: lc, handoff: make(chan job)}
}

// IdleWorkers returns how many workers wait for a connection.
func (e *Engine) IdleWorkers() int { return int(e.idleWorkers.Load()) }

// Hold is the goroutine engine's hold on a connection's sockets: the
// client's, and the upstream's once dialled. It is shared (Close may come
// from any goroutine).
type Hold struct {
	client   net.Conn
	upstream atomic.Pointer[net.Conn]
}

// NewHold returns a Hold of client.
func NewHold(client net.Conn) *Hold { return &Hold{client: client} }

// Close closes both sockets.
func (h *Hold) Close() {
	h.client.Close()
	if up := h.upstream.Load(); up != nil {
		(*up).Close()
	}
}

// Serve accepts connections on l and handles each in a goroutine of its
// own (one that has finished with an earlier connection, when one waits),
// until the server closes (it returns nil) or l fails otherwise (it
// returns the error). Temporary accept errors, such as running out of file
// descriptors, are logged and retried with a backoff from 5 ms to 1 s.
func (e *Engine) Serve(l net.Listener) error {
	lc := e.lc
	log := lc.Settings().Logger
	var delay time.Duration
	for {
		if !lc.AcquireSlot() {
			return nil
		}
		c, err := l.Accept()
		if err != nil {
			lc.ReleaseSlot()
			if lc.Closing() {
				return nil
			}
			if !engine.Temporary(err) {
				return err
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(2*delay, time.Second)
			}
			log.Warn("gateway: accept error; retrying", "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-lc.Done():
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		h := NewHold(c)
		lcc := lc.Open(h, c.RemoteAddr(), c.LocalAddr(), true) // registered before its goroutine starts
		if lcc == nil {
			c.Close()
			return nil
		}
		select {
		case e.handoff <- job{lcc, h}: // an idle worker takes it
		default:
			go e.work(job{lcc, h})
		}
	}
}

// work handles j, then waits for the next accepted connection, while no
// more than MaxIdleWorkers others wait. A worker's stack has grown to what
// a connection needs; starting a goroutine per connection instead grows a
// fresh one each time.
func (e *Engine) work(j job) {
	for {
		e.handle(j)
		if e.idleWorkers.Add(1) > MaxIdleWorkers {
			e.idleWorkers.Add(-1)
			return
		}
		select {
		case j = <-e.handoff:
			e.idleWorkers.Add(-1)
		case <-e.lc.Done():
			e.idleWorkers.Add(-1)
			return
		}
	}
}

// handle is a connection's time on a worker. Once forwarding starts, the
// worker carries the direction from upstream to client itself, until that
// direction ends or parks.
func (e *Engine) handle(j job) {
	if runDown := e.open(j.c, j.h); runDown != nil {
		runDown()
	}
}

// open reads the ClientHello, routes and dials, and starts forwarding; it
// returns the direction for the caller to run, or nil if the connection
// ended.
func (e *Engine) open(c engine.Conn, h *Hold) (runDown func()) {
	set := e.lc.Settings()
	if tc, ok := h.client.(*net.TCPConn); ok && set.TCPKeepAlive > 0 {
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: set.TCPKeepAlive})
	}
	bp, hello := engine.GetHello()
	var raw []byte
	// The buffers go back to their pools before the connection's long life.
	defer func() { engine.PutHello(bp, raw, hello) }()

	raw, err := sni.Reader{MaxSize: set.MaxHelloSize, Timeout: set.PeekTimeout}.Read(context.Background(), h.client, (*bp)[:0], hello)
	if err != nil {
		c.Fail(err)
		return nil
	}
	route, ok := c.Route(hello)
	if !ok {
		return nil
	}
	return e.routed(c, h, route, raw)
}

// Continue carries on with a routed connection another engine handed over
// (Conn.HandOver), on a goroutine of its own; replay is what the client
// sent so far, to write upstream first.
func (e *Engine) Continue(c engine.Conn, h *Hold, route engine.Route, replay []byte) {
	go func() {
		if run := e.routed(c, h, route, replay); run != nil {
			run()
		}
	}()
}

// routed dials a routed connection (or hands it to its route's Serve) and
// starts forwarding; it returns the direction for the caller to run, or nil
// if the connection ended.
func (e *Engine) routed(c engine.Conn, h *Hold, route engine.Route, replay []byte) (runDown func()) {
	if route.InProcess {
		return c.ServeInProcess(h.client, replay)
	}
	set := e.lc.Settings()
	for {
		target, ok := c.NextTarget()
		if !ok {
			return nil
		}
		up, err := dialRetryingEMFILE(set.Dial, target, route.ConnectTimeout)
		if err != nil {
			c.DialFailed(err)
			continue
		}
		if ka := route.KeepAlive; ka.Enable {
			if tc, ok := up.(*net.TCPConn); ok {
				if err := tc.SetKeepAliveConfig(ka); err != nil {
					set.Logger.Debug("gateway: setting upstream keepalive", "target", target, "err", err.Error())
				}
			}
		}
		// Recorded before any byte is sent on it, for loop detection, and
		// held for Close.
		c.Connected(addrPort(up.LocalAddr()), addrPort(up.RemoteAddr()))
		h.upstream.Store(&up)
		if e.lc.HardClosed() {
			up.Close() // Close ran while we dialled
		}
		return c.Forward(h.client, up, replay, 0, 0)
	}
}

// addrPort returns a TCP address's address and port, or the zero value.
func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	return netip.AddrPort{}
}

// dialRetryingEMFILE dials addr within timeout; while the process is out of
// file descriptors it waits and retries (5 ms doubling), so a connection
// accepted at the limit is not lost when another one frees a descriptor.
func dialRetryingEMFILE(dial func(context.Context, string, string) (net.Conn, error), addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	wait := 5 * time.Millisecond
	for {
		up, err := dial(ctx, "tcp", addr)
		if err == nil || !engine.OutOfDescriptors(err) {
			return up, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}
