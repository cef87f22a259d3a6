package main

import (
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
)

// consulGateway is this gateway as the local Consul agent knows it: the
// registration, and the Proxy.Config options the agent resolved for it.
type consulGateway struct {
	client     *api.Client
	log        *slog.Logger
	listen     string // -listen
	listenSet  bool   // -listen was given
	reg        consulview.GatewayRegistration
	deregister func() error // set once registered
}

// attach serves as the mesh gateway already registered under id: it listens
// where the registration and its Proxy.Config say, with -listen, when
// given, in place of the registration's own address.
func (g *consulGateway) attach(ctx context.Context, id string) ([]net.Listener, proxyconfig.Gateway, error) {
	svc, err := consulview.GatewayService(ctx, g.client, id)
	if err != nil {
		return nil, proxyconfig.Gateway{}, err
	}
	opts, err := parseProxyConfig(svc)
	if err != nil {
		return nil, opts, err
	}
	own := g.listen
	if !g.listenSet {
		// An empty address is every interface, as Consul's gateway binds.
		own = net.JoinHostPort(svc.Address, strconv.Itoa(svc.Port))
	}
	lns, err := listenAll(ctx, opts.Binds(own, consulview.TaggedAddresses(svc)), nil)
	if err != nil {
		return nil, opts, fmt.Errorf("gateway %q: %w", id, err)
	}
	g.log.Info("meshgateway: serving as the registered gateway", "id", id, "service", svc.Service)
	return lns, opts, nil
}

// register listens on -listen, registers the gateway there, reads the
// options the agent resolved for it (proxy-defaults' Config) and listens
// where they say. With envoy_gateway_no_default_bind the health check is
// moved to the first listener that remains.
func (g *consulGateway) register(ctx context.Context) ([]net.Listener, proxyconfig.Gateway, error) {
	first, err := listenAll(ctx, []string{g.listen}, nil)
	if err != nil {
		return nil, proxyconfig.Gateway{}, err
	}
	own := first[0]
	g.reg.Address = own.Addr().String()
	fail := func(err error) ([]net.Listener, proxyconfig.Gateway, error) {
		own.Close()
		return nil, proxyconfig.Gateway{}, err
	}
	if g.deregister, err = consulview.RegisterGateway(ctx, g.client, g.reg); err != nil {
		return fail(err)
	}
	id := g.reg.ID
	if id == "" {
		id = g.reg.Name
	}
	g.log.Info("meshgateway: registered with Consul", "service", g.reg.Name, "id", id, "address", g.reg.Address)
	svc, err := consulview.GatewayService(ctx, g.client, id)
	if err != nil {
		return fail(err)
	}
	opts, err := parseProxyConfig(svc)
	if err != nil {
		return fail(err)
	}
	lns, err := listenAll(ctx, opts.Binds(g.reg.Address, consulview.TaggedAddresses(svc)), own)
	if err != nil {
		return nil, opts, err
	}
	if opts.NoDefaultBind {
		g.reg.CheckAddress = lns[0].Addr().String()
		if _, err := consulview.RegisterGateway(ctx, g.client, g.reg); err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return nil, opts, err
		}
	}
	return lns, opts, nil
}

// waitGatewayService reads the gateway registered under id; with wait, it
// retries while the agent does not answer, until ctx ends.
func waitGatewayService(ctx context.Context, client *api.Client, id string, wait bool, log *slog.Logger) (*api.AgentService, error) {
	delay := 100 * time.Millisecond
	for {
		svc, err := consulview.GatewayService(ctx, client, id)
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

func parseProxyConfig(svc *api.AgentService) (proxyconfig.Gateway, error) {
	var config map[string]any
	if svc.Proxy != nil {
		config = svc.Proxy.Config
	}
	opts, err := proxyconfig.ParseGateway(config)
	if err != nil {
		return opts, fmt.Errorf("gateway %q's Proxy.Config (its own over proxy-defaults'): %w", svc.ID, err)
	}
	return opts, nil
}
