// Package gatewayhealth watches the mesh gateways of other datacenters,
// partitions and peers by probing them, and gives views of the mesh in
// which those that do not answer are left out and those the catalog still
// lists as critical but that answer are put back.
//
// A Source wraps another mesh source. Everything that reads views through
// it (a gateway's routers, a sidecar's Dialer) then skips a remote gateway
// that stopped answering within one probe, where the catalog takes up to
// its check's interval (10 s for Consul's own TCP check) and a client a
// connect timeout per connection; and uses a gateway that has just started
// as soon as it answers, where the catalog lists it as critical until the
// agent's first check, which runs after a random wait of up to the
// interval. A gateway in maintenance (Consul's service or node maintenance)
// was taken out on purpose and stays out: it is not even probed.
//
// When every gateway of a location is out, the view has none for it: a
// gateway refuses the location's names at once, and a sidecar's plan has
// nothing to dial for the targets there, so its Dialer moves on to the
// next target of the failover chain without waiting for a connect
// timeout.
package gatewayhealth

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshgate/meshgate/mesh"
)

// Defaults of Options.
const (
	// DefaultInterval is the wait between two probes of a gateway.
	DefaultInterval = 2 * time.Second
	// DefaultTimeout bounds a probe's connect.
	DefaultTimeout = time.Second
)

// Options configures a Source; the zero value is usable.
type Options struct {
	// Interval is the wait between two probes of a gateway that answers:
	// zero means DefaultInterval (2 s). One that does not is probed every
	// quarter of it (500 ms by default), and one first seen in a view at
	// once.
	Interval time.Duration
	// Timeout bounds a probe: zero means DefaultTimeout (1 s).
	Timeout time.Duration
	// Dial makes the probes' connections; nil means a net.Dialer. A probe
	// is a TCP connect closed at once, as Consul's own TCP check.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger receives one Info line per gateway that goes out or comes
	// back; nil discards.
	Logger *slog.Logger
}

var _ mesh.Follower = (*Source)(nil)

// Source is a mesh source whose views have the other locations' gateways
// as the probes find them (see the package comment). It is a Follower when
// the source it wraps is one. Make it with New; Close ends the probes.
type Source struct {
	inner    mesh.Source
	opts     Options
	log      *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	kick     chan struct{}
	gen      atomic.Uint64 // bumped at every change of a gateway's state
	cache    atomic.Pointer[derived]
	mu       sync.Mutex
	gateways map[string]*gatewayState // by address
	probes   sync.WaitGroup
}

// derived is a view made from an inner view at a generation of states.
type derived struct {
	in  *mesh.View
	gen uint64
	out *mesh.View
}

type gatewayState struct {
	location string // where the views last placed it, for logs and metrics
	probed   bool   // a probe has ended
	up       bool
	failures int // consecutive failed probes
	latency  time.Duration
	err      error
	since    time.Time // of the current state
	last     time.Time // the last probe's start
	probing  bool      // a probe is under way
}

