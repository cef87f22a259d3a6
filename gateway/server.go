package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/engine"
	"github.com/meshgate/meshgate/gateway/internal/epoll"
	"github.com/meshgate/meshgate/gateway/internal/goroutine"
	"github.com/meshgate/meshgate/gateway/internal/iouring"
	"github.com/meshgate/meshgate/internal/outlier"
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
	// MaxConnectionLifetime closes a forwarded connection, both ways, once
	// it has been open this long, however busy: long-lived connections
	// then spread again over a fleet whose members restarted, as with
	// Envoy's max_downstream_connection_duration. Zero means never (the
	// default, as Envoy's). The Stats.Err of a connection it ends is
	// ErrMaxConnectionLifetime. Every engine honours it (the event loops
	// within their 200 ms sweep).
	MaxConnectionLifetime time.Duration
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
	// Engine chooses how a *net.TCPListener's connections are carried:
	// EngineGoroutines, EngineEpoll (the event loops EventLoop describes)
	// or EngineIOUring (io_uring loops, with the same two differences as
	// the event loops). Where io_uring is unavailable (an old kernel,
	// /proc/sys/kernel/io_uring_disabled, a seccomp filter) EngineIOUring
	// serves with the event loops instead, and the Logger says why once.
	// Empty means EventLoop decides: EngineEpoll if set, else
	// EngineGoroutines. Another value makes Serve fail. Other kinds of
	// listener are served with a goroutine per connection whatever it
	// says.
	Engine Engine

	initOnce       sync.Once
	done           chan struct{} // closed on Shutdown or Close
	doneOnce       sync.Once
	settings       engine.Settings    // what the engines read, fixed by init
	goroutines     *goroutine.Engine  // the goroutine engine
	slots          chan struct{}      // MaxConns semaphore, or nil
	budget         *descriptorBudget  // the process's, or nil
	health         *outlier.Set       // targets that fail to connect
	counts         routeCounts        // each route's connections (Limits) and turn (Balance)
	stopProbes     context.CancelFunc // ends the probes of ejected targets
	heldBack       atomic.Bool        // logged that the budget held accepting back
	connObs        ConnObserver       // the Observer as one, or nil
	upObs          UpstreamObserver   // the Observer as one, or nil
	dialObs        DialObserver       // the Observer as one, or nil
	mu             sync.Mutex
	listeners      map[*net.Listener]struct{}
	conns          map[*conn]struct{}         // the shared connections (see engine.Lifecycle.Open), under mu
	dialed         map[tcpPair]struct{}       // the open upstream connections' addresses, under mu
	engines        map[engine.Engine]struct{} // engines to wake on Shutdown and Close, under mu
	active         atomic.Int64
	hardClosed     atomic.Bool
	lastID         atomic.Uint64
	releaser       sync.Once     // starts releaseAfterBursts
	uringFallback  sync.Once     // logs that io_uring is unavailable
	burst          burstRule     // zero: burstConns in releaseEvery
	memoryReleases atomic.Int64  // how many times it released memory
	ended          atomic.Uint64 // connections finished
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.done = make(chan struct{})
		s.listeners = map[*net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.dialed = map[tcpPair]struct{}{}
		s.engines = map[engine.Engine]struct{}{}
		if s.MaxConns > 0 {
			s.slots = make(chan struct{}, s.MaxConns)
		}
		s.budget = processBudget()
		s.connObs, s.upObs, s.dialObs = connObserverOf(s.Observer), upstreamObserverOf(s.Observer), dialObserverOf(s.Observer)
		s.settings = engine.Settings{PeekTimeout: s.PeekTimeout, MaxHelloSize: s.MaxHelloSize, TCPKeepAlive: s.TCPKeepAlive,
			Dial: s.dialFunc(), CustomDial: s.Dial != nil, Logger: s.logger()}
		s.goroutines = goroutine.New(s.lifecycle())
		s.health = outlier.New(s.EjectAfter, s.EjectFor)
		s.health.Dial, s.health.Timeout = s.settings.Dial, func() time.Duration { return s.connectTimeout(Route{}) }
		s.health.Ctx, s.stopProbes = context.WithCancel(context.Background())
		s.health.OnReturn = func(target string) {
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
// (one that has finished with an earlier connection, when one waits), or on
// the event loops or the io_uring loops (see Engine). It always returns a non-nil error and
// closes l; after Shutdown or Close the error is ErrServerClosed. Temporary
// accept errors, such as running out of file descriptors, are logged and
// retried with a backoff from 5 ms to 1 s, and connections already open keep
// being served.
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
	eng, err := s.engine()
	if err != nil {
		return err
	}
	served := false
	if tl, ok := l.(*onceCloseListener).Listener.(*net.TCPListener); ok && eng != EngineGoroutines {
		if eng == EngineIOUring {
			if cerr := iouring.Check(); cerr != nil {
				s.uringFallback.Do(func() {
					s.logger().Warn("gateway: io_uring unavailable; serving with the epoll event loops", "err", cerr.Error())
				})
			} else {
				served, err = iouring.Serve(s.lifecycle(), tl)
			}
		}
		if !served {
			served, err = epoll.Serve(s.lifecycle(), tl)
		}
	}
	if !served {
		err = s.goroutines.Serve(l)
	}
	if err == nil || s.closing() {
		return ErrServerClosed
	}
	return err
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

// ActiveConns returns how many connections are open.
func (s *Server) ActiveConns() int { return int(s.active.Load()) }

// Ejected returns the targets that outlier detection has ejected now (see
// EjectAfter), each with the time it was ejected: a connection tries them
// only after the route's other targets, until a probe connects to one. It
// is a copy, nil when none is ejected.
func (s *Server) Ejected() map[string]time.Time {
	s.init()
	return s.health.Ejected()
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
	var socks []engine.Sockets
	s.mu.Lock()
	for c := range s.conns {
		if stop := c.stop.Load(); stop != nil {
			stops = append(stops, *stop)
		} else if c.sockets != nil {
			socks = append(socks, c.sockets)
		}
	}
	s.mu.Unlock()
	// Outside the lock: stopping finishes parked directions, whose reports
	// untrack their connections.
	for _, stop := range stops {
		stop() // also finishes a parked direction
	}
	for _, k := range socks {
		k.Close() // the engine's goroutine then fails and forgets it
	}
	return nil
}

// stop stops accepting: it closes the listeners and wakes the engines.
func (s *Server) stop() {
	s.stopProbes()
	s.mu.Lock()
	s.doneOnce.Do(func() { close(s.done) })
	for l := range s.listeners {
		(*l).Close()
	}
	for e := range s.engines {
		e.Wake()
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
