package resolve

import (
	"fmt"
	"sort"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
)

// Unapplied lists the fields of v's config entries that are set and that
// a meshgate gateway named gatewayService (its registration's service
// name) does not apply, each as "<entry>: <field>: <why>", sorted: what a
// gateway should name in a warning rather than ignore silently. Fields
// that Consul's own gateway ignores too are listed when a user would
// expect them to act on a gateway (the gateway's service-defaults beyond
// UpstreamConfig.Defaults.Limits, hash-based load balancing), saying so.
// The L7 fields of terminated exports are routing/l7's to name.
func Unapplied(v *mesh.View, gatewayService string) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for k, r := range v.Resolvers {
		name := fmt.Sprintf("service-resolver %s", k)
		if lb := r.LoadBalancer; lb != nil {
			switch lb.Policy {
			case PolicyRingHash, PolicyMaglev:
				add("%s: LoadBalancer.Policy %q: round_robin on a mesh gateway's service clusters (as Consul's gateway), random for its exports and for sidecars (no hash key on a TCP connection, as Envoy)", name, lb.Policy)
			}
			if lb.RingHashConfig != nil {
				add("%s: LoadBalancer.RingHashConfig: no hash ring (nothing to hash on a TCP connection)", name)
			}
			if len(lb.HashPolicies) > 0 && v.Protocol(k.Name, k.Namespace, k.Partition) == "tcp" {
				add("%s: LoadBalancer.HashPolicies: the service is tcp, so nothing is hashed", name)
			}
		}
		for key, f := range r.Failover {
			if f.Policy != nil && f.Policy.Mode != "" && f.Policy.Mode != "sequential" {
				add("%s: Failover[%q].Policy.Mode %q: failover targets are tried in the order written", name, key, f.Policy.Mode)
			}
		}
		if r.PrioritizeByLocality != nil {
			add("%s: PrioritizeByLocality: endpoints are not ordered by locality", name)
		}
	}
	if sd := v.ServiceDefaultsFor(gatewayService, "", v.Local().Partition); sd != nil {
		name := fmt.Sprintf("service-defaults %s (this gateway's)", mesh.KeyOf(sd.Name, sd.Namespace, sd.Partition))
		if uc := sd.UpstreamConfig; uc != nil {
			if len(uc.Overrides) > 0 {
				add("%s: UpstreamConfig.Overrides: a mesh gateway reads only UpstreamConfig.Defaults.Limits, as Consul's", name)
			}
			if d := uc.Defaults; d != nil {
				for _, f := range setUpstreamFields(d) {
					add("%s: UpstreamConfig.Defaults.%s: a mesh gateway reads only UpstreamConfig.Defaults.Limits, as Consul's", name, f)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// setUpstreamFields names the fields of an UpstreamConfig other than
// Limits (and Name, Namespace, Partition, Peer) that are set.
func setUpstreamFields(u *api.UpstreamConfig) []string {
	var out []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"Protocol", u.Protocol != ""},
		{"ConnectTimeoutMs", u.ConnectTimeoutMs != 0},
		{"PassiveHealthCheck", u.PassiveHealthCheck != nil},
		{"MeshGateway", u.MeshGateway.Mode != ""},
		{"BalanceOutboundConnections", u.BalanceOutboundConnections != ""},
		{"EnvoyListenerJSON", u.EnvoyListenerJSON != ""},
		{"EnvoyClusterJSON", u.EnvoyClusterJSON != ""},
	} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}
