package resolve_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func resolverWith(policy string, choice uint32) *api.ServiceResolverConfigEntry {
	lb := &api.LoadBalancer{Policy: policy}
	if choice > 0 {
		lb.LeastRequestConfig = &api.LeastRequestConfig{ChoiceCount: choice}
	}
	return &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", LoadBalancer: lb}
}

// A gateway's service clusters take the resolver's policy, except the
// hash-based ones, which Consul does not apply there.
func TestGatewayBalance(t *testing.T) {
	b, warn := resolve.GatewayBalance(nil)
	assert.Equal(t, resolve.Balance{Policy: "round_robin", From: "default"}, b)
	assert.Empty(t, warn)
	b, warn = resolve.GatewayBalance(resolverWith("least_request", 3))
	assert.Equal(t, resolve.Balance{Policy: "least_request", ChoiceCount: 3, From: `service-resolver "api"`}, b)
	assert.Empty(t, warn)
	assert.Equal(t, `least_request choice_count 3 (service-resolver "api")`, b.String())
	b, _ = resolve.GatewayBalance(resolverWith("random", 0))
	assert.Equal(t, "random", b.Policy)
	for _, p := range []string{"ring_hash", "maglev"} {
		b, warn = resolve.GatewayBalance(resolverWith(p, 0))
		assert.Equal(t, "round_robin (default)", b.String())
		assert.Contains(t, warn, `LoadBalancer.Policy "`+p+`" is hash-based, which Consul does not apply on a mesh gateway's clusters`)
	}
}

// A chain's clusters (a sidecar's, an export's) apply a hash-based policy,
// which picks at random for TCP.
func TestChainBalance(t *testing.T) {
	b, warn := resolve.ChainBalance(resolverWith("maglev", 0))
	assert.Equal(t, "random", b.Policy)
	assert.Contains(t, warn, "picked at random")
	b, _ = resolve.ChainBalance(resolverWith("least_request", 0))
	assert.Equal(t, "least_request (service-resolver \"api\")", b.String())
	b, _ = resolve.ChainBalance(&api.ServiceResolverConfigEntry{Name: "api"})
	assert.Equal(t, "round_robin (default)", b.String())
}

// The limits are the gateway's own service-defaults' UpstreamConfig
// Defaults Limits, in the view's partition.
func TestGatewayLimits(t *testing.T) {
	five := 5
	sd := &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "mesh-gateway",
		UpstreamConfig: &api.UpstreamConfiguration{Defaults: &api.UpstreamConfig{Limits: &api.UpstreamLimits{MaxConnections: &five}}}}
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{{Name: "mesh-gateway"}: sd}})
	require.NoError(t, err)
	l := resolve.GatewayLimits(src.View(), "mesh-gateway")
	require.NotNil(t, l)
	assert.Equal(t, 5, *l.MaxConnections)
	assert.Nil(t, l.MaxPendingRequests)
	assert.Nil(t, resolve.GatewayLimits(src.View(), "other-gateway"), "another gateway's name")
}

// Unapplied names each field that is set and not applied, and nothing
// when nothing is.
func TestUnapplied(t *testing.T) {
	five := 5
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
		Resolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{
			{Name: "api"}: {Kind: api.ServiceResolver, Name: "api", LoadBalancer: &api.LoadBalancer{Policy: "ring_hash",
				RingHashConfig: &api.RingHashConfig{MinimumRingSize: 1024}, HashPolicies: []api.HashPolicy{{SourceIP: true}}},
				Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc2"}, Policy: &api.ServiceResolverFailoverPolicy{Mode: "order-by-locality"}}}},
			{Name: "web"}: {Kind: api.ServiceResolver, Name: "web", LoadBalancer: &api.LoadBalancer{Policy: "least_request"}},
		},
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{{Name: "mesh-gateway"}: {Kind: api.ServiceDefaults, Name: "mesh-gateway",
			UpstreamConfig: &api.UpstreamConfiguration{
				Overrides: []*api.UpstreamConfig{{Name: "api"}},
				Defaults:  &api.UpstreamConfig{Limits: &api.UpstreamLimits{MaxConnections: &five}, ConnectTimeoutMs: 100, PassiveHealthCheck: &api.PassiveHealthCheck{MaxFailures: 3}}}}},
	})
	require.NoError(t, err)
	assert.Equal(t, []string{
		`service-defaults "mesh-gateway" (this gateway's): UpstreamConfig.Defaults.ConnectTimeoutMs: a mesh gateway reads only UpstreamConfig.Defaults.Limits, as Consul's`,
		`service-defaults "mesh-gateway" (this gateway's): UpstreamConfig.Defaults.PassiveHealthCheck: a mesh gateway reads only UpstreamConfig.Defaults.Limits, as Consul's`,
		`service-defaults "mesh-gateway" (this gateway's): UpstreamConfig.Overrides: a mesh gateway reads only UpstreamConfig.Defaults.Limits, as Consul's`,
		`service-resolver "api": Failover["*"].Policy.Mode "order-by-locality": failover targets are tried in the order written`,
		`service-resolver "api": LoadBalancer.HashPolicies: the service is tcp, so nothing is hashed`,
		`service-resolver "api": LoadBalancer.Policy "ring_hash": round_robin on a mesh gateway's service clusters (as Consul's gateway), random for its exports and for sidecars (no hash key on a TCP connection, as Envoy)`,
		`service-resolver "api": LoadBalancer.RingHashConfig: no hash ring (nothing to hash on a TCP connection)`,
	}, resolve.Unapplied(src.View(), resolve.UnappliedOptions{GatewayService: "mesh-gateway"}))
	assert.Len(t, resolve.Unapplied(src.View(), resolve.UnappliedOptions{GatewayService: "other-gateway"}), 4, "another gateway's service-defaults are not this one's")
	clean, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: "td.consul"})
	require.NoError(t, err)
	assert.Empty(t, resolve.Unapplied(clean.View(), resolve.UnappliedOptions{GatewayService: "mesh-gateway"}))
}

