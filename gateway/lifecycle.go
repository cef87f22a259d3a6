package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/engine"
	"github.com/meshgate/meshgate/gateway/internal/goroutine"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/sni"
)

// The connection lifecycle: every engine (gateway/internal/goroutine,
// gateway/internal/epoll) drives its connections through it, by the
// contract of gateway/internal/engine. It alone admits connections, asks
// the Router, detects loops, orders targets and counts dial outcomes,
// reports to the observers and the log, and tracks connections for
// Shutdown and Close; the engines move bytes.

// lifecycle is a Server as engines see it (engine.Lifecycle), without
// giving them its fields.
type lifecycle Server

var _ engine.Lifecycle = (*lifecycle)(nil)

func (s *Server) lifecycle() *lifecycle { return (*lifecycle)(s) }

func (l *lifecycle) server() *Server { return (*Server)(l) }

func (l *lifecycle) Settings() *engine.Settings { return &l.settings }
func (l *lifecycle) Done() <-chan struct{}      { return l.done }
func (l *lifecycle) Closing() bool              { return l.server().closing() }
func (l *lifecycle) HardClosed() bool           { return l.hardClosed.Load() }
func (l *lifecycle) AcquireSlot() bool          { return l.server().acquireSlot() }
func (l *lifecycle) TrySlot(report bool) bool   { return l.server().trySlot(report) }
func (l *lifecycle) ReleaseSlot()               { l.server().releaseSlot() }

func (l *lifecycle) Attach(e engine.Engine) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.server().closing() {
		return false
	}
	l.engines[e] = struct{}{}
	return true
}

func (l *lifecycle) Detach(e engine.Engine) {
	l.mu.Lock()
	delete(l.engines, e)
	l.mu.Unlock()
}

// Open registers an accepted connection (see engine.Lifecycle).
func (l *lifecycle) Open(sockets engine.Sockets, remote, local net.Addr, shared bool) engine.Conn {
	s := l.server()
	c := &conn{s: s, sockets: sockets, shared: shared, info: ConnInfo{Remote: remote, Local: local}}
	if shared {
		s.mu.Lock()
		if s.closing() {
			s.mu.Unlock()
			s.releaseSlot()
			return nil
		}
		s.conns[c] = struct{}{}
		s.active.Add(1)
		s.mu.Unlock()
	} else {
		if s.closing() {
			s.releaseSlot()
			return nil
		}
		s.active.Add(1)
	}
	c.info.ID = s.lastID.Add(1)
	c.start = time.Now()
	s.observer().Accepted(remote)
	return c
}

// The steps of a connection.
const (
	phaseHello     = iota // accepted: its ClientHello is being read
	phaseRouted           // routed: its targets are being dialled
	phaseConnected        // connected and forwarding
	phaseDone             // forgotten
)

// conn is one connection's lifecycle (engine.Conn), and its story for a
// ConnObserver, an UpstreamObserver and a DialObserver. It is also the context the Router
// gets, so that carrying the ConnInfo costs no allocation. An idle
// connection on the event loops holds it, so it is kept small.
type conn struct {
	s          *Server
	sockets    engine.Sockets // under s.mu once shared; nil once the Forwarder has them
	shared     bool           // in s.conns
	ordered    bool           // targets are in the dial order
	least      bool           // the route balances by least_request: count the target's connections
	phase      uint8
	next       int32 // targets[next-1] is being dialled
	info       ConnInfo
	start      time.Time      // accepted at
	peek       time.Duration  // reading the ClientHello took
	serverName string         // the ClientHello's
	route      string         // the route's Name
	kind       string         // the route's Kind
	target     string         // the target connected
	targets    []string       // the route's, in the dial order once ordered
	serve      func(net.Conn) // the route's Serve
	errs       []error        // each failed target's error
	pair       tcpPair        // the upstream connection's addresses, once connected
	count      *routeCount    // the route's count this connection is in, once admitted
	tcount     *targetCount   // the target's, when least is set and it is connected
	stop       atomic.Pointer[func()]
}

var _ engine.Conn = (*conn)(nil)

// The context.Context of a Router's call: no deadline, never done, and
// the connection's ConnInfo for ConnInfoFrom.

func (c *conn) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *conn) Done() <-chan struct{}       { return nil }
func (c *conn) Err() error                  { return nil }

func (c *conn) Value(key any) any {
	if _, ok := key.(connInfoKey); ok {
		return &c.info
	}
	return nil
}

// String describes the context, as context's own do.
func (c *conn) String() string { return "gateway connection context" }