// New wraps src and starts probing the gateways its views name, until
// Close.
func New(src mesh.Source, opts Options) *Source {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	s := &Source{inner: src, opts: opts, log: opts.Logger, done: make(chan struct{}), kick: make(chan struct{}, 1),
		gateways: map[string]*gatewayState{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s
}

// Close stops the probes and waits for them to end. Views keep the states
// the last probes found.
func (s *Source) Close() error {
	s.cancel()
	<-s.done
	s.probes.Wait()
	return nil
}

// View returns the wrapped source's current view with the other
// locations' gateways as the probes find them: those a probe could not
// connect to are left out, and those the catalog lists as critical
// (View.UnhealthyGateways) whose last probe connected are routed. A
// gateway not probed yet counts as the catalog says. Views are made once
// per change of the wrapped view or of a gateway's state, so a View costs
// two atomic loads otherwise.
func (s *Source) View() *mesh.View {
	in := s.inner.View()
	gen := s.gen.Load()
	if c := s.cache.Load(); c != nil && c.in == in && c.gen == gen {
		return c.out
	}
	s.mu.Lock()
	out, unknown := s.deriveLocked(in)
	gen = s.gen.Load() // under mu: no change of state is missed
	s.mu.Unlock()
	s.cache.Store(&derived{in: in, gen: gen, out: out})
	if unknown {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return out
}

// Follow implements mesh.Follower when the wrapped source does; otherwise
// it does nothing.
func (s *Source) Follow(ctx context.Context, keys ...mesh.ServiceKey) error {
	if f, ok := s.inner.(mesh.Follower); ok {
		return f.Follow(ctx, keys...)
	}
	return nil
}

// Gateway is the state of one probed gateway.
type Gateway struct {
	// Location is where the views place it: "dc2", "dc2/partition", or
	// "peer NAME".
	Location string
	Address  string
	// Up reports whether its last probe connected; a gateway not probed
	// yet is not listed.
	Up bool
	// Latency is the last probe's connect time (when Up).
	Latency time.Duration
	// Err is why the last probe failed (when not Up).
	Err error
	// Since is when it last went up or out.
	Since time.Time
}

// Gateways returns the probed gateways' states, by location and address.
func (s *Source) Gateways() []Gateway {
	s.mu.Lock()
	out := make([]Gateway, 0, len(s.gateways))
	for addr, g := range s.gateways {
		if g.probed {
			out = append(out, Gateway{Location: g.location, Address: addr, Up: g.up, Latency: g.latency, Err: g.err, Since: g.since})
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Location != out[j].Location {
			return out[i].Location < out[j].Location
		}
		return out[i].Address < out[j].Address
	})
	return out
}

// target is one gateway a view names, and whether the catalog lists it as
// routable.
type target struct {
	location string
	address  string
	routable bool
}

// targets lists the gateways of other locations that v names: its
// Gateways and UnhealthyGateways of every location but its own (by WAN
// address across datacenters), and its peers' gateways.
func targets(v *mesh.View) []target {
	var out []target
	local := v.Local()
	add := func(l mesh.Location, eps []mesh.Endpoint, routable bool) {
		if l == local {
			return
		}
		wan := l.Datacenter != v.Datacenter
		for _, e := range eps {
			if a := e.BestAddress(wan); a != "" {
				out = append(out, target{l.String(), a, routable})
			}
		}
	}
	for l, eps := range v.Gateways {
		add(l, eps, true)
	}
	for l, eps := range v.UnhealthyGateways {
		add(l, eps, false)
	}
	for name, p := range v.Peers {
		loc := "peer " + name
		for _, a := range p.Gateways {
			out = append(out, target{loc, a, true})
		}
		for _, im := range p.Imports {
			for _, a := range im.Gateways {
				out = append(out, target{loc, a, true})
			}
		}
	}
	return out
}

// routed reports whether the gateway at addr is routed: the catalog's
// word (routable) unless a probe has ended, then the probe's. s.mu is held.
func (s *Source) routedLocked(addr string, routable bool) bool {
	g := s.gateways[addr]
	if g == nil || !g.probed {
		return routable
	}
	return g.up
}

// deriveLocked makes the view of in, and reports whether it names a
// gateway never probed. s.mu is held.
func (s *Source) deriveLocked(in *mesh.View) (out *mesh.View, unknown bool) {
	for _, t := range targets(in) {
		if g := s.gateways[t.address]; g == nil || !g.probed {
			unknown = true
			break
		}
	}
	local := in.Local()
	changed := false
	gateways := make(map[mesh.Location][]mesh.Endpoint, len(in.Gateways)+len(in.UnhealthyGateways))
	for l, eps := range in.Gateways {
		if l == local {
			gateways[l] = eps
			continue
		}
		wan := l.Datacenter != in.Datacenter
		kept := slices.DeleteFunc(slices.Clone(eps), func(e mesh.Endpoint) bool { return !s.routedLocked(e.BestAddress(wan), true) })
		if len(kept) != len(eps) {
			changed = true
		}
		gateways[l] = kept
	}
	for l, eps := range in.UnhealthyGateways {
		if l == local {
			continue
		}
		wan := l.Datacenter != in.Datacenter
		for _, e := range eps {
			if s.routedLocked(e.BestAddress(wan), false) {
				gateways[l] = append(gateways[l], e)
				changed = true
			}
		}
	}
	var peers map[string]mesh.Peer
	for name, p := range in.Peers {
		kept := s.keptLocked(p.Gateways)
		var imports []mesh.ImportedService
		for i, im := range p.Imports {
			if g := s.keptLocked(im.Gateways); len(g) != len(im.Gateways) {
				if imports == nil {
					imports = slices.Clone(p.Imports)
				}
				imports[i].Gateways = g
			}
		}
		if len(kept) == len(p.Gateways) && imports == nil {
			continue
		}
		if peers == nil {
			peers = make(map[string]mesh.Peer, len(in.Peers))
			for n, q := range in.Peers {
				peers[n] = q
			}
		}
		p.Gateways = kept
		if imports != nil {
			p.Imports = imports
		}
		peers[name] = p
	}
	if !changed && peers == nil {
		return in, unknown
	}
	v := *in
	if changed {
		for l, eps := range gateways {
			if len(eps) == 0 {
				delete(gateways, l) // no gateway answers: the location has none
			}
		}
		v.Gateways = gateways
	}
	if peers != nil {
		v.Peers = peers
	}
	return &v, unknown
}

// keptLocked returns the addresses of addrs that are routed (addrs itself
// when all are). s.mu is held.
func (s *Source) keptLocked(addrs []string) []string {
	for i, a := range addrs {
		if !s.routedLocked(a, true) {
			kept := slices.Clone(addrs[:i])
			for _, b := range addrs[i+1:] {
				if s.routedLocked(b, true) {
					kept = append(kept, b)
				}
			}
			return kept
		}
	}
	return addrs
}

// run probes the gateways the wrapped source's views name until Close:
// those that answer every Interval, those that do not every quarter of it
// (so that a gateway that comes back is routed soon), and one never probed
// at once.
func (s *Source) run() {
	defer close(s.done)
	t := time.NewTicker(s.opts.Interval / 4)
	defer t.Stop()
	s.round(false)
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.round(false)
		case <-s.kick:
			s.round(true)
		}
	}
}

// round probes, at once, each gateway of the current view that is due
// (only those never probed, with onlyNew), and forgets those it no longer
// names.
func (s *Source) round(onlyNew bool) {
	ts := targets(s.inner.View())
	now := time.Now()
	s.mu.Lock()
	seen := make(map[string]bool, len(ts))
	var todo []string
	for _, t := range ts {
		if seen[t.address] {
			continue
		}
		seen[t.address] = true
		g := s.gateways[t.address]
		if g == nil {
			g = &gatewayState{}
			s.gateways[t.address] = g
		}
		g.location = t.location
		due := !g.probed || (!onlyNew && (!g.up || now.Sub(g.last) >= s.opts.Interval-s.opts.Interval/8))
		if due && !g.probing {
			g.probing = true
			todo = append(todo, t.address)
		}
	}
	if !onlyNew {
		for addr, g := range s.gateways {
			if !seen[addr] && !g.probing {
				delete(s.gateways, addr)
			}
		}
	}
	s.mu.Unlock()
	for _, addr := range todo {
		s.probes.Add(1)
		go func() {
			defer s.probes.Done()
			s.probe(addr)
		}()
	}
}

// probe connects to addr once and records what it found.
func (s *Source) probe(addr string) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	start := time.Now()
	c, err := s.opts.Dial(ctx, "tcp", addr)
	latency := time.Since(start)
	cancel()
	if c != nil {
		c.Close()
	}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return // closing: no verdict
	}
	g := s.gateways[addr]
	if g == nil {
		s.mu.Unlock()
		return
	}
	g.probing, g.last = false, start
	wasProbed, wasUp := g.probed, g.up
	g.probed = true
	if err == nil {
		g.failures, g.latency, g.err = 0, latency, nil
		g.up = true
	} else {
		g.failures++
		g.err = err
		// A refusal is a verdict; a timeout may be a moment's loss, so
		// it takes two in a row.
		g.up = wasProbed && wasUp && !refused(err) && g.failures < 2
	}
	changed := !wasProbed || g.up != wasUp
	if changed {
		g.since = time.Now()
		s.gen.Add(1)
	}
	loc, up := g.location, g.up
	s.mu.Unlock()
	switch {
	case !changed:
	case up && wasProbed:
		s.log.Info("gatewayhealth: gateway answers again; routed", "location", loc, "address", addr, "connect", latency.String())
	case !up:
		s.log.Info("gatewayhealth: gateway does not answer; not routed until it does", "location", loc, "address", addr, "err", err.Error())
	}
}

// refused reports whether a connect failed because nothing listens there
// or the host or network cannot be reached: an answer, not a silence.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || strings.Contains(err.Error(), "connection refused")
}