// A hash-based policy on an http, http2 or grpc service is applied to the
// L7 exports a gateway terminates (routing/l7 hashes each request): with
// TerminatesL7Exports the warning says so and names neither its
// RingHashConfig nor its HashPolicies, which apply; without it, or on a
// tcp service, it names them as not applied.
func TestUnappliedOnTerminatedL7Exports(t *testing.T) {
	hashed := func(name, policy string) *api.ServiceResolverConfigEntry {
		return &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: name, LoadBalancer: &api.LoadBalancer{Policy: policy,
			RingHashConfig: &api.RingHashConfig{MinimumRingSize: 2048}, HashPolicies: []api.HashPolicy{{Field: "header", FieldValue: "x-user"}}}}
	}
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
		Resolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{
			{Name: "web"}: hashed("web", "ring_hash"),
			{Name: "rpc"}: hashed("rpc", "maglev"),
			{Name: "db"}:  hashed("db", "ring_hash"),
		},
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{
			{Name: "web"}: {Kind: api.ServiceDefaults, Name: "web", Protocol: "http"},
			{Name: "rpc"}: {Kind: api.ServiceDefaults, Name: "rpc", Protocol: "grpc"},
		},
	})
	require.NoError(t, err)
	const (
		hashedPerRequest = `round_robin on a mesh gateway's service clusters (as Consul's gateway) and random for sidecars (no hash key on a TCP connection, as Envoy); applied, hashing each request, to the L7 exports this gateway terminates`
		notHashed        = `round_robin on a mesh gateway's service clusters (as Consul's gateway), random for its exports and for sidecars (no hash key on a TCP connection, as Envoy)`
		noRing           = `LoadBalancer.RingHashConfig: no hash ring (nothing to hash on a TCP connection)`
	)
	assert.Equal(t, []string{
		`service-resolver "db": LoadBalancer.HashPolicies: the service is tcp, so nothing is hashed`,
		`service-resolver "db": LoadBalancer.Policy "ring_hash": ` + notHashed,
		`service-resolver "db": ` + noRing,
		`service-resolver "rpc": LoadBalancer.Policy "maglev": ` + hashedPerRequest,
		`service-resolver "rpc": ` + noRing, // maglev has no ring
		`service-resolver "web": LoadBalancer.Policy "ring_hash": ` + hashedPerRequest,
	}, resolve.Unapplied(src.View(), resolve.UnappliedOptions{TerminatesL7Exports: true}), "terminated")
	assert.Equal(t, []string{
		`service-resolver "db": LoadBalancer.HashPolicies: the service is tcp, so nothing is hashed`,
		`service-resolver "db": LoadBalancer.Policy "ring_hash": ` + notHashed,
		`service-resolver "db": ` + noRing,
		`service-resolver "rpc": LoadBalancer.HashPolicies: nothing is hashed: this gateway carries the service as TCP (it does not terminate L7 exports)`,
		`service-resolver "rpc": LoadBalancer.Policy "maglev": ` + notHashed,
		`service-resolver "rpc": ` + noRing,
		`service-resolver "web": LoadBalancer.HashPolicies: nothing is hashed: this gateway carries the service as TCP (it does not terminate L7 exports)`,
		`service-resolver "web": LoadBalancer.Policy "ring_hash": ` + notHashed,
		`service-resolver "web": ` + noRing,
	}, resolve.Unapplied(src.View(), resolve.UnappliedOptions{}), "passed through or refused")
}
