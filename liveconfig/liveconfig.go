// Package liveconfig applies a mesh gateway's Proxy.Config while the
// gateway runs, as Envoy takes a gateway's configuration from Consul
// without a restart: the listeners follow the bind options
// (proxyconfig.Gateway.Binds), opened and closed without touching the
// connections they accepted, and the connect timeout and the remote
// keepalive reach each new connection through a wrapped Router.
// FollowRegistration keeps them current from the agent's view of the
// gateway's registration; a program that reloads files calls Apply.
package liveconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/meshgate/meshgate/sni"
)

// Applier applies a gateway's Proxy.Config while it runs, as Envoy takes a
// gateway's configuration from Consul: the connect timeout and the remote
// keepalive reach the next connection through the Router it wraps (the
// Server itself is never changed), and the listeners follow the bind
// options, opened and closed without touching the connections they
// accepted. A configuration that cannot be applied (a bad value, an
// address that cannot be bound, one Check refuses) leaves the one in
// force, and says why. Make one with New; its methods are safe to call
// concurrently.
type Applier struct {
	s   *gateway.Server
	log *slog.Logger
	// name starts every log message ("meshgateway: configuration applied").
	name string
	// fixedTimeout: the Server's connect timeout was set by the operator
	// and wins over the options.
	fixedTimeout bool
	// applied, if set, hears of each configuration applied.
	applied func(opts proxyconfig.Gateway, addrs []string)
	// registration, if set, hears of each registration FollowRegistration reads.
	registration func(*api.AgentService)
	// listen opens a new listener.
	listen func(ctx context.Context, addr string) (net.Listener, error)

	opts    atomic.Pointer[proxyconfig.Gateway]
	mu      sync.Mutex
	check   func(addr net.Addr) error
	open    map[string]net.Listener        // by the address asked for
	retired map[net.Listener]bool          // closed here: their Serve's end is no error
	ended   map[net.Listener]chan struct{} // closed when the listener's Serve has returned
	closing []chan struct{}                // the ends of the listeners Apply closed, to wait for
	served  chan error                     // the end of a Serve that was not retired
	serving sync.WaitGroup
}

// Options configures an Applier. The zero value is useful.
type Options struct {
	// Logger hears each configuration applied and each that cannot be;
	// nil discards.
	Logger *slog.Logger
	// Name starts each log message; empty means "liveconfig".
	Name string
	// FixedConnectTimeout says the Server's ConnectTimeout was set by the
	// operator (a flag) and wins over the options' connect_timeout_ms.
	FixedConnectTimeout bool
	// Applied, if set, hears of each configuration applied that changed
	// something, with the listeners' addresses in the order of their binds.
	// It is called after the change, outside the Applier's lock.
	Applied func(opts proxyconfig.Gateway, addrs []string)
	// Registration, if set, hears of each changed registration
	// FollowRegistration reads (its Proxy merged with proxy-defaults by the
	// agent, as the agent serves it), the first at once, before its
	// options are applied: for what the Applier does not apply itself,
	// such as Proxy.AccessLogs. It is called from FollowRegistration's
	// goroutine.
	Registration func(*api.AgentService)
	// Listen opens the listener of a bind address Apply adds (a program
	// that takes its listeners over from a previous process on a binary
	// upgrade gives its own); nil listens on TCP with no keepalive of the
	// listener's own (the Server's TCPKeepAlive sets it per connection).
	Listen func(ctx context.Context, addr string) (net.Listener, error)
}

