// Package engine is the contract between package gateway's connection
// lifecycle and the engines that carry connections: the goroutine engine
// (gateway/internal/goroutine), the event loops (gateway/internal/epoll)
// and any later one. It is a leaf: both sides import it, and it imports
// nothing of meshgate's but sni.
//
// The lifecycle decides; an engine moves bytes. An engine accepts, reads
// the ClientHello, connects and forwards with system calls of its own, and
// at each step tells the lifecycle what happened through a Conn: the
// lifecycle admits connections (MaxConns, the open-file budget), asks the
// Router, detects loops, orders the targets, counts dial outcomes (outlier
// ejection), reports to the observers and the log, and tracks connections
// for Shutdown and Close. The lifecycle closes a connection's sockets
// itself, through the engine's Sockets, at the step its contract puts it
// (a refusal is counted before the client sees the close), and then
// forgets the connection (its slot is free). An engine never picks a
// rejection reason and never reports to an observer.
//
// What an engine does not do itself it hands over: Conn.HandOver continues
// a routed connection on the goroutine engine (a Route.Serve, a
// Server.Dial, a target that is a host name), Conn.Forward hands a
// connected one to the Forwarder (which splices).
package engine

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/meshgate/meshgate/sni"
)

// Lifecycle is the server as an engine sees it: admission, settings, and
// the opening of connections. Its methods are safe for concurrent use.
type Lifecycle interface {
	// Settings returns the server's settings, fixed when it started.
	Settings() *Settings
	// Done is closed when the server stops accepting (Shutdown or Close).
	Done() <-chan struct{}
	// Closing reports whether Done is closed.
	Closing() bool
	// HardClosed reports whether Close (not only Shutdown) was called: an
	// engine that carries connections on its own goroutines ends them with
	// Conn.Stop when it sees it.
	HardClosed() bool
	// Attach registers an engine that Shutdown and Close must wake (its
	// Wake is called after Done closes, and again on Close); it returns
	// false if the server is already closing. Detach takes it out; after
	// Detach returns, Wake is not called again.
	Attach(e Engine) bool
	Detach(e Engine)

	// AcquireSlot waits until one more connection may be opened (under
	// MaxConns, then the process's open-file budget); a LimitObserver
	// hears of each wait. It returns false if the server closed while it
	// waited.
	AcquireSlot() bool
	// TrySlot is AcquireSlot for an engine that must not wait: it takes a
	// slot if one is free at once. With report, a LimitObserver hears that
	// accepting waits (an engine reports the start of a wait, not every
	// retry).
	TrySlot(report bool) bool
	// ReleaseSlot frees a slot taken for a connection that was never opened
	// (the accept failed). Opened connections free theirs when the
	// lifecycle forgets them.
	ReleaseSlot()

	// Open registers a connection just accepted, for which the engine took
	// a slot, and returns its Conn; nil if the server is closing (the slot
	// is then freed, and the engine closes its socket). The lifecycle closes
	// s when it refuses or ends the connection. With shared, Close also
	// calls s.Close from its own goroutine, so s.Close must be safe for
	// concurrent use and more than one call; without, the engine ends its
	// connections itself on Close (see HardClosed).
	Open(s Sockets, remote, local net.Addr, shared bool) Conn
}

// Engine is an engine that Shutdown and Close wake.
type Engine interface {
	// Wake makes the engine look at the lifecycle's state (Closing,
	// HardClosed) soon. It is called from any goroutine and must not block.
	Wake()
}

// Sockets is an engine's hold on one connection's sockets.
type Sockets interface {
	// Close closes the connection's sockets, the client's and the
	// upstream's if one is open, and lets go of the engine's state for the
	// connection. The lifecycle calls it once from the goroutine that
	// refused or ended the connection (see Lifecycle.Open for shared ones).
	Close()
}

