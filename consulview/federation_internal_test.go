package consulview

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Per datacenter, whichever of the catalog and the federation states has
// the newer gateway (by raft index) gives the gateways, as Consul's
// ConfigSnapshot.GetMeshGatewayEndpoints chooses: a gateway that moved is
// found at its new address from the federation state while the catalog
// still has the old one, and a datacenter not yet in the WAN pool is known
// from its state alone. The local datacenter's own state is not used.
func TestFederationStatesAndCatalogNewestWins(t *testing.T) {
	c := &Source{opts: Options{WANFederation: true}, cat: newCatalog()}
	c.state.datacenter, c.state.domain = "dc1", "consul"
	c.state.fedServers = []mesh.ConsulServer{{Node: "s1", Address: "127.0.1.2:8300"}}
	gw := func(addr string, index uint64) gatewaySet {
		return gatewaySet{eps: []mesh.Endpoint{{WAN: addr}}, index: index}
	}
	c.state.gateways = map[string]gatewaySet{
		"dc1/mesh-gateway": gw("127.0.1.5:8443", 7),
		"dc2/mesh-gateway": gw("127.0.2.5:8443", 20),
		"dc3/mesh-gateway": gw("127.0.3.5:8443", 50),
		"dc5/mesh-gateway": gw("127.0.5.5:8443", 10),
	}
	c.state.fedGateways = map[string]gatewaySet{
		"dc1": gw("127.0.1.99:8443", 999), // our own: the catalog's
		"dc2": gw("127.0.2.9:8443", 30),   // moved: newer than the catalog
		"dc3": gw("127.0.3.9:8443", 40),   // older than the catalog
		"dc4": gw("127.0.4.5:8443", 5),    // not in the catalog's datacenters yet
		"dc5": {index: 11},                // its gateway since went critical
	}
	c.publishLocked()
	v := c.View()
	want := map[string]string{"dc1": "127.0.1.5:8443", "dc2": "127.0.2.9:8443", "dc3": "127.0.3.5:8443", "dc4": "127.0.4.5:8443"}
	got := map[string]string{}
	for l, eps := range v.Gateways {
		require.Len(t, eps, 1, l.Datacenter)
		got[l.Datacenter] = eps[0].WAN
	}
	assert.Equal(t, want, got)
	require.NotNil(t, v.Federation)
	assert.Equal(t, "consul", v.Federation.Domain)
	assert.Equal(t, c.state.fedServers, v.Federation.Servers)

	// Without WAN federation the federation states are not read, and the
	// view takes no part.
	c.opts.WANFederation = false
	c.publishLocked()
	assert.Nil(t, c.View().Federation)
	assert.Equal(t, "127.0.2.5:8443", c.View().Gateways[mesh.Location{Datacenter: "dc2", Partition: "default"}][0].WAN)
}

// A gateway set's index is the newest of all its mesh gateways, routable or
// not (a gateway that went critical is news too); other kinds are not
// gateways.
func TestGatewaySetIndex(t *testing.T) {
	entry := func(kind api.ServiceKind, index uint64, status string) *api.ServiceEntry {
		return &api.ServiceEntry{Node: &api.Node{Node: "n", Address: "127.0.0.1"},
			Service: &api.AgentService{Kind: kind, Service: "gw", Port: 8443, ModifyIndex: index},
			Checks:  api.HealthChecks{{Status: status}}}
	}
	set := gatewaySetOf([]*api.ServiceEntry{
		entry(api.ServiceKindMeshGateway, 12, api.HealthPassing),
		entry(api.ServiceKindMeshGateway, 40, api.HealthCritical),
		entry(api.ServiceKindTypical, 99, api.HealthPassing),
	})
	assert.EqualValues(t, 40, set.index)
	assert.Len(t, set.eps, 1, "only the passing gateway is routable")
	assert.Len(t, set.unhealthy, 1, "the critical one is kept apart, for a prober")
}

// A gateway out of routing only for a critical check is kept apart (a
// prober may find it serving: one that just started); one in maintenance,
// service or node, or weighted out, was taken out on purpose and is in
// neither list.
func TestUnhealthyGatewaysLeaveMaintenanceOut(t *testing.T) {
	entry := func(port int, weights api.AgentWeights, checks ...*api.HealthCheck) *api.ServiceEntry {
		return &api.ServiceEntry{Node: &api.Node{Node: "n", Address: "127.0.0.1"},
			Service: &api.AgentService{Kind: api.ServiceKindMeshGateway, Service: "gw", Port: port, Weights: weights},
			Checks:  checks}
	}
	check := func(id, status string) *api.HealthCheck { return &api.HealthCheck{CheckID: id, Status: status} }
	set := gatewaySetOf([]*api.ServiceEntry{
		entry(1, api.AgentWeights{}, check("service:gw", api.HealthPassing)),
		entry(2, api.AgentWeights{}, check("service:gw", api.HealthCritical)),
		entry(3, api.AgentWeights{}, check("service:gw", api.HealthPassing), check("_service_maintenance:gw", api.HealthCritical)),
		entry(4, api.AgentWeights{}, check("service:gw", api.HealthCritical), check("_node_maintenance", api.HealthCritical)),
		entry(5, api.AgentWeights{Passing: 0, Warning: 1}, check("service:gw", api.HealthCritical)),
		entry(6, api.AgentWeights{}, check("serfHealth", api.HealthCritical), check("service:gw", api.HealthPassing)),
	})
	ports := func(eps []mesh.Endpoint) []string {
		var out []string
		for _, e := range eps {
			out = append(out, e.Address)
		}
		return out
	}
	assert.Equal(t, []string{"127.0.0.1:1"}, ports(set.eps))
	assert.Equal(t, []string{"127.0.0.1:2", "127.0.0.1:6"}, ports(set.unhealthy))
}

// The local servers for WAN federation: every instance of the consul
// service, by node, at its service address (else its node's) and the
// service's port, the server RPC port.
func TestFederationServers(t *testing.T) {
	got := federationServers([]*api.ServiceEntry{
		{Node: &api.Node{Node: "s1", Address: "10.0.0.1"}, Service: &api.AgentService{Service: "consul", Port: 8300}},
		{Node: &api.Node{Node: "s2", Address: "10.0.0.2"}, Service: &api.AgentService{Service: "consul", Address: "10.0.9.2", Port: 8300,
			Meta: map[string]string{"read_replica": "true"}}},
		{Node: &api.Node{Node: "s3", Address: "10.0.0.3"}, Service: &api.AgentService{Service: "consul"}}, // no port
	})
	assert.Equal(t, []mesh.ConsulServer{{Node: "s1", Address: "10.0.0.1:8300"}, {Node: "s2", Address: "10.0.9.2:8300"}}, got)
	assert.Equal(t, "consul", normalDomain(""))
	assert.Equal(t, "mesh.example.com", normalDomain("Mesh.Example.COM."))
}
