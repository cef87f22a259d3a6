package routing

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sni"
)

// FederationRouter is a gateway.Router for a mesh gateway that carries WAN
// federation through mesh gateways: Consul's servers of different
// datacenters reaching each other only through the datacenters' mesh
// gateways (servers with connect { enable_mesh_gateway_wan_federation =
// true }, secondaries bootstrapping through primary_gateways), for RPC, WAN
// gossip and replication alike. It does what Consul's own gateway does when
// it is registered with the consul-wan-federation meta ("consul connect
// envoy -gateway=mesh -register -expose-servers"); Consul 1.22's
// agent/xds/listeners.go makeMeshGatewayListener, clusters.go
// clustersFromSnapshotMeshGateway and endpoints.go
// endpointsFromSnapshotMeshGateway build the same routes for Envoy:
//
//   - <node>.server.<local dc>.<domain>: that local server's RPC address
//     (its service address, else its node's, at the "consul" service's
//     port), one filter chain per server in Consul;
//   - server.<local dc>.<domain>: every local server (Consul's catch-all
//     cluster "so that remote datacenters can dial ANY server", reached
//     through its sni_cluster filter);
//   - <anything>.server.<dc>.<domain> of another datacenter (Consul's
//     "*.server.<dc>.<domain>" filter chain), and server.<dc>.<domain>
//     itself: that datacenter's mesh gateways, by WAN address; they are
//     known from the federation states before the WAN gossip pool forms.
//
// Consul's servers always dial with a node name (tlsutil's
// wrapALPNTLSClient refuses to dial without one), from their own
// datacenter's gateways, except a secondary bootstrapping through
// primary_gateways, which dials the primary's gateways directly.
//
// The servers encrypt end to end with their own TLS and ALPN, and the
// gateway reads only the name. A server name is refused, with a reason and
// without any dial, while the view says the gateway takes no part in
// federation (View.Federation is nil), and for a node the view does not
// list or a datacenter whose gateways it does not know: a gateway is no
// open relay for servers either.
//
// The servers encrypt end to end with their own TLS and ALPN, and the
// gateway reads only the name. A server name is refused, with a reason and
// without any dial, while the view says the gateway takes no part in
// federation (View.Federation is nil; ReasonNotFederating), and for a node
// the view does not list (ReasonUnknownServer) or a datacenter whose
// gateways it does not know (ReasonUnknownDatacenter): a gateway is no open
// relay for servers either. Every other name goes to Next. The zero value
// is not usable: set Source.
//
// Routes are balanced round robin and bound by the limits of the gateway's
// own service-defaults (GatewayService), as Consul configures its
// gateway's server clusters. Each connection reads the Source's current
// View once.
type FederationRouter struct {
	// Source provides the view. Required.
	Source mesh.Source
	// Next routes the names that are not servers'; nil means a
	// PeeringRouter over Source, which hands what is not peering's to a
	// MeshRouter: with it, a FederationRouter routes every name Consul's
	// own mesh gateway routes, as New's Router does.
	Next gateway.Router
	// GatewayService is the gateway's own service name, whose
	// service-defaults' UpstreamConfig.Defaults.Limits bound its routes
	// (and those of the Next it makes); empty means DefaultGatewayService.
	GatewayService string

	next atomic.Pointer[gateway.Router]
}

var _ gateway.Router = (*FederationRouter)(nil)

// Route implements gateway.Router.
func (r *FederationRouter) Route(ctx context.Context, hello *sni.ClientHello) (gateway.Route, error) {
	v := r.Source.View()
	domain := sni.DefaultDomain
	if v.Federation != nil && v.Federation.Domain != "" {
		domain = v.Federation.Domain
	}
	name, ok := sni.ServerSNIOf(hello.ServerName, domain)
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
			return gateway.Route{Name: "server " + s.Node, Targets: []string{s.Address}, Kind: RouteWANFederation,
				Balance: roundRobin, Limits: gatewayLimits(v, r.GatewayService)}, nil
		}
	}
	return gateway.Route{}, gateway.Reject(ReasonUnknownServer,
		"%q: no Consul server named %q is known in %s", hello.ServerName, name.Node, v.Datacenter)
}

// toAllServers routes server.<local dc>.<domain> to every local server, as
// Consul's gateway does so that other datacenters can reach any of them
// without a node name.
func (r *FederationRouter) toAllServers(v *mesh.View, serverName string) (gateway.Route, error) {
	servers := v.Federation.Servers
	if len(servers) == 0 {
		return gateway.Route{}, gateway.Reject(ReasonNoServers, "%q: no Consul server is known in %s", serverName, v.Datacenter)
	}
	targets := make([]string, len(servers))
	for i, s := range servers {
		targets[i] = s.Address
	}
	return gateway.Route{Name: "servers " + v.Datacenter, Targets: targets, Kind: RouteWANFederation,
		Balance: roundRobin, Limits: gatewayLimits(v, r.GatewayService)}, nil
}

// toDatacenter routes any server name of another datacenter to that
// datacenter's mesh gateways, by WAN address.
func (r *FederationRouter) toDatacenter(v *mesh.View, name sni.ConsulServer, serverName string) (gateway.Route, error) {
	dc := strings.ToLower(name.Datacenter)
	eps := v.GatewaysIn(mesh.Location{Datacenter: dc, Partition: tenancy.Default})
	route := gateway.Route{Name: "servers " + dc, Remote: true, Kind: RouteWANFederation, Balance: roundRobin, Limits: gatewayLimits(v, r.GatewayService)}
	route.Targets, route.Weights = mesh.Weighted(eps, true)
	if len(route.Targets) == 0 {
		return gateway.Route{}, gateway.Reject(ReasonUnknownDatacenter,
			"%q: no mesh gateways known for datacenter %q", serverName, dc)
	}
	return route, nil
}

func (r *FederationRouter) nextRouter() gateway.Router {
	if r.Next != nil {
		return r.Next
	}
	if n := r.next.Load(); n != nil {
		return *n
	}
	var n gateway.Router = &PeeringRouter{Source: r.Source, GatewayService: r.GatewayService}
	r.next.CompareAndSwap(nil, &n)
	return *r.next.Load()
}
