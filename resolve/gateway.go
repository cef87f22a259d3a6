package resolve

import (
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
)

// Load-balancing policy names, as a service-resolver's LoadBalancer.Policy
// spells them.
const (
	PolicyRoundRobin   = "round_robin"
	PolicyLeastRequest = "least_request"
	PolicyRandom       = "random"
	PolicyRingHash     = "ring_hash"
	PolicyMaglev       = "maglev"
)

// Balance is the load-balancing policy in force for one of a gateway's or
// a sidecar's clusters, and what decided it.
type Balance struct {
	// Policy is PolicyRoundRobin, PolicyLeastRequest or PolicyRandom: the
	// policies a TCP connection can be balanced by. Empty means round
	// robin.
	Policy string `json:"policy"`
	// ChoiceCount is least_request's LeastRequestConfig.ChoiceCount; zero
	// means Envoy's default, 2.
	ChoiceCount int `json:"choice_count,omitempty"`
	// From says what decided: `service-resolver "api"`, or "default" (no
	// resolver sets a policy: Envoy's round robin, which Consul leaves).
	From string `json:"from"`
}

// String returns "round_robin (default)", "least_request choice_count 3
// (service-resolver "api")".
func (b Balance) String() string {
	p := b.Policy
	if p == "" {
		p = PolicyRoundRobin
	}
	if p == PolicyLeastRequest && b.ChoiceCount > 0 {
		p += fmt.Sprintf(" choice_count %d", b.ChoiceCount)
	}
	return p + " (" + b.From + ")"
}

var defaultBalance = Balance{Policy: PolicyRoundRobin, From: "default"}

// GatewayBalance is the policy of a mesh gateway's cluster for a local
// service or subset, as Consul sets it (makeGatewayServiceClusters,
// injectGatewayServiceAddons, injectLBToCluster): the service's resolver's
// LoadBalancer, except the hash-based ones (ring_hash, maglev), which
// Consul does not apply on a mesh gateway since it cannot see the HTTP
// attributes they hash (Envoy's round robin then). It also returns a
// warning for a policy set but not applied. The gateway's other clusters
// (other datacenters' gateways, servers, imported services) have no
// policy: round robin.
func GatewayBalance(r *api.ServiceResolverConfigEntry) (Balance, string) {
	if r == nil || r.LoadBalancer == nil || r.LoadBalancer.Policy == "" {
		return defaultBalance, ""
	}
	switch p := r.LoadBalancer.Policy; p {
	case PolicyRingHash, PolicyMaglev:
		return defaultBalance, fmt.Sprintf("service-resolver %q: LoadBalancer.Policy %q is hash-based, which Consul does not apply on a mesh gateway's clusters: round_robin, as Envoy's default", r.Name, p)
	}
	return balanceOf(r)
}

// ChainBalance is the policy of a discovery chain's clusters for the chain
// whose primary target's service-resolver is r (nil when it has none):
// the clusters of a sidecar's upstream, failover targets included, and an
// exporting gateway's clusters for a peer's connections
// (makeUpstreamClustersForDiscoveryChain takes the resolver node's
// LoadBalancer for every target cluster). A hash-based policy (ring_hash,
// maglev) is applied there, but a TCP connection carries nothing to hash:
// Envoy then picks a random host, so it is PolicyRandom, with a note
// saying so.
func ChainBalance(r *api.ServiceResolverConfigEntry) (Balance, string) {
	if r == nil || r.LoadBalancer == nil || r.LoadBalancer.Policy == "" {
		return defaultBalance, ""
	}
	switch p := r.LoadBalancer.Policy; p {
	case PolicyRingHash, PolicyMaglev:
		return Balance{Policy: PolicyRandom, From: fmt.Sprintf("service-resolver %q, %s without a hash key", r.Name, p)},
			fmt.Sprintf("service-resolver %q: LoadBalancer.Policy %q hashes HTTP attributes; a TCP connection has none, so a host is picked at random, as Envoy does", r.Name, p)
	}
	return balanceOf(r)
}

// balanceOf is r's policy among those a TCP connection can use.
func balanceOf(r *api.ServiceResolverConfigEntry) (Balance, string) {
	lb := r.LoadBalancer
	from := fmt.Sprintf("service-resolver %q", r.Name)
	switch lb.Policy {
	case PolicyRoundRobin, PolicyRandom:
		return Balance{Policy: lb.Policy, From: from}, ""
	case PolicyLeastRequest:
		b := Balance{Policy: lb.Policy, From: from}
		if c := lb.LeastRequestConfig; c != nil {
			b.ChoiceCount = int(c.ChoiceCount)
		}
		return b, ""
	}
	// Consul refuses other names when the entry is written.
	return defaultBalance, fmt.Sprintf("service-resolver %q: unknown LoadBalancer.Policy %q: round_robin", r.Name, lb.Policy)
}

// GatewayLimits returns the limits Consul's gateway applies to its
// clusters: UpstreamConfig.Defaults.Limits of the service-defaults entry
// named after the gateway's own service (its registration's name, such as
// "mesh-gateway"), in the default namespace of the view's partition, as
// agent/proxycfg/mesh_gateway.go reads it (serviceDefaultsWatchID); nil
// when there is none. Consul puts them (makeThresholdsIfNeeded) on the
// clusters of other datacenters' and partitions' gateways, of WAN
// federation's servers, of the local servers for peers, of local services
// and subsets, and of imported peered services; not on a peer's servers
// (the dialling side of a peering) nor on exported services.
func GatewayLimits(v *mesh.View, gatewayService string) *api.UpstreamLimits {
	sd := v.ServiceDefaultsFor(gatewayService, "", v.Local().Partition)
	if sd == nil || sd.UpstreamConfig == nil || sd.UpstreamConfig.Defaults == nil {
		return nil
	}
	return sd.UpstreamConfig.Defaults.Limits
}
