package routing

import (
	"cmp"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
)

// DefaultGatewayService is the gateway's own service name when a Router's
// GatewayService is empty: the name consul connect envoy -gateway mesh
// -register gives a mesh gateway, and meshgateway -service-name's default.
const DefaultGatewayService = "mesh-gateway"

// PanicThreshold is Envoy's default healthy panic threshold, in percent,
// which Consul leaves on a mesh gateway's clusters (makeGatewayCluster sets
// no CommonLbConfig): when fewer than this share of a cluster's endpoints
// are healthy, Envoy balances over all of them, healthy or not, rather than
// load the few healthy ones with everything. Exported services' clusters
// set it to 0 (makeUpstreamClustersForDiscoveryChain): they never panic.
const PanicThreshold = 50

// roundRobin is the policy of the clusters Consul sets none on: Envoy's
// default.
var roundRobin = gateway.Balance{Policy: gateway.BalanceRoundRobin}

func balanceOf(b resolve.Balance) gateway.Balance {
	return gateway.Balance{Policy: cmp.Or(b.Policy, gateway.BalanceRoundRobin), ChoiceCount: b.ChoiceCount}
}

// gatewayLimits returns the limits of the gateway named service (empty:
// DefaultGatewayService) from its own service-defaults, as Consul applies
// them to the gateway's clusters (resolve.GatewayLimits).
func gatewayLimits(v *mesh.View, service string) gateway.Limits {
	l := resolve.GatewayLimits(v, cmp.Or(service, DefaultGatewayService))
	if l == nil {
		return gateway.Limits{}
	}
	return gateway.Limits{MaxConnections: l.MaxConnections, MaxPendingRequests: l.MaxPendingRequests,
		MaxConcurrentRequests: l.MaxConcurrentRequests}
}

// panicking reports whether a cluster with healthy and unhealthy endpoints
// is in panic under PanicThreshold, as Envoy decides it
// (LoadBalancerBase::isHostSetInPanic): fewer than half healthy, none
// healthy included, with at least one endpoint.
func panicking(healthy, unhealthy int) bool {
	total := healthy + unhealthy
	return total > 0 && healthy*100 < PanicThreshold*total
}

// SetGatewayService names the gateway's own service (its registration's
// name) for every Router of r, before the first Route: its service-defaults'
// UpstreamConfig.Defaults.Limits bound the routes, as Consul's gateway reads
// them. Empty means DefaultGatewayService.
func (r *Router) SetGatewayService(name string) {
	r.Federation.GatewayService, r.Peering.GatewayService, r.Mesh.GatewayService = name, name, name
}
