package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// live applies the gateway's Proxy.Config while it runs, as Envoy takes
// a gateway's configuration from Consul: the connect timeout and the
// remote keepalive reach the next connection through the router (the
// Server itself is never changed), and the listeners follow the bind
// options, opened and closed without touching the connections they
// accepted. A configuration that cannot be applied (a bad value, an
// address that cannot be bound) leaves the one in force, and says why.
type live struct {
	s   *gateway.Server
	log *slog.Logger
	// timeoutFlag: -connect-timeout was given, and wins over the options.
	timeoutFlag bool
	// check refuses a listener whose address the routes lead back to.
	check func(addr net.Addr) error
	// applied, if set, hears of each configuration applied, with the
	// listeners' addresses in the order of their binds.
	applied func(opts proxyconfig.Gateway, addrs []string)

	opts    atomic.Pointer[proxyconfig.Gateway]
	mu      sync.Mutex
	open    map[string]net.Listener // by the address asked for
	retired map[net.Listener]bool   // closed here: their Serve's end is no error
	served  chan error              // the end of a Serve that was not retired
	serving sync.WaitGroup
}

func newLive(s *gateway.Server, log *slog.Logger, opts proxyconfig.Gateway, timeoutFlag bool) *live {
	l := &live{s: s, log: log, timeoutFlag: timeoutFlag, open: map[string]net.Listener{}, retired: map[net.Listener]bool{},
		served: make(chan error, 1), check: func(net.Addr) error { return nil }}
	l.opts.Store(&opts)
	return l
}

// router returns next with the current options applied to its routes.
func (l *live) router(next gateway.Router) gateway.Router {
	return gateway.RouterFunc(func(ctx context.Context, h *sni.ClientHello) (gateway.Route, error) {
		r, err := next.Route(ctx, h)
		if err != nil {
			return r, err
		}
		opts := l.opts.Load()
		// A resolver's ConnectTimeout wins, as in Consul; -connect-timeout
		// wins over the options.
		if r.ConnectTimeout == 0 && !l.timeoutFlag && opts.ConnectTimeout > 0 {
			r.ConnectTimeout = opts.ConnectTimeout
		}
		if r.Remote && opts.RemoteKeepAlive.Enable && !r.KeepAlive.Enable {
			r.KeepAlive = opts.RemoteKeepAlive
		}
		return r, nil
	})
}

// serve serves the first listeners, by the addresses they were asked for.
func (l *live) serve(addrs []string, lns []net.Listener) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, ln := range lns {
		l.startLocked(addrs[i], ln)
	}
}

func (l *live) startLocked(addr string, ln net.Listener) {
	l.open[addr] = ln
	l.serving.Add(1)
	go func() {
		defer l.serving.Done()
		err := l.s.Serve(ln)
		l.mu.Lock()
		retired := l.retired[ln]
		delete(l.retired, ln)
		l.mu.Unlock()
		if !retired {
			select {
			case l.served <- err:
			default: // one is enough to stop
			}
		}
	}()
}

// addrs returns the listeners' addresses, in the order asked.
func (l *live) addrs(order []string) []string {
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

// apply makes opts and binds the configuration in force, or, if binds
// cannot all be listened on (or would route to the gateway itself),
// leaves the one in force and returns why. Listeners opened for it are
// closed again on failure; dropped ones are closed only once the new ones
// listen.
func (l *live) apply(ctx context.Context, opts proxyconfig.Gateway, binds []string) error {
	if len(binds) == 0 {
		return errors.New("nothing to listen on: envoy_gateway_no_default_bind is set and no other bind address is given")
	}
	l.mu.Lock()
	changed, addrs, err := l.applyLocked(ctx, opts, binds)
	l.mu.Unlock()
	if err == nil && changed && l.applied != nil {
		l.applied(opts, addrs)
	}
	return err
}

// applyLocked is apply with l.mu held; it reports whether anything changed
// and the listeners' addresses.
func (l *live) applyLocked(ctx context.Context, opts proxyconfig.Gateway, binds []string) (changed bool, addrs []string, err error) {
	var opened []string
	fail := func(err error) (bool, []string, error) {
		for _, a := range opened {
			ln := l.open[a]
			delete(l.open, a)
			l.retired[ln] = true
			ln.Close()
		}
		return false, nil, err
	}
	for _, a := range binds {
		if _, ok := l.open[a]; ok {
			continue
		}
		ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", a)
		if err != nil {
			return fail(fmt.Errorf("listening on %s: %w", a, err))
		}
		if err := l.check(ln.Addr()); err != nil {
			ln.Close()
			return fail(err)
		}
		l.startLocked(a, ln)
		opened = append(opened, a)
	}
	var closed []string
	for a, ln := range l.open {
		if !slices.Contains(binds, a) {
			delete(l.open, a)
			l.retired[ln] = true
			ln.Close() // its connections go on
			closed = append(closed, a)
		}
	}
	before := l.opts.Swap(&opts)
	addrs = l.addrsLocked(binds)
	changed = len(opened) > 0 || len(closed) > 0 || !reflect.DeepEqual(*before, opts)
	if changed {
		slices.Sort(closed)
		l.log.Info("meshgateway: configuration applied", "listening", strings.Join(addrs, ","),
			"opened", opened, "closed", closed, "connect_timeout", l.timeout(opts).String(), "remote_keepalive", opts.RemoteKeepAlive.Enable)
	}
	return changed, addrs, nil
}

// listening returns the addresses listened on now.
func (l *live) listening() []net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]net.Addr, 0, len(l.open))
	for _, ln := range l.open {
		out = append(out, ln.Addr())
	}
	return out
}

func (l *live) addrsLocked(order []string) []string {
	var out []string
	for _, a := range order {
		if ln, ok := l.open[a]; ok {
			out = append(out, ln.Addr().String())
		}
	}
	return out
}

// timeout is the connect timeout the options give routes without their own.
func (l *live) timeout(opts proxyconfig.Gateway) time.Duration {
	if l.timeoutFlag || opts.ConnectTimeout <= 0 {
		if l.s.ConnectTimeout > 0 {
			return l.s.ConnectTimeout
		}
		return gateway.DefaultConnectTimeout
	}
	return opts.ConnectTimeout
}

// wait returns when the listeners' Serves have all ended (after the
// Server's Shutdown or Close).
func (l *live) wait() { l.serving.Wait() }

// followRegistration applies the options of the gateway registered under
// id each time the agent's view of it changes (a blocking query on
// /v1/agent/service/<id>, which the agent wakes within milliseconds when
// the registration or the proxy-defaults entry changes, with the merged
// Proxy.Config); binds says where to listen for them. It returns when ctx
// ends.
func (l *live) followRegistration(ctx context.Context, client *api.Client, id string, binds func(*api.AgentService, proxyconfig.Gateway) []string) {
	hash := ""
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		svc, meta, err := client.Agent().Service(id, (&api.QueryOptions{WaitHash: hash, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				l.log.Warn("meshgateway: following the registration; the configuration in force stays", "id", id, "err", err)
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
		opts, err := parseProxyConfig(svc)
		if err == nil {
			err = l.apply(ctx, opts, binds(svc, opts))
		}
		if err != nil {
			l.log.Error("meshgateway: the changed configuration cannot be applied; the one in force stays", "id", id, "err", err)
		}
	}
}