// Route asks the Router (see engine.Conn).
func (c *conn) Route(hello *sni.ClientHello) (engine.Route, bool) {
	s := c.s
	if s.connObs != nil || s.upObs != nil {
		c.peek = time.Since(c.start)
	}
	c.serverName = hello.ServerName
	route, reason, err := s.route(c, c.info.Remote, c.info.Local, hello)
	c.route, c.kind = route.Name, route.Kind
	if err != nil {
		c.refuse(reason, err)
		return engine.Route{}, false
	}
	count, err := s.admit(&route)
	if err != nil {
		c.refuse(ReasonOverLimit, err)
		return engine.Route{}, false
	}
	c.count = count
	c.targets, c.serve, c.phase = route.Targets, route.Serve, phaseRouted
	if route.Serve == nil {
		c.targets, c.ordered = s.order(count, &route), true
		c.least = route.Balance.Policy == BalanceLeastRequest
	}
	return s.engineRoute(route), true
}

// route asks the Router, after making sure the connection is not one of the
// server's own (a loop); on error it also returns the rejection's reason.
func (s *Server) route(ctx context.Context, remote, local net.Addr, hello *sni.ClientHello) (Route, string, error) {
	if s.ownConnection(remote, local) {
		return Route{}, ReasonLoop, fmt.Errorf("gateway: %s is this server's own upstream connection: a route leads back to this gateway", remote)
	}
	// The Router may keep the hello: it gets one that the next connection's
	// parse, into the pooled hello, cannot overwrite.
	route, err := s.Router.Route(ctx, hello.Clone())
	if err == nil && len(route.Targets) == 0 && route.Serve == nil {
		err = Reject(ReasonNoRoute, "route %q has no targets", route.Name)
	}
	if err != nil {
		reason := ReasonRouterError
		var rej *Rejection
		if errors.As(err, &rej) {
			reason = rej.Reason
		}
		return Route{}, reason, err
	}
	return route, "", nil
}

// NextTarget gives the next target to dial (see engine.Conn): the route's
// targets in the order Route put them (its Balance's choice first, the
// ejected ones last).
func (c *conn) NextTarget() (string, bool) {
	s := c.s
	if !c.ordered {
		c.targets, c.ordered = s.health.Order(c.targets), true
	}
	if int(c.next) == len(c.targets) {
		c.refuse(ReasonDialFailed, problems.Join(c.errs...))
		return "", false
	}
	if s.closing() {
		c.errs = append(c.errs, ErrServerClosed)
		c.refuse(ReasonShutdown, problems.Join(c.errs...)) // Close or Shutdown came while dialling
		return "", false
	}
	c.next++
	return c.targets[c.next-1], true
}

// DialFailed records a failed dial of the current target.
func (c *conn) DialFailed(err error) {
	s, target := c.s, c.targets[c.next-1]
	if s.health.Failed(target) {
		s.logger().Warn("gateway: target ejected: later connections try the route's other targets first, until a probe connects to it",
			"target", target, "consecutive_failures", s.health.After(), "err", err.Error())
	}
	s.observer().DialFailed(c.route, target, err)
	if d := s.dialObs; d != nil {
		d.DialFailedConn(&ConnRecord{ConnInfo: c.info, Start: c.start, Peek: c.peek, ServerName: c.serverName,
			Route: c.route, Kind: c.kind, Target: target}, err)
	}
	c.errs = append(c.errs, err)
}

// Connected records that the current target is connected: its pair of
// addresses for loop detection (recorded before the ClientHello is
// replayed on it), the observers, the log.
func (c *conn) Connected(local, remote netip.AddrPort) {
	s, target := c.s, c.targets[c.next-1]
	if local.IsValid() && remote.IsValid() {
		c.pair = tcpPair{unmap(local), unmap(remote)}
		s.mu.Lock()
		s.dialed[c.pair] = struct{}{}
		s.mu.Unlock()
	}
	s.health.Succeeded(target)
	c.phase = phaseConnected
	c.target = target
	if c.count != nil {
		c.count.pending.Add(-1)
	}
	if c.least {
		c.tcount = s.counts.target(target)
	}
	c.connected()
	if l := s.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
		l.Debug("gateway: forwarding", "remote", c.info.Remote.String(), "server_name", c.serverName,
			"route", c.route, "target", c.target)
	}
}

// connected tells the UpstreamObserver, if any, that the upstream is
// connected.
func (c *conn) connected() {
	if up := c.s.upObs; up != nil {
		up.Connected(&ConnRecord{ConnInfo: c.info, Start: c.start, Peek: c.peek, ServerName: c.serverName,
			Route: c.route, Kind: c.kind, Target: c.target})
	}
}

