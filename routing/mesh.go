package routing

import (
	"context"
	"errors"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sni"
)

// MeshRouter is a gateway.Router with the semantics of a Consul mesh gateway
// (Envoy, as Consul 1.22 configures it): the SNI of a service in the local
// datacenter and partition routes to that service's healthy mesh endpoints; the SNI of a
// service or gateway of another datacenter (or partition) routes to that
// location's mesh gateways, by WAN address across datacenters. Everything
// else is rejected and never dialled, so the gateway is no open relay: no SNI,
// another trust domain, a malformed name, a service or datacenter the view
// does not know, and the kinds this router does not serve (prepared queries,
// peered services and peering servers, which PeeringRouter routes).
//
// Service-resolvers count as in Consul: a subset's SNI routes to the
// subset's endpoints, the plain SNI of a service whose resolver has a
// DefaultSubset to that subset's only, and dials take the resolver's
// ConnectTimeout.
//
// Routes carry what Consul configures on the gateway's clusters: a local
// service's or subset's resolver LoadBalancer (round_robin, least_request,
// random; the hash-based ones are not applied, as in Consul) and its
// instances' weights; Envoy's 50 % panic threshold (PanicThreshold): with
// fewer than half of a service's instances healthy, its critical ones are
// routed too; and the limits of the gateway's own service-defaults
// (GatewayService). Other datacenters' gateways are balanced round robin.
// Each connection reads the Source's current View once.
type MeshRouter struct {
	Source mesh.Source
	// GatewayService is the gateway's own service name, whose
	// service-defaults' UpstreamConfig.Defaults.Limits bound its routes;
	// empty means DefaultGatewayService.
	GatewayService string
}

var _ gateway.Router = (*MeshRouter)(nil)

// Route implements gateway.Router.
func (r *MeshRouter) Route(_ context.Context, hello *sni.ClientHello) (gateway.Route, error) {
	v := r.Source.View()
	if hello.ServerName == "" {
		return gateway.Route{}, gateway.Reject(ReasonNoServerName, "no server name in the ClientHello")
	}
	name, err := sni.ParseName(hello.ServerName, v.TrustDomain)
	switch {
	case errors.Is(err, sni.ErrForeignTrustDomain):
		return gateway.Route{}, gateway.Reject(ReasonForeignTrustDomain, "%w", err)
	case err != nil:
		return gateway.Route{}, gateway.Reject(ReasonMalformedName, "%w", err)
	}
	local := v.Local()
	switch name.Kind {
	case sni.KindService:
		dest := mesh.Location{Datacenter: name.Datacenter, Partition: name.Partition}
		if dest != local {
			return r.toGateways(v, dest, hello.ServerName)
		}
		return r.toService(v, name)
	case sni.KindGateway:
		dest := mesh.Location{Datacenter: name.Datacenter, Partition: name.Partition}
		if dest == local {
			return gateway.Route{}, gateway.Reject(ReasonUnsupportedName, "%q addresses this gateway's own datacenter", hello.ServerName)
		}
		return r.toGateways(v, dest, hello.ServerName)
	}
	return gateway.Route{}, gateway.Reject(ReasonUnsupportedName, "%s name %q is not routed by MeshRouter", name.Kind, hello.ServerName)
}

// toService routes to a local service's endpoints as Consul's gateway does
// (endpointsFromServicesAndResolvers in Consul's agent/xds): a subset name to
// the subset's endpoints, the plain name to the resolver's DefaultSubset when
// it has one, else to every healthy endpoint; dials within the resolver's
// ConnectTimeout.
func (r *MeshRouter) toService(v *mesh.View, name sni.Name) (gateway.Route, error) {
	res := v.ResolverFor(name.Service, name.Namespace, name.Partition)
	subset := name.Subset
	if subset == "" && res != nil {
		subset = res.DefaultSubset
	}
	routeName := "service " + name.Service
	var eps []mesh.Endpoint
	if subset == "" {
		eps = v.Endpoints(name.Service, name.Namespace, name.Partition, name.Datacenter)
	} else {
		if !v.DefinesSubset(name.Service, subset, name.Namespace, name.Partition) {
			return gateway.Route{}, gateway.Reject(ReasonUnknownSubset, "service %q has no subset %q: no service-resolver defines it", name.Service, subset)
		}
		routeName += " subset " + subset
		eps = v.SubsetEndpoints(name.Service, subset, name.Namespace, name.Partition, name.Datacenter)
	}
	if bad := v.UnhealthyEndpoints(name.Service, subset, name.Namespace, name.Partition, name.Datacenter); panicking(len(eps), len(bad)) {
		eps = append(append(make([]mesh.Endpoint, 0, len(eps)+len(bad)), eps...), bad...)
	}
	if len(eps) == 0 {
		return gateway.Route{}, gateway.Reject(ReasonUnknownService, "no healthy mesh endpoints for %s (namespace %q) in %s", routeName, name.Namespace, v.Local())
	}
	b, _ := resolve.GatewayBalance(res)
	route := gateway.Route{Name: routeName, Kind: RouteService, Balance: balanceOf(b), Limits: gatewayLimits(v, r.GatewayService)}
	route.Targets, route.Weights = mesh.Weighted(eps, false)
	if res != nil {
		route.ConnectTimeout = res.ConnectTimeout
	}
	return route, nil
}

func (r *MeshRouter) toGateways(v *mesh.View, dest mesh.Location, serverName string) (gateway.Route, error) {
	eps := v.GatewaysIn(dest)
	if len(eps) == 0 {
		return gateway.Route{}, gateway.Reject(ReasonUnknownDatacenter, "no mesh gateways known for %s (server name %q)", dest, serverName)
	}
	route := gateway.Route{Name: "gateway " + dest.String(), Remote: true, Kind: RouteGateway, Balance: roundRobin, Limits: gatewayLimits(v, r.GatewayService)}
	route.Targets, route.Weights = mesh.Weighted(eps, dest.Datacenter != v.Datacenter)
	return route, nil
}
