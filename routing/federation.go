package federation

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/peering"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sni"
)

// KindServers is the Kind (gateway.Route.Kind) of every route of Router:
// Consul servers' WAN federation traffic.
const KindServers = "wan-federation"

// Rejection reasons of Router, besides resolve.ReasonUnknownDatacenter for
// the servers of a datacenter whose gateways the view does not know.
const (
	// ReasonNotFederating: a server name while the view has no Federation.
	ReasonNotFederating = "wan-federation-off"
	// ReasonUnknownServer: the name of a local node the view does not list
	// as a server.
	ReasonUnknownServer = "unknown-server"
	// ReasonNoServers: any server of the local datacenter, while the view
	// lists none.
	ReasonNoServers = "no-servers"
)

// Router is a gateway.Router for a mesh gateway that carries WAN federation:
// it routes Consul servers' names as the package comment describes and hands
// every other name to Next. The zero value is not usable: set Source.
//
// Targets are rotated per connection; the gateway tries the rest in order
// when one fails. Each connection reads the Source's current View once.
type Router struct {
	// Source provides the view. Required.
	Source resolve.Source
	// Next routes the names that are not servers'; nil means a
	// peering.Router over Source, which hands what is not peering's to a
	// resolve.MeshRouter: with it, Router routes every name Consul's own
	// mesh gateway routes.
	Next gateway.Router

	next atomic.Pointer[gateway.Router]
	turn gateway.Rotation
}

var _ gateway.Router = (*Router)(nil)

// Route implements gateway.Router.
func (r *Router) Route(ctx context.Context, hello *sni.ClientHello) (gateway.Route, error) {
	v := r.Source.View()
	domain := sni.DefaultDomain
	if v.Federation != nil && v.Federation.Domain != "" {
		domain = v.Federation.Domain
	}
	name, ok := sni.ServerNameOf(hello.ServerName, domain)
	if !ok {
		return r.nextRouter().Route(ctx, hello)
	}
	if v.Federation == nil {
		return gateway.Route{}, gateway.Reject(ReasonNotFederating,
			"%q is a Consul server name, but this gateway takes no part in WAN federation (its registration has no consul-wan-federation meta)", hello.ServerName)
	}
	if !strings.EqualFold(name.Datacenter, v.Datacenter) {
		return r.toDatacenter(v, name, hello.ServerName)
	}
	if name.Node == "" {
		return r.toAllServers(v, hello.ServerName)
	}
	for _, s := range v.Federation.Servers {
		if strings.EqualFold(s.Node, name.Node) {
			return gateway.Route{Name: "server " + s.Node, Targets: []string{s.Address}, Kind: KindServers}, nil
		}
	}
	return gateway.Route{}, gateway.Reject(ReasonUnknownServer,
		"%q: no Consul server named %q is known in %s", hello.ServerName, name.Node, v.Datacenter)
}

// toAllServers routes server.<local dc>.<domain> to every local server, as
// Consul's gateway does so that other datacenters can reach any of them
// without a node name.
func (r *Router) toAllServers(v *resolve.View, serverName string) (gateway.Route, error) {
	servers := v.Federation.Servers
	if len(servers) == 0 {
		return gateway.Route{}, gateway.Reject(ReasonNoServers, "%q: no Consul server is known in %s", serverName, v.Datacenter)
	}
	targets := make([]string, len(servers))
	for i, s := range servers {
		targets[i] = s.Address
	}
	return gateway.Route{Name: "servers " + v.Datacenter, Targets: r.turn.Of(targets), Kind: KindServers}, nil
}

// toDatacenter routes any server name of another datacenter to that
// datacenter's mesh gateways, by WAN address.
func (r *Router) toDatacenter(v *resolve.View, name sni.ServerName, serverName string) (gateway.Route, error) {
	dc := strings.ToLower(name.Datacenter)
	eps := v.GatewaysIn(resolve.Location{Datacenter: dc, Partition: tenancy.Default})
	targets := make([]string, 0, len(eps))
	for _, e := range eps {
		if a := e.BestAddress(true); a != "" {
			targets = append(targets, a)
		}
	}
	if len(targets) == 0 {
		return gateway.Route{}, gateway.Reject(resolve.ReasonUnknownDatacenter,
			"%q: no mesh gateways known for datacenter %q", serverName, dc)
	}
	return gateway.Route{Name: "servers " + dc, Targets: r.turn.Of(targets), Remote: true, Kind: KindServers}, nil
}

func (r *Router) nextRouter() gateway.Router {
	if r.Next != nil {
		return r.Next
	}
	if n := r.next.Load(); n != nil {
		return *n
	}
	var n gateway.Router = &peering.Router{Source: r.Source}
	r.next.CompareAndSwap(nil, &n)
	return *r.next.Load()
}