// closed tells the ConnObserver, if any, how the connection ended.
func (c *conn) closed(outcome string, stats Stats, err error) {
	to := c.s.connObs
	if to == nil {
		return
	}
	if stats.Duration == 0 {
		stats.Duration = time.Since(c.start)
	}
	to.Closed(&ConnRecord{ConnInfo: c.info, Start: c.start, Peek: c.peek, ServerName: c.serverName,
		Route: c.route, Kind: c.kind, Target: c.target, Outcome: outcome, Stats: stats, Err: err})
}

// Forward replays the peeked bytes and starts forwarding, and returns the
// direction from upstream to client for the caller to run; the Forwarder's
// done callback reports and forgets the connection, its bytes added to
// what the engine moved before.
func (c *conn) Forward(client, upstream net.Conn, replay []byte, sent, received int64) (runDown func()) {
	s := c.s
	if !c.shared {
		c.adopt(nil) // Close reaches it from now on, through the Forwarder's stop
	}
	f := Forwarder{IdleTimeout: s.IdleTimeout}
	var lifetime *lifetimeTimer // nil: no MaxConnectionLifetime
	if s.MaxConnectionLifetime > 0 {
		lifetime = &lifetimeTimer{}
	}
	abort, runDown := f.start(client, upstream, replay, func(stats Stats) {
		lifetime.end()
		stats.ClientToUpstream += sent
		stats.UpstreamToClient += received
		stats.Duration = time.Since(c.start)
		c.forwarded(stats)
		c.forget()
	})
	stop := func() { abort(ErrStopped) }
	c.stop.Store(&stop)
	lifetime.arm(time.Until(c.start.Add(s.MaxConnectionLifetime)), func() { abort(ErrMaxConnectionLifetime) })
	if s.hardClosed.Load() {
		stop() // Close ran while forwarding started
	}
	return runDown
}

// lifetimeTimer ends a forwarded connection at the Server's
// MaxConnectionLifetime; a nil one does nothing.
type lifetimeTimer struct {
	mu    sync.Mutex
	ended bool
	t     *time.Timer
}

// arm calls f after d, unless the connection has ended already.
func (l *lifetimeTimer) arm(d time.Duration, f func()) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if !l.ended {
		l.t = time.AfterFunc(d, f)
	}
	l.mu.Unlock()
}

// end says the connection has ended: the timer goes.
func (l *lifetimeTimer) end() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.ended = true
	if l.t != nil {
		l.t.Stop()
	}
	l.mu.Unlock()
}

// adopt makes sockets the connection's, shared from now on (Close reaches
// them); nil when the Forwarder holds them. If Close already ran, it
// closes sockets.
func (c *conn) adopt(sockets engine.Sockets) {
	s := c.s
	s.mu.Lock()
	c.sockets = sockets
	if !c.shared {
		c.shared = true
		s.conns[c] = struct{}{}
	}
	s.mu.Unlock()
	if sockets != nil && s.hardClosed.Load() {
		sockets.Close() // Close ran before it could see them
	}
}

// ServeInProcess hands the connection to its route's Serve, the ClientHello
// to be read again first, and returns the call for the caller to run; when
// Serve returns, the connection is reported as forwarded and forgotten.
func (c *conn) ServeInProcess(client net.Conn, replay []byte) (run func()) {
	s := c.s
	c.phase = phaseConnected
	c.target = TargetInProcess
	c.connected()
	rc := &replayConn{Conn: client, replay: append([]byte(nil), replay...)}
	stop := func() { client.Close() }
	c.stop.Store(&stop)
	if s.hardClosed.Load() {
		stop() // Close ran while routing
	}
	return func() {
		if max := s.MaxConnectionLifetime; max > 0 {
			lifetime := time.AfterFunc(time.Until(c.start.Add(max)), stop)
			defer lifetime.Stop()
		}
		c.serve(rc)
		rc.Close()
		stats := Stats{ClientToUpstream: rc.read.Load(), UpstreamToClient: rc.written.Load(), Duration: time.Since(c.start)}
		s.observer().Forwarded(c.route, c.target, stats)
		c.closed(OutcomeForwarded, stats, nil)
		c.forget()
	}
}

// HandOver continues a routed connection on the goroutine engine.
func (c *conn) HandOver(client net.Conn, route engine.Route, replay []byte) {
	h := goroutine.NewHold(client)
	c.adopt(h)
	c.s.goroutines.Continue(c, h, route, replay)
}

// Expired reports the idle timeout and the maximum lifetime of a
// connection an engine forwards itself.
func (c *conn) Expired(now, last time.Time) error {
	if max := c.s.MaxConnectionLifetime; max > 0 && now.Sub(c.start) >= max {
		return ErrMaxConnectionLifetime
	}
	idle := c.s.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	if idle > 0 && now.Sub(last) > idle {
		return ErrIdleTimeout
	}
	return nil
}

