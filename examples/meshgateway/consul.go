package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
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
	reg        registration.Gateway
	deregister func() error // set once registered
	id         string       // the registration's ID
	attached   bool         // serving someone else's registration (-proxy-id)
}

// binds returns where the gateway listens for the registration svc and its
// options: its own address (-listen, else the registration's when attached)
// and what the bind options add.
func (g *consulGateway) binds(svc *api.AgentService, opts proxyconfig.Gateway) []string {
	own := g.reg.Address
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
	if _, err := registration.Register(ctx, g.client, g.reg); err != nil {
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

// register listens on -listen, registers the gateway there, reads the
// options the agent resolved for it (proxy-defaults' Config) and listens
// where they say. With envoy_gateway_no_default_bind the health check is
// moved to the first listener that remains.
func (g *consulGateway) register(ctx context.Context) ([]net.Listener, []string, proxyconfig.Gateway, error) {
	first, err := listenAll(ctx, []string{g.listen}, nil)
	if err != nil {
		return nil, nil, proxyconfig.Gateway{}, err
	}
	own := first[0]
	g.reg.Address = own.Addr().String()
	fail := func(err error) ([]net.Listener, []string, proxyconfig.Gateway, error) {
		own.Close()
		return nil, nil, proxyconfig.Gateway{}, err
	}
	if g.deregister, err = registration.Register(ctx, g.client, g.reg); err != nil {
		return fail(err)
	}
	g.id = g.reg.ID
	if g.id == "" {
		g.id = g.reg.Name
	}
	g.log.Info("meshgateway: registered with Consul", "service", g.reg.Name, "id", g.id, "address", g.reg.Address)
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
	if err != nil {
		return nil, nil, opts, err
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

// deregisterIfRegistered removes the registration register made, if any.
func (g *consulGateway) deregisterIfRegistered() {
	if g.deregister == nil {
		return
	}
	if err := g.deregister(); err != nil {
		g.log.Warn("meshgateway: deregistering", "err", err)
	}
}
