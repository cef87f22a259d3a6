package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/meshgate/meshgate/registration"
)

// consulGateway is this gateway as the local Consul agent knows it: the
// registration, and the Proxy.Config options the agent resolved for it.
type consulGateway struct {
	client     *api.Client
	log        *slog.Logger
	listen     string // -listen
	listenSet  bool   // -listen was given
	address    string // -address
	reg        registration.Gateway
	registered *registration.Registration // set once registered
	own        string                     // where the gateway listens for its registration
	id         string                     // the registration's ID
	attached   bool                       // serving someone else's registration (-proxy-id)
	// released: the registration is no longer this process's to remove
	// (removed already, or handed over to a new process).
	released atomic.Bool
}

// binds returns where the gateway listens for the registration svc and its
// options: its own address (-listen, else the registration's when attached)
// and what the bind options add.
func (g *consulGateway) binds(svc *api.AgentService, opts proxyconfig.Gateway) []string {
	own := g.own
	if g.attached {
		own = g.listen
		if !g.listenSet {
			// An empty address is every interface, as Consul's gateway binds.
			own = net.JoinHostPort(svc.Address, strconv.Itoa(svc.Port))
		}
	}
	return opts.Binds(own, registration.TaggedAddresses(svc))
}

// checkFollows moves the health check of a gateway this process registered
// to its first listener when envoy_gateway_no_default_bind leaves its own
// address out, and back when the option goes.
func (g *consulGateway) checkFollows(ctx context.Context, opts proxyconfig.Gateway, addrs []string) error {
	if g.attached || len(addrs) == 0 {
		return nil
	}
	want := ""
	if opts.NoDefaultBind {
		want = addrs[0]
	}
	if want == g.reg.CheckAddress {
		return nil
	}
	g.reg.CheckAddress = want
	if err := g.registered.Update(ctx, g.reg); err != nil {
		return err
	}
	g.log.Info("meshgateway: health check moved", "check_address", cmp.Or(want, g.reg.Address))
	return nil
}

// attach serves as the mesh gateway already registered under id: it listens
// where the registration and its Proxy.Config say, with -listen, when
// given, in place of the registration's own address.
func (g *consulGateway) attach(ctx context.Context, id string) ([]net.Listener, []string, proxyconfig.Gateway, error) {
	g.id, g.attached = id, true
	svc, err := registration.GatewayService(ctx, g.client, id)
	if err != nil {
		return nil, nil, proxyconfig.Gateway{}, err
	}
	opts, err := proxyconfig.ParseService(svc)
	if err != nil {
		return nil, nil, opts, err
	}
	binds := g.binds(svc, opts)
	lns, err := listenAll(ctx, binds, nil)
	if err != nil {
		return nil, nil, opts, fmt.Errorf("gateway %q: %w", id, err)
	}
	g.log.Info("meshgateway: serving as the registered gateway", "id", id, "service", svc.Service)
	return lns, binds, opts, nil
}

// register listens on -listen (or, without it, on -address, as Consul's
// Envoy listens on its registration's address), registers the gateway
// advertising -address (or what Consul's command would: see
// registration.Advertise), reads the options the agent resolved for it
// (proxy-defaults' Config) and listens where they say. With
// envoy_gateway_no_default_bind (-bind-address) the health check is moved
// to the first listener that remains.
func (g *consulGateway) register(ctx context.Context) ([]net.Listener, []string, proxyconfig.Gateway, error) {
	listen := g.listen
	if !g.listenSet && g.address != "" {
		var err error
		if listen, err = registration.ListenAddress(g.address); err != nil && len(g.reg.BindAddresses) == 0 {
			return nil, nil, proxyconfig.Gateway{}, err
		}
	}
	var own net.Listener
	fail := func(err error) ([]net.Listener, []string, proxyconfig.Gateway, error) {
		if own != nil {
			own.Close()
		}
		return nil, nil, proxyconfig.Gateway{}, err
	}
	if len(g.reg.BindAddresses) == 0 || g.listenSet {
		first, err := listenAll(ctx, []string{listen}, nil)
		if err != nil {
			return nil, nil, proxyconfig.Gateway{}, err
		}
		own = first[0]
		g.own = own.Addr().String()
	} else {
		// -bind-address alone says where it listens; the port advertised
		// is -address's, or Consul's 8443.
		g.own = ":8443"
	}
	var err error
	if g.reg.Address, err = registration.Advertise(g.own, g.address); err != nil {
		return fail(err)
	}
	if g.registered, err = registration.Register(ctx, g.client, g.reg); err != nil {
		return fail(err)
	}
	g.id = g.registered.ID()
	g.log.Info("meshgateway: registered with Consul", "service", cmp.Or(g.reg.Name, registration.DefaultName), "id", g.id,
		"address", g.reg.Address, "listen", g.own)
	svc, err := registration.GatewayService(ctx, g.client, g.id)
	if err != nil {
		return fail(err)
	}
	opts, err := proxyconfig.ParseService(svc)
	if err != nil {
		return fail(err)
	}
	binds := g.binds(svc, opts)
	lns, err := listenAll(ctx, binds, own)
	own = nil // listenAll keeps it or closes it
	if err != nil {
		return fail(err)
	}
	addrs := make([]string, len(lns))
	for i, ln := range lns {
		addrs[i] = ln.Addr().String()
	}
	if err := g.checkFollows(ctx, opts, addrs); err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, nil, opts, err
	}
	return lns, binds, opts, nil
}

// waitGatewayService reads the gateway registered under id; with wait, it
// retries while the agent does not answer, until ctx ends.
func waitGatewayService(ctx context.Context, client *api.Client, id string, wait bool, log *slog.Logger) (*api.AgentService, error) {
	delay := 100 * time.Millisecond
	for {
		svc, err := registration.GatewayService(ctx, client, id)
		if err == nil || !wait || !errors.Is(err, consulview.ErrAgentUnreachable) {
			return svc, err
		}
		log.Warn("meshgateway: waiting for the Consul agent", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// deregisterIfRegistered removes the registration register made, if any
// and if it is still this process's; only the first call does.
func (g *consulGateway) deregisterIfRegistered() {
	if g.registered == nil || g.released.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch err := g.registered.Deregister(ctx); {
	case errors.Is(err, registration.ErrReplaced):
		g.log.Info("meshgateway: registration left in place: another instance registered it since", "err", err)
	case err != nil:
		g.log.Warn("meshgateway: deregistering", "err", err)
	}
}

// deregisterNow removes the registration register made, and returns why
// it could not: registration.ErrReplaced when another instance registered
// it since (it is left to that one). Only the first call, of it or of
// deregisterIfRegistered, does anything.
func (g *consulGateway) deregisterNow(ctx context.Context) error {
	if g.registered == nil || g.released.Swap(true) {
		return nil
	}
	return g.registered.Deregister(ctx)
}

// handedOver forgets the registration: a new process (a binary upgrade)
// serves it now.
func (g *consulGateway) handedOver() { g.released.Store(true) }