// End closes a forwarded connection and reports it.
func (c *conn) End(sent, received int64, err error) {
	c.closeSockets()
	c.forwarded(Stats{ClientToUpstream: sent, UpstreamToClient: received, Duration: time.Since(c.start), Err: err})
	c.forget()
}

// Fail ends a connection that could not go on, with the reason of its step.
func (c *conn) Fail(err error) {
	switch c.phase {
	case phaseHello:
		if c.s.connObs != nil || c.s.upObs != nil {
			c.peek = time.Since(c.start)
		}
		// The hello may hold a pooled, earlier connection's name: log none.
		c.refuse(peekReason(err), err)
	case phaseRouted:
		c.refuse(ReasonDialFailed, err)
	case phaseConnected:
		c.End(0, 0, err)
	}
}

// Stop ends a connection on Close.
func (c *conn) Stop(sent, received int64) {
	if c.phase == phaseConnected {
		c.End(sent, received, ErrStopped)
		return
	}
	c.refuse(ReasonShutdown, ErrServerClosed)
}

// forwarded reports a forwarded connection that ended.
func (c *conn) forwarded(stats Stats) {
	s := c.s
	s.observer().Forwarded(c.route, c.target, stats)
	if stats.Err != nil {
		if l := s.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug("gateway: connection ended with an error", "route", c.route, "target", c.target, "err", stats.Err.Error())
		}
	}
	c.closed(OutcomeForwarded, stats, stats.Err)
}

// refuse rejects a connection that will not be forwarded, closes it, logs
// it and forgets it. The observer counts it before the client can see the
// close.
func (c *conn) refuse(reason string, err error) {
	s := c.s
	s.observer().Rejected(reason, err)
	c.closeSockets()
	s.logRejection(c.info.Remote, c.serverName, reason, err)
	c.closed(reason, Stats{}, err)
	c.forget()
}

// closeSockets closes the connection's sockets through its engine.
func (c *conn) closeSockets() {
	if !c.shared {
		c.sockets.Close()
		return
	}
	c.s.mu.Lock()
	k := c.sockets
	c.s.mu.Unlock()
	if k != nil {
		k.Close()
	}
}

// forget forgets a finished connection and frees its slot.
func (c *conn) forget() {
	s := c.s
	if k := c.count; k != nil {
		if c.phase == phaseRouted && c.serve == nil {
			k.pending.Add(-1) // refused or failed while dialling
		}
		k.open.Add(-1)
	}
	if c.tcount != nil {
		c.tcount.open.Add(-1)
	}
	c.phase = phaseDone
	if c.shared || c.pair.from.IsValid() {
		s.mu.Lock()
		if c.shared {
			delete(s.conns, c)
		}
		if c.pair.from.IsValid() {
			delete(s.dialed, c.pair)
		}
		s.mu.Unlock()
	}
	s.ended.Add(1)
	s.active.Add(-1)
	s.releaseSlot()
}

// replayConn is a client connection whose first reads return replay (the
// ClientHello the Server read), counting the bytes each way.
type replayConn struct {
	net.Conn
	mu            sync.Mutex
	replay        []byte
	read, written atomic.Int64
}

func (c *replayConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		c.mu.Unlock()
		c.read.Add(int64(n))
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *replayConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// logRejection logs a rejected connection: at Info, except a connection
// closed before sending any byte (a TCP health check, such as the one
// Consul runs on a registered gateway, or a port scan), which is logged at
// Debug.
func (s *Server) logRejection(remote net.Addr, serverName, reason string, err error) {
	level := slog.LevelInfo
	if reason == ReasonClosed && errors.Is(err, io.EOF) {
		level = slog.LevelDebug
	}
	if l := s.logger(); l.Enabled(context.Background(), level) {
		l.Log(context.Background(), level, "gateway: connection rejected", "remote", remote.String(),
			"server_name", serverName, "reason", reason, "err", err.Error())
	}
}

// peekReason is the rejection reason of a failed ClientHello read.
func peekReason(err error) string {
	switch {
	case errors.Is(err, sni.ErrNotTLS):
		return ReasonNotTLS
	case errors.Is(err, sni.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, sni.ErrTimeout):
		return ReasonPeekTimeout
	case errors.Is(err, sni.ErrInvalidServerName):
		return ReasonBadName
	case errors.Is(err, sni.ErrMalformed):
		return ReasonMalformed
	}
	return ReasonClosed
}