// Conn is one connection's lifecycle, as the engine carrying it drives it.
// Its methods are called from the engine's goroutine for the connection,
// one at a time, in the order of the connection's steps: Route, then
// NextTarget and DialFailed or Connected for each dial, then Forward, or
// Expired and End while the engine forwards itself; or, once routed,
// ServeInProcess or HandOver. Fail may come at any step before Connected,
// Stop at any step of a connection the engine carries itself. After a call
// that ends the connection (a false from Route or NextTarget, End, Fail,
// Stop), the connection is closed and forgotten, and the engine must not
// use it again; after Forward, ServeInProcess or HandOver it is no longer
// the engine's.
type Conn interface {
	// Route asks the Router where the connection goes, once hello (the
	// connection's ClientHello, the engine's to reuse afterwards) is read,
	// after making sure the connection is not one of the server's own. It
	// returns false if the connection is refused.
	Route(hello *sni.ClientHello) (Route, bool)
	// NextTarget returns the next target to dial, in the order the
	// lifecycle chose (ejected targets last). It returns false, and refuses
	// the connection, when none is left or the server is closing.
	NextTarget() (target string, ok bool)
	// DialFailed records that the target NextTarget gave could not be
	// connected, for the observers and outlier ejection.
	DialFailed(err error)
	// Connected records that the target NextTarget gave is connected, from
	// local to remote (zero values when the connection is not TCP): the
	// pair is what loop detection matches later connections against.
	Connected(local, remote netip.AddrPort)
	// Forward hands a connected connection to the Forwarder: it writes
	// replay to upstream and forwards both ways; sent and received are the
	// bytes the engine already moved each way. The connection is shared
	// from then on (Close stops the Forwarder). The engine runs runDown,
	// the direction from upstream to client, on a goroutine of its own.
	Forward(client, upstream net.Conn, replay []byte, sent, received int64) (runDown func())
	// ServeInProcess hands a connection whose Route.InProcess is set to
	// the route's Serve, with replay to be read again first; the engine
	// runs run on a goroutine of its own.
	ServeInProcess(client net.Conn, replay []byte) (run func())
	// HandOver continues a routed connection on the goroutine engine, for
	// what an engine does not do itself (a Route.InProcess, a server with
	// its own Dial, a target that is not ip:port); route is what Route
	// returned. The engine has let go of the connection's sockets: client
	// is its own.
	HandOver(client net.Conn, route Route, replay []byte)
	// Expired reports, for a forwarded connection an engine carries itself,
	// the error to end it with (End) if it is past a limit of its life at
	// now, last being when its last byte moved; nil if it may go on.
	Expired(now, last time.Time) error
	// End ends a forwarded connection: sent and received are the bytes moved
	// each way, err what ended it (nil for a clean close by both sides).
	End(sent, received int64, err error)
	// Fail ends a connection that could not go on because of err, before
	// it was forwarded: reading its ClientHello failed (the lifecycle takes
	// the reason from err: sni's errors, else a close before the hello), or
	// it could not be handed over.
	Fail(err error)
	// Stop ends a connection because the server was hard-closed: refused
	// with reason shutdown before it was forwarded, ended with sent and
	// received after.
	Stop(sent, received int64)
}

// Route is what an engine needs of a routed connection's route.
type Route struct {
	// Targets are the route's targets in the Router's order; NextTarget
	// gives the order to dial them in.
	Targets []string
	// InProcess: the route has a Serve (ServeInProcess, or HandOver).
	InProcess bool
	// ConnectTimeout bounds each dial: the route's, else the server's.
	ConnectTimeout time.Duration
	// KeepAlive is the route's own upstream keepalive (Route.KeepAlive,
	// else the server's RemoteKeepAlive for a Remote route); when it is not
	// enabled the server's TCPKeepAlive applies.
	KeepAlive net.KeepAliveConfig
}

// Settings are the server's fields an engine needs, as the server
// resolved them when it started.
type Settings struct {
	// PeekTimeout bounds reading the ClientHello: zero means
	// sni.DefaultTimeout, negative none (as sni.Reader.Timeout).
	PeekTimeout time.Duration
	// MaxHelloSize bounds the ClientHello: zero means sni.DefaultMaxSize.
	MaxHelloSize int
	// TCPKeepAlive, when positive, is the keepalive idle time of both
	// sockets of a forwarded connection.
	TCPKeepAlive time.Duration
	// Dial opens upstream connections; never nil.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// CustomDial reports whether Dial is the server's own Server.Dial
	// rather than a net.Dialer: an engine that dials by itself hands such
	// connections over.
	CustomDial bool
	// Logger is the server's logger; never nil.
	Logger *slog.Logger
}
