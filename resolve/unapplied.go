package resolve

import (
	"fmt"
	"sort"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
)

// UnappliedOptions describe the gateway Unapplied speaks of. The zero
// value is a gateway with an empty service name that does not terminate
// L7 exports.
type UnappliedOptions struct {
	// GatewayService is the gateway's own service name (its
	// registration's), whose service-defaults give its limits.
	GatewayService string
	// TerminatesL7Exports says the gateway terminates its exports whose
	// protocol is http, http2 or grpc (routing/l7), which apply a
	// resolver's LoadBalancer to each request as Envoy does: ring_hash
	// (with RingHashConfig) and maglev hashing by HashPolicies. False: it
	// refuses those exports or passes them through as TCP.
	TerminatesL7Exports bool
}

// Unapplied lists the fields of v's config entries that are set and that
// a meshgate gateway as opts describes does not apply, each as
// "<entry>: <field>: <why>", sorted: what a gateway should name in a
// warning rather than ignore silently. Fields that Consul's own gateway
// ignores too are listed when a user would expect them to act on a
// gateway (the gateway's service-defaults beyond
// UpstreamConfig.Defaults.Limits, hash-based load balancing), saying so;
// where a hash-based policy is applied (the L7 exports a gateway
// terminates), the entry says so rather than that it is ignored. The L7
// fields a terminator cannot apply are routing/l7's to name.
func Unapplied(v *mesh.View, opts UnappliedOptions) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for k, r := range v.Resolvers {
		name := fmt.Sprintf("service-resolver %s", k)
		if lb := r.LoadBalancer; lb != nil {
			protocol := v.Protocol(k.Name, k.Namespace, k.Partition)
			terminated := opts.TerminatesL7Exports && (protocol == "http" || protocol == "http2" || protocol == "grpc")
			switch lb.Policy {
			case PolicyRingHash, PolicyMaglev:
				if terminated {
					add("%s: LoadBalancer.Policy %q: round_robin on a mesh gateway's service clusters (as Consul's gateway) and random for sidecars (no hash key on a TCP connection, as Envoy); applied, hashing each request, to the L7 exports this gateway terminates", name, lb.Policy)
				} else {
					add("%s: LoadBalancer.Policy %q: round_robin on a mesh gateway's service clusters (as Consul's gateway), random for its exports and for sidecars (no hash key on a TCP connection, as Envoy)", name, lb.Policy)
				}
			}
			if lb.RingHashConfig != nil && !(terminated && lb.Policy == PolicyRingHash) {
				add("%s: LoadBalancer.RingHashConfig: no hash ring (nothing to hash on a TCP connection)", name)
			}
			switch {
			case len(lb.HashPolicies) == 0:
			case protocol == "tcp":
				add("%s: LoadBalancer.HashPolicies: the service is tcp, so nothing is hashed", name)
			case !terminated:
				add("%s: LoadBalancer.HashPolicies: nothing is hashed: this gateway carries the service as TCP (it does not terminate L7 exports)", name)
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
	if sd := v.ServiceDefaultsFor(opts.GatewayService, "", v.Local().Partition); sd != nil {
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
