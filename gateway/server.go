package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/sni"
)

// DefaultConnectTimeout is Consul's connect timeout for upstream dials.
const DefaultConnectTimeout = 5 * time.Second

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("gateway: server closed")

// Server accepts TLS connections, reads each ClientHello without consuming it,
// asks its Router where the connection goes, dials the route's targets in
// order and forwards the still-encrypted bytes both ways. It never decrypts
// anything and never dials a connection its Router did not route.
//
// Fields are read when Serve starts; zero values are useful defaults, as
// described on each. A Server must not be copied after first use.
type Server struct {
	// Router decides each connection's route. Required.
	Router Router
	// PeekTimeout bounds reading the ClientHello: zero means sni.DefaultTimeout
	// (15 s); negative means no bound.
	PeekTimeout time.Duration
	// MaxHelloSize bounds the ClientHello: zero means sni.DefaultMaxSize (64 KiB).
	MaxHelloSize int
	// ConnectTimeout bounds each dial: zero means DefaultConnectTimeout (5 s).
	ConnectTimeout time.Duration
	// IdleTimeout closes a forwarded connection on which no byte moved in
	// either direction for this long: zero means DefaultIdleTimeout (1 h);
	// negative means never.
	IdleTimeout time.Duration
	// MaxConns bounds the connections open at once; when it is reached the
	// server stops accepting (new clients wait in the listen backlog) until
	// one closes. Zero means no bound other than the descriptor limit: on
	// Unix every Server of the process also stops accepting when the
	// connections open across them would need more descriptors than the
	// soft RLIMIT_NOFILE leaves after a reserve (see ConnLimit), so that a
	// connection it accepts can always dial its upstream.
	MaxConns int
	// Logger receives one line per rejected connection (Info; Debug for one
	// closed before sending any byte, such as a TCP health check), per accept
	// error (Warn), per forwarded connection when it starts (Debug: route,
	// target, server name) and when it ended with an error such as a reset or
	// the idle timeout (Debug); nil discards.
	Logger *slog.Logger
	// Observer receives events for metrics; nil means none.
	Observer Observer
	// TCPKeepAlive turns on TCP keepalive probes on both sockets of a
	// forwarded connection, idle for this long before the first probe. Zero
	// means off, as Envoy under Consul; probes cost system calls on every
	// connection and the idle timeout already ends dead ones.
	TCPKeepAlive time.Duration
	// RemoteKeepAlive, when Enable is set, is the TCP keepalive of upstream
	// connections for Remote routes (other datacenters', partitions' and
	// peers' gateways), over TCPKeepAlive; those links cross networks whose
	// middleboxes drop idle flows. proxyconfig reads it from Consul's
	// envoy_gateway_remote_tcp_* options.
	RemoteKeepAlive net.KeepAliveConfig
	// EjectAfter is how many consecutive failed dials eject a target, so
	// that connections try the route's other targets first: zero means
	// DefaultEjectAfter (1: a dead target costs one connection its connect
	// timeout, where Envoy's outlier detection waits for five); negative
	// turns this off. An ejected target is still tried when all the others
	// fail. It is readmitted when a probe connects to it: a TCP connect
	// closed at once, made with Dial, 250 ms after the ejection and then
	// with a doubling wait.
	EjectAfter int
	// EjectFor bounds the wait between two probes of an ejected target:
	// zero means DefaultEjectFor (30 s).
	EjectFor time.Duration
	// ReleaseMemory returns memory to the operating system after a burst: when
	// at least 1,000 connections have opened or closed since the last release
	// and fewer than 100 in the last second, it runs debug.FreeOSMemory
	// once.
	// Without it the grown stacks and handshake garbage of a burst stay in the
	// process, because a quiet gateway allocates too little to trigger a
	// collection. Off by default, since it forces a collection in the
	// embedding program; examples/meshgateway turns it on.
	ReleaseMemory bool
	// Dial opens upstream connections; nil means a net.Dialer with
	// TCPKeepAlive. Return a bare *net.TCPConn to keep the zero-copy path.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// EventLoop, on Linux, serves a *net.TCPListener's connections on
	// event loops, one per GOMAXPROCS, instead of a goroutine each: a
	// loop accepts, reads the ClientHello, asks the Router, connects and
	// forwards short exchanges itself on raw sockets, which costs less
	// CPU per connection. A connection whose route has a Serve, a Server
	// with a Dial, a target that is not ip:port, or a connection that
	// moves more than 64 KiB either way continues as without it (a
	// goroutine, splice). Routers, observers, limits and timeouts keep
	// their contracts, with two differences: the Router is called on the
	// loop, so a Router that blocks holds up the other connections of its
	// loop (the Routers of this module never block); and deadlines (peek,
	// connect, idle) are checked every 200 ms. Elsewhere, or for another
	// kind of listener, it is ignored.
	EventLoop bool

	initOnce       sync.Once
	done           chan struct{} // closed on Shutdown or Close
	doneOnce       sync.Once
	slots          chan struct{}      // MaxConns semaphore, or nil
	budget         *descriptorBudget  // the process's, or nil
	health         *outliers          // targets that fail to connect
	stopProbes     context.CancelFunc // ends the probes of ejected targets
	heldBack       atomic.Bool        // logged that the budget held accepting back
	mu             sync.Mutex
	listeners      map[*net.Listener]struct{}
	conns          map[*conn]struct{}
	dialed         map[tcpPair]struct{} // the open upstream connections' addresses, under mu
	active         atomic.Int64
	hardClosed     atomic.Bool
	lastID         atomic.Uint64
	handoff        chan *conn           // Serve's accepted connections, to idle workers
	idleWorkers    atomic.Int32         // workers waiting on handoff
	releaser       sync.Once            // starts releaseAfterBursts
	burst          burstRule            // zero: burstConns in releaseEvery
	memoryReleases atomic.Int64         // how many times it released memory
	ended          atomic.Uint64        // connections finished
	loops          map[*evloop]struct{} // running event loops, under mu
}