// New returns an Applier of s with opts in force and no listener yet
// (Serve hands it the first ones).
func New(s *gateway.Server, opts proxyconfig.Gateway, o Options) *Applier {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Name == "" {
		o.Name = "liveconfig"
	}
	if o.Listen == nil {
		o.Listen = func(ctx context.Context, addr string) (net.Listener, error) {
			return (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", addr)
		}
	}
	l := &Applier{s: s, log: o.Logger, name: o.Name, fixedTimeout: o.FixedConnectTimeout, applied: o.Applied, registration: o.Registration, listen: o.Listen,
		open: map[string]net.Listener{}, retired: map[net.Listener]bool{}, ended: map[net.Listener]chan struct{}{}, served: make(chan error, 1)}
	l.opts.Store(&opts)
	return l
}

// SetCheck makes check refuse a new listener (one whose address the routes
// lead back to, say) from the next Apply on, and returns the check it
// replaces; nil accepts every listener.
func (l *Applier) SetCheck(check func(addr net.Addr) error) (previous func(addr net.Addr) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	previous, l.check = l.check, check
	return previous
}

// Options returns the options in force.
func (l *Applier) Options() proxyconfig.Gateway { return *l.opts.Load() }

// Served returns a channel that receives the error of a listener's Serve
// that ended without Apply closing it (the Server's Shutdown or Close, or
// a failed listener): the program's cue to stop. It receives one at most.
func (l *Applier) Served() <-chan error { return l.served }

// Router returns next with the options in force applied to its routes:
// the connect timeout where a route has none of its own (unless
// FixedConnectTimeout), the remote keepalive where a Remote route sets
// none.
func (l *Applier) Router(next gateway.Router) gateway.Router {
	return gateway.RouterFunc(func(ctx context.Context, h *sni.ClientHello) (gateway.Route, error) {
		r, err := next.Route(ctx, h)
		if err != nil {
			return r, err
		}
		opts := l.opts.Load()
		// A resolver's ConnectTimeout wins, as in Consul; a fixed one wins
		// over the options.
		if r.ConnectTimeout == 0 && !l.fixedTimeout && opts.ConnectTimeout > 0 {
			r.ConnectTimeout = opts.ConnectTimeout
		}
		if r.Remote && opts.RemoteKeepAlive.Enable && !r.KeepAlive.Enable {
			r.KeepAlive = opts.RemoteKeepAlive
		}
		return r, nil
	})
}

// Serve serves the first listeners on the Server, each under the address
// it was asked for (addrs[i] for lns[i]), which later binds are compared
// with.
func (l *Applier) Serve(addrs []string, lns []net.Listener) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, ln := range lns {
		l.startLocked(addrs[i], ln)
	}
}

func (l *Applier) startLocked(addr string, ln net.Listener) {
	l.open[addr] = ln
	ended := make(chan struct{})
	l.ended[ln] = ended
	l.serving.Add(1)
	go func() {
		defer l.serving.Done()
		err := l.s.Serve(ln)
		close(ended)
		l.mu.Lock()
		retired := l.retired[ln]
		delete(l.retired, ln)
		delete(l.ended, ln)
		l.mu.Unlock()
		if !retired {
			select {
			case l.served <- err:
			default: // one is enough to stop
			}
		}
	}()
}

// Addrs returns the addresses listened on for the binds order names, in
// that order.
func (l *Applier) Addrs(order []string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range order {
		if ln, ok := l.open[a]; ok {
			out = append(out, ln.Addr().String())
		}
	}
	return out
}

// Apply makes opts and binds the configuration in force, or, if binds
// cannot all be listened on (or the check refuses one), leaves the one in
// force and returns why. Listeners opened for it are closed again on
// failure; dropped ones are closed only once the new ones listen, and the
// connections they accepted go on. When Apply returns, the addresses of
// the listeners it closed are free: it waits until the Server's engine has
// let go of each (gateway.Server.Serve returns).
func (l *Applier) Apply(ctx context.Context, opts proxyconfig.Gateway, binds []string) error {
	if len(binds) == 0 {
		return errors.New("nothing to listen on: envoy_gateway_no_default_bind is set and no other bind address is given")
	}
	l.mu.Lock()
	changed, addrs, err := l.applyLocked(ctx, opts, binds)
	closing := l.closing
	l.closing = nil
	l.mu.Unlock()
	for _, ended := range closing {
		<-ended
	}
	if err == nil && changed && l.applied != nil {
		l.applied(opts, addrs)
	}
	return err
}

