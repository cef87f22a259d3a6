package gatewaymetrics_test

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/mesh"
	"github.com/stretchr/testify/assert"
)

// MeshClusters counts, in each kind of cluster Consul hands endpoints as
// unhealthy, those endpoints in Endpoints (Envoy's membership_total) and
// not in Healthy (membership_healthy): a service's critical instances, in
// its plain cluster, its subsets' and its export's; a service with
// critical instances only; other datacenters' critical gateways, in their
// gateway and WAN federation clusters, a datacenter with critical ones
// only included; a critical gateway a prober routes, once, as healthy; an
// imported service's critical entries, an import with critical ones only
// included; an ejected endpoint, as not healthy.
func TestMeshClustersCountWhatConsulMarksUnhealthy(t *testing.T) {
	const td = "11111111-2222-3333-4444-555555555555.consul"
	const peered = "default.default.dc1-at-peer.external.66666666-7777-8888-9999-000000000000.consul"
	key := func(name string) mesh.ServiceKey {
		return mesh.ServiceKey{Name: name, Namespace: "default", Partition: "default", Datacenter: "dc1"}
	}
	eps := func(addrs ...string) []mesh.Endpoint {
		out := make([]mesh.Endpoint, len(addrs))
		for i, a := range addrs {
			out[i] = mesh.Endpoint{Address: a}
		}
		return out
	}
	wan := func(addrs ...string) []mesh.Endpoint {
		out := make([]mesh.Endpoint, len(addrs))
		for i, a := range addrs {
			out[i] = mesh.Endpoint{Address: "127.0.9.9:1", WAN: a}
		}
		return out
	}
	dc2, dc3 := mesh.Location{Datacenter: "dc2", Partition: "default"}, mesh.Location{Datacenter: "dc3", Partition: "default"}
	v := &mesh.View{Datacenter: "dc1", TrustDomain: td,
		Resolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{
			mesh.KeyOf("web", "", ""): {Kind: api.ServiceResolver, Name: "web", DefaultSubset: "v1",
				Subsets: map[string]api.ServiceResolverSubset{"v1": {OnlyPassing: true}, "v2": {}}},
		},
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			key("api"): eps("127.0.0.1:1", "127.0.0.2:1"),
			key("web"): eps("127.0.0.3:1", "127.0.0.4:1"),
		},
		UnhealthyServices: map[mesh.ServiceKey][]mesh.Endpoint{
			key("api"):  eps("127.0.0.5:1"),
			key("down"): eps("127.0.0.6:1", "127.0.0.7:1"),
		},
		Subsets: map[mesh.ServiceKey]map[string][]mesh.Endpoint{
			key("web"): {"v1": eps("127.0.0.3:1"), "v2": eps("127.0.0.4:1")},
		},
		UnhealthySubsets: map[mesh.ServiceKey]map[string][]mesh.Endpoint{
			key("web"): {"v1": eps("127.0.0.4:1")}, // warning: not passing in an OnlyPassing subset
		},
		Exports: map[mesh.ServiceKey][]string{key("api"): {"peer"}, key("down"): {"peer"}},
		Gateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: "dc1", Partition: "default"}: eps("127.0.1.1:1"),
			dc2: wan("127.0.2.1:1", "127.0.2.2:1"),
		},
		UnhealthyGateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: "dc1", Partition: "default"}: eps("127.0.1.2:1"),
			dc2: wan("127.0.2.2:1", "127.0.2.3:1"), // .2 critical, but routed: a prober found it serving
			dc3: wan("127.0.3.1:1"),
		},
		Federation: &mesh.Federation{Servers: []mesh.ConsulServer{{Node: "s1", Address: "127.0.1.9:8300"}}},
		Peers: map[string]mesh.Peer{"peer": {Name: "peer", Imports: []mesh.ImportedService{
			{Name: "billing", SNI: "billing." + peered, Gateways: []string{"127.0.4.1:1", "127.0.4.2:1"}, UnhealthyGateways: []string{"127.0.4.3:1"}},
			{Name: "ledger", SNI: "ledger." + peered, UnhealthyGateways: []string{"127.0.4.1:1", "127.0.4.2:1"}}, // the peer's gateways were down when ledger's entries last changed
		}}},
	}
	ejected := map[string]time.Time{"127.0.0.2:1": time.Now(), "127.0.2.1:1": time.Now(), "127.0.4.2:1": time.Now()}
	type count struct{ total, healthy int }
	got := map[string]count{}
	for _, c := range gatewaymetrics.MeshClusters(v, ejected) {
		got[c.Name] = count{c.Endpoints, c.Healthy}
	}
	assert.Equal(t, map[string]count{
		"api.default.dc1.internal." + td:           {3, 1}, // one ejected, one critical
		"exported~api.default.dc1.internal." + td:  {3, 1},
		"down.default.dc1.internal." + td:          {2, 0},
		"exported~down.default.dc1.internal." + td: {2, 0},
		"web.default.dc1.internal." + td:           {2, 1}, // the default subset's: v1
		"v1.web.default.dc1.internal." + td:        {2, 1},
		"v2.web.default.dc1.internal." + td:        {1, 1},
		"dc2.internal." + td:                       {3, 1}, // .1 ejected, .2 routed, .3 critical
		"dc3.internal." + td:                       {1, 0},
		"server.dc2.consul":                        {3, 1},
		"server.dc3.consul":                        {1, 0},
		"s1.server.dc1.consul":                     {1, 1},
		"billing." + peered:                        {3, 1}, // .2 ejected, .3 critical
		"ledger." + peered:                         {2, 0},
	}, got)
}