// conn is one accepted connection, tracked from accept to close.
type conn struct {
	client   net.Conn
	dialed   tcpPair // the upstream connection's addresses, once dialled
	upstream atomic.Pointer[net.Conn]
	stop     atomic.Pointer[func()] // set once forwarding started
}

var (
	// As many as the connections that read their hellos at once in a
	// steady load; a burst's extra ones are left to the collector.
	helloBuffers = newFreeList(2*maxIdleWorkers, func() *[]byte { b := make([]byte, 0, 4096); return &b })
	helloPool    = newFreeList(2*maxIdleWorkers, func() *sni.ClientHello { return new(sni.ClientHello) })
)

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.done = make(chan struct{})
		s.listeners = map[*net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.dialed = map[tcpPair]struct{}{}
		s.handoff = make(chan *conn)
		if s.MaxConns > 0 {
			s.slots = make(chan struct{}, s.MaxConns)
		}
		s.budget = processBudget()
		s.health = newOutliers(s.EjectAfter, s.EjectFor)
		s.health.dial, s.health.timeout = s.dialFunc(), func() time.Duration { return s.connectTimeout(Route{}) }
		s.health.ctx, s.stopProbes = context.WithCancel(context.Background())
		s.health.onReturn = func(target string) {
			s.logger().Info("gateway: ejected target answers a probe again; readmitted", "target", target)
		}
	})
}

// ConnLimit returns how many connections this Server may hold open at once:
// MaxConns, or the process's descriptor budget if that is smaller (it is
// shared by every Server of the process), or 0 if neither bounds it.
func (s *Server) ConnLimit() int {
	s.init()
	limit := s.MaxConns
	if b := s.budget; b != nil && (limit == 0 || b.conns < limit) {
		limit = b.conns
	}
	return limit
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return discardLogger
}

var discardLogger = slog.New(slog.DiscardHandler)