// applyLocked is apply with l.mu held; it reports whether anything changed
// and the listeners' addresses.
func (l *Applier) applyLocked(ctx context.Context, opts proxyconfig.Gateway, binds []string) (changed bool, addrs []string, err error) {
	var opened []string
	fail := func(err error) (bool, []string, error) {
		for _, a := range opened {
			ln := l.open[a]
			delete(l.open, a)
			l.retired[ln] = true
			l.closing = append(l.closing, l.ended[ln])
			ln.Close()
		}
		return false, nil, err
	}
	for _, a := range binds {
		if _, ok := l.open[a]; ok {
			continue
		}
		ln, err := l.listen(ctx, a)
		if err != nil {
			return fail(fmt.Errorf("listening on %s: %w", a, err))
		}
		if l.check != nil {
			if err := l.check(ln.Addr()); err != nil {
				ln.Close()
				return fail(err)
			}
		}
		l.startLocked(a, ln)
		opened = append(opened, a)
	}
	var closed []string
	for a, ln := range l.open {
		if !slices.Contains(binds, a) {
			delete(l.open, a)
			l.retired[ln] = true
			l.closing = append(l.closing, l.ended[ln])
			ln.Close() // its connections go on
			closed = append(closed, a)
		}
	}
	before := l.opts.Swap(&opts)
	addrs = l.addrsLocked(binds)
	changed = len(opened) > 0 || len(closed) > 0 || !reflect.DeepEqual(*before, opts)
	if changed {
		slices.Sort(closed)
		l.log.Info(l.name+": configuration applied", "listening", strings.Join(addrs, ","),
			"opened", opened, "closed", closed, "connect_timeout", l.ConnectTimeout(opts).String(), "remote_keepalive", opts.RemoteKeepAlive.Enable)
	}
	return changed, addrs, nil
}

// Listeners returns the listeners open now, by the bind address each was
// opened for. They stay the Applier's: the caller may read them or
// duplicate their descriptors (a binary upgrade hands them to a new
// process), not close them.
func (l *Applier) Listeners() map[string]net.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.open)
}

// Listening returns the addresses listened on now, in no order.
func (l *Applier) Listening() []net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]net.Addr, 0, len(l.open))
	for _, ln := range l.open {
		out = append(out, ln.Addr())
	}
	return out
}

func (l *Applier) addrsLocked(order []string) []string {
	var out []string
	for _, a := range order {
		if ln, ok := l.open[a]; ok {
			out = append(out, ln.Addr().String())
		}
	}
	return out
}

// ConnectTimeout is the connect timeout opts give a route without its own:
// theirs, or the Server's when they set none or FixedConnectTimeout.
func (l *Applier) ConnectTimeout(opts proxyconfig.Gateway) time.Duration {
	if l.fixedTimeout || opts.ConnectTimeout <= 0 {
		if l.s.ConnectTimeout > 0 {
			return l.s.ConnectTimeout
		}
		return gateway.DefaultConnectTimeout
	}
	return opts.ConnectTimeout
}

// Wait returns when the listeners' Serves have all ended (after the
// Server's Shutdown or Close).
func (l *Applier) Wait() { l.serving.Wait() }

// FollowRegistration applies the options of the gateway registered under
// id each time the agent's view of it changes (a blocking query on
// /v1/agent/service/<id>, which the agent wakes within milliseconds when
// the registration or the proxy-defaults entry changes, with the merged
// Proxy.Config); binds says where to listen for them. It returns when ctx
// ends.
func (l *Applier) FollowRegistration(ctx context.Context, client *api.Client, id string, binds func(*api.AgentService, proxyconfig.Gateway) []string) {
	hash := ""
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		svc, meta, err := client.Agent().Service(id, (&api.QueryOptions{WaitHash: hash, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				l.log.Warn(l.name+": following the registration; the configuration in force stays", "id", id, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
				wait = min(2*wait, 10*time.Second)
			}
			continue
		}
		wait = 100 * time.Millisecond
		if meta.LastContentHash == hash {
			continue
		}
		hash = meta.LastContentHash
		if l.registration != nil {
			l.registration(svc)
		}
		opts, err := proxyconfig.ParseService(svc)
		if err == nil {
			err = l.Apply(ctx, opts, binds(svc, opts))
		}
		if err != nil {
			l.log.Error(l.name+": the changed configuration cannot be applied; the one in force stays", "id", id, "err", err)
		}
	}
}
