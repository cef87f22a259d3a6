package consulview_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The discovery chains meshgate plans from a live view are the ones the
// agent compiles (/v1/discovery-chain/<service>): the same targets in the
// same failover order, each with the same mesh-gateway mode and SNI, for
// redirects, default subsets, failover by subset and by "*", to other
// datacenters, services and peers, with and without a mode set downstream.
func TestChainsAreTheAgentsCompiledChains(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := agent.Client
	for _, e := range []api.ConfigEntry{
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}},
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api-backup", MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
			Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}},
			Failover: map[string]api.ServiceResolverFailover{
				"*":  {Datacenters: []string{"dc2", "dc3"}},
				"v1": {Targets: []api.ServiceResolverFailoverTarget{{Datacenter: "dc2"}, {Service: "api-backup"}, {Peer: "other"}}},
			}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api-backup", DefaultSubset: "b",
			Subsets:  map[string]api.ServiceResolverSubset{"b": {Filter: "Service.Meta.x == y"}},
			Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc9"}}}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api-v1", Redirect: &api.ServiceResolverRedirect{Service: "api", ServiceSubset: "v1"}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "db", Failover: map[string]api.ServiceResolverFailover{"*": {Service: "api-backup"}}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "cache", Redirect: &api.ServiceResolverRedirect{Service: "api", Datacenter: "dc2"}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "queue", Failover: map[string]api.ServiceResolverFailover{"*": {Targets: []api.ServiceResolverFailoverTarget{{Datacenter: "dc1"}, {Datacenter: "dc4"}}}}},
	} {
		_, _, err := c.ConfigEntries().Set(e, nil)
		require.NoError(t, err, e.GetName())
	}
	src := newConsul(t, c, consulview.Options{})
	consultest.WaitFor(t, eventually, "the view to hold the resolvers", func() bool { return len(src.View().Resolvers) == 6 })
	inst := mesh.Instance{Service: "web", Name: "web-sidecar-proxy", Proxy: &api.AgentServiceConnectProxyConfig{}}

	checked := 0
	for _, service := range []string{"api", "api-v1", "api-backup", "db", "cache", "queue", "plain"} {
		for _, mode := range []api.MeshGatewayMode{"", api.MeshGatewayModeLocal, api.MeshGatewayModeRemote, api.MeshGatewayModeNone} {
			resp, _, err := c.DiscoveryChain().Get(service, &api.DiscoveryChainOptions{OverrideMeshGateway: api.MeshGatewayConfig{Mode: mode}}, nil)
			require.NoError(t, err)
			want := agentChain(t, resp.Chain)
			plan := resolve.PlanUpstream(src.View(), inst, api.Upstream{DestinationName: service, MeshGateway: api.MeshGatewayConfig{Mode: mode}})
			var got []string
			for _, target := range plan.Chain() {
				got = append(got, describeTarget(target.Service, target.Subset, target.Datacenter, target.Peer, target.Mode, target.SNI))
			}
			assert.Equal(t, want, got, "%s with mode %q downstream", service, mode)
			checked++
		}
	}
	t.Logf("%d chains compared with the agent's", checked)
}

// agentChain lists a compiled chain's targets as describeTarget does: the
// start resolver's target, then its failover targets in order.
func agentChain(t *testing.T, chain *api.CompiledDiscoveryChain) []string {
	t.Helper()
	node := chain.Nodes[chain.StartNode]
	require.NotNil(t, node, "start node %s", chain.StartNode)
	require.Equal(t, "resolver", node.Type, "a tcp chain starts at its resolver")
	ids := []string{node.Resolver.Target}
	if f := node.Resolver.Failover; f != nil {
		ids = append(ids, f.Targets...)
	}
	var out []string
	for _, id := range ids {
		tg := chain.Targets[id]
		require.NotNil(t, tg, "target %s", id)
		peer := ""
		if i := strings.Index(id, ".external."); i >= 0 { // the typed client has no Peer field
			peer = id[i+len(".external."):]
		}
		subset := tg.ServiceSubset
		if peer != "" {
			subset = "" // kept by the compiler, but a peer's target has no subset
		}
		out = append(out, describeTarget(tg.Service, subset, tg.Datacenter, peer, tg.MeshGateway.Mode, tg.SNI))
	}
	return out
}

// describeTarget is what two chains must agree on for each target; a
// peer's SNI comes from the peering, which the agent leaves out.
func describeTarget(service, subset, dc, peer string, mode api.MeshGatewayMode, sni string) string {
	if peer != "" {
		sni = "(the peer's)"
	}
	return fmt.Sprintf("%s subset=%q dc=%q peer=%q mode=%q sni=%s", service, subset, dc, peer, mode, sni)
}