func (s *Server) observer() Observer {
	if s.Observer != nil {
		return s.Observer
	}
	return nopObserver{}
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// ListenAndServe listens on the TCP address addr and calls Serve.
func (s *Server) ListenAndServe(addr string) error {
	if s.init(); s.closing() {
		return ErrServerClosed
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts connections on l and handles each in a goroutine of its own
// (one that has finished with an earlier connection, when one waits). It
// always returns a non-nil error and closes l; after Shutdown or Close the
// error is ErrServerClosed. Temporary accept errors, such as running out of
// file descriptors, are logged and retried with a backoff from 5 ms to 1 s,
// and connections already open keep being served.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Router == nil {
		l.Close()
		return errors.New("gateway: Server.Router is nil")
	}
	l = &onceCloseListener{Listener: l}
	defer l.Close()
	if !s.trackListener(&l, true) {
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)
	if s.ReleaseMemory {
		s.releaser.Do(func() {
			rule := s.burst
			if rule.events == 0 {
				rule = burstRule{burstConns, releaseEvery}
			}
			go s.releaseAfterBursts(rule)
		})
	}
	if s.EventLoop {
		if tl, ok := l.(*onceCloseListener).Listener.(*net.TCPListener); ok {
			if ok, err := s.serveLoops(tl); ok {
				return err
			}
		}
	}

	var delay time.Duration
	for {
		if !s.acquireSlot() {
			return ErrServerClosed
		}
		c, err := l.Accept()
		if err != nil {
			s.releaseSlot()
			if s.closing() {
				return ErrServerClosed
			}
			if !temporary(err) {
				return err
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(2*delay, time.Second)
			}
			s.logger().Warn("gateway: accept error; retrying", "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		cc := &conn{client: c}
		if !s.trackConn(cc, true) { // registered before its goroutine starts
			c.Close()
			s.releaseSlot()
			return ErrServerClosed
		}
		select {
		case s.handoff <- cc: // an idle worker takes it
		default:
			go s.work(cc)
		}
	}
}

// maxIdleWorkers bounds the goroutines that wait for the next accepted
// connection once theirs is forwarding.
const maxIdleWorkers = 64

// work handles c, then waits for the next accepted connection, while no more
// than maxIdleWorkers others wait. A worker's stack has grown to what a
// connection needs; starting a goroutine per connection instead grows a
// fresh one each time.
func (s *Server) work(c *conn) {
	for {
		s.handle(c)
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		select {
		case c = <-s.handoff:
			s.idleWorkers.Add(-1)
		case <-s.done:
			s.idleWorkers.Add(-1)
			return
		}
	}
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing() {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing() {
			return false
		}
		s.conns[c] = struct{}{}
		s.active.Add(1)
	} else {
		delete(s.conns, c)
		if c.dialed.from.IsValid() {
			delete(s.dialed, c.dialed)
		}
		s.active.Add(-1)
	}
	return true
}

// ActiveConns returns how many connections are open.
func (s *Server) ActiveConns() int { return int(s.active.Load()) }

// Ejected returns the targets that outlier detection has ejected now (see
// EjectAfter), each with the time it was ejected: a connection tries them
// only after the route's other targets, until a probe connects to one. It
// is a copy, nil when none is ejected.
func (s *Server) Ejected() map[string]time.Time {
	s.init()
	return s.health.ejected()
}

// handle is a connection's goroutine. Once forwarding starts, it carries
// the direction from upstream to client itself, until that direction ends
// or parks.
func (s *Server) handle(c *conn) {
	if runDown := s.open(c); runDown != nil {
		runDown()
	}
}

// open reads the ClientHello, routes and dials, and starts forwarding; it
// returns the direction for the caller to run, or nil if the connection was
// refused.
func (s *Server) open(c *conn) (runDown func()) {
	start := time.Now()
	s.observer().Accepted(c.client.RemoteAddr())
	if tc, ok := c.client.(*net.TCPConn); ok && s.TCPKeepAlive > 0 {
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: s.TCPKeepAlive})
	}
	info := &ConnInfo{ID: s.lastID.Add(1), Remote: c.client.RemoteAddr(), Local: c.client.LocalAddr()}
	ctx := context.WithValue(context.Background(), connInfoKey{}, info)
	st := story{info: info, start: start}
	st.to = connObserverOf(s.Observer)
	st.up = upstreamObserverOf(s.Observer)
	st.dial = dialObserverOf(s.Observer)

	bp := helloBuffers.get()
	hello := helloPool.get()
	var raw []byte
	// The buffers go back to their pools before the connection's long life.
	defer func() { s.putHello(bp, raw, hello) }()

	raw, err := sni.Reader{MaxSize: s.MaxHelloSize, Timeout: s.PeekTimeout}.Read(ctx, c.client, (*bp)[:0], hello)
	if st.to != nil || st.up != nil {
		st.peek = time.Since(start)
	}
	if err != nil {
		// hello holds a pooled, earlier connection's name: log none.
		s.refuse(c, &st, peekReason(err), err)
		return nil
	}
	st.serverName = hello.ServerName
	route, reason, err := s.route(ctx, c.client.RemoteAddr(), c.client.LocalAddr(), hello)
	st.route, st.kind = route.Name, route.Kind
	if err != nil {
		s.refuse(c, &st, reason, err)
		return nil
	}
	return s.openRouted(c, st, route, raw)
}

// openRouted dials a routed connection (or hands it to its Route.Serve)
// and starts forwarding; raw is the ClientHello read, to replay. It returns
// the direction for the caller to run, or nil if the connection was refused.
func (s *Server) openRouted(c *conn, st story, route Route, raw []byte) (runDown func()) {
	if route.Serve != nil {
		st.target = TargetInProcess
		st.connected()
		return s.serveInProcess(c, st, route.Serve, raw)
	}
	upstream, target, reason, err := s.connect(c, &st, route)
	if err != nil {
		s.refuse(c, &st, reason, err)
		return nil
	}
	st.target = target
	st.connected()
	s.logForwarding(c.client.RemoteAddr(), &st)
	return s.forward(c, st, upstream, raw, Stats{})
}

// logForwarding logs, at Debug, that a connection starts forwarding.
func (s *Server) logForwarding(remote net.Addr, st *story) {
	if l := s.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
		l.Debug("gateway: forwarding", "remote", remote.String(), "server_name", st.serverName,
			"route", st.route, "target", st.target)
	}
}

// forwarded reports a forwarded connection that ended.
func (s *Server) forwarded(st *story, stats Stats) {
	s.observer().Forwarded(st.route, st.target, stats)
	if stats.Err != nil {
		if l := s.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug("gateway: connection ended with an error", "route", st.route, "target", st.target, "err", stats.Err.Error())
		}
	}
	st.closed(OutcomeForwarded, stats, stats.Err)
}

// refuse rejects a connection that will not be forwarded and forgets it.
func (s *Server) refuse(c *conn, st *story, reason string, err error) {
	s.reject(c, st.serverName, reason, err)
	st.closed(reason, Stats{}, err)
	s.forget(c)
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

// forward replays the peeked bytes and starts forwarding, and returns the
// direction from upstream to client for the caller to run; the Forwarder's
// done callback reports and forgets the connection, its bytes added to
// before (what an event loop moved before it handed the connection over).
func (s *Server) forward(c *conn, st story, upstream net.Conn, replay []byte, before Stats) (runDown func()) {
	f := Forwarder{IdleTimeout: s.IdleTimeout}
	stop, runDown := f.start(c.client, upstream, replay, func(stats Stats) {
		stats.ClientToUpstream += before.ClientToUpstream
		stats.UpstreamToClient += before.UpstreamToClient
		stats.Duration = time.Since(st.start)
		s.forwarded(&st, stats)
		s.forget(c)
	})
	c.stop.Store(&stop)
	if s.hardClosed.Load() {
		stop() // Close ran while forwarding started
	}
	return runDown
}

// serveInProcess hands the connection to serve, the ClientHello to be read
// again first, and returns the call for the caller to run; when serve
// returns, the connection is reported as forwarded and forgotten.
func (s *Server) serveInProcess(c *conn, st story, serve func(net.Conn), replay []byte) (run func()) {
	rc := &replayConn{Conn: c.client, replay: append([]byte(nil), replay...)}
	stop := func() { c.client.Close() }
	c.stop.Store(&stop)
	if s.hardClosed.Load() {
		stop() // Close ran while routing
	}
	return func() {
		serve(rc)
		rc.Close()
		stats := Stats{ClientToUpstream: rc.read.Load(), UpstreamToClient: rc.written.Load(), Duration: time.Since(st.start)}
		s.observer().Forwarded(st.route, st.target, stats)
		st.closed(OutcomeForwarded, stats, nil)
		s.forget(c)
	}
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

// forget forgets a finished connection and frees its slot.
func (s *Server) forget(c *conn) {
	s.ended.Add(1)
	s.trackConn(c, false)
	s.releaseSlot()
}

func (s *Server) putHello(bp *[]byte, raw []byte, hello *sni.ClientHello) {
	if cap(raw) <= 64<<10 {
		*bp = raw[:0]
		helloBuffers.put(bp)
	}
	helloPool.put(hello)
}

// reject closes a connection that is not forwarded, counts it, and logs it:
// at Info, except a connection closed before sending any byte (a TCP health
// check, such as the one Consul runs on a registered gateway, or a port
// scan), which is logged at Debug.
func (s *Server) reject(c *conn, serverName, reason string, err error) {
	s.observer().Rejected(reason, err) // counted before the client can see the close
	c.client.Close()
	s.logRejection(c.client.RemoteAddr(), serverName, reason, err)
}

// logRejection logs a rejected connection, as reject describes.
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

// Shutdown stops accepting, then waits for open connections to end on their
// own; it returns nil once none is left, or ctx.Err() if ctx ends first (call
// Close then to end them). Connections still reading their ClientHello finish
// within the peek timeout.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.stop()
	wait := time.Millisecond
	for {
		if s.ActiveConns() == 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// Close stops accepting and closes every open connection, both sides, at once.
func (s *Server) Close() error {
	s.init()
	s.hardClosed.Store(true)
	s.stop()
	var stops []func()
	s.mu.Lock()
	for c := range s.conns {
		if stop := c.stop.Load(); stop != nil {
			stops = append(stops, *stop)
			continue
		}
		c.client.Close()
		if up := c.upstream.Load(); up != nil {
			(*up).Close()
		}
	}
	s.mu.Unlock()
	// Outside the lock: stopping finishes parked directions, whose reports
	// untrack their connections.
	for _, stop := range stops {
		stop() // also finishes a parked direction
	}
	return nil
}

func (s *Server) stop() {
	s.stopProbes()
	s.mu.Lock()
	s.doneOnce.Do(func() { close(s.done) })
	for l := range s.listeners {
		(*l).Close()
	}
	for l := range s.loops {
		l.wakeUp()
	}
	s.mu.Unlock()
}

// onceCloseListener lets Serve's deferred Close and Shutdown both close it.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
