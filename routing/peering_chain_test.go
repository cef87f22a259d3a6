package routing_test

import (
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const chainTD = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

// chainEntries are the config entries of every datacenter (Consul
// replicates them): api fails over by subset to another datacenter,
// another service with a default subset, and a peer.
const chainEntries = `
Kind = "service-resolver"
Name = "api"
Subsets = { v1 = { Filter = "Service.Meta.version == v1" } }
Failover = {
  "*"  = { Datacenters = ["dc2"] }
  "v1" = { Targets = [{ Datacenter = "dc2" }, { Service = "api-backup" }, { Peer = "other" }] }
}
`

const backupEntries = `
Kind = "service-resolver"
Name = "api-backup"
DefaultSubset = "b"
Subsets = { b = { Filter = "Service.Meta.x == y" } }
`

// Every SNI a discovery chain can produce (a subset, another datacenter's
// service and subset, another service's default subset, a peer's service)
// is routed by the gateways it crosses: the local gateway sends each to
// its destination (local endpoints, the other datacenter's gateways, the
// peer's), and the destination datacenter's gateway to the instances.
func TestGatewaysRouteEveryChainTarget(t *testing.T) {
	dc1 := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{
		"api.hcl": chainEntries, "backup.hcl": backupEntries,
		"web.hcl": `service {
  name = "web"
  connect { sidecar_service { proxy { upstreams = [
    { destination_name = "api", local_bind_port = 1 },
    { destination_name = "api-v1", local_bind_port = 2 },
  ] } } }
}`,
		"v1.hcl": "Kind = \"service-resolver\"\nName = \"api-v1\"\nRedirect { Service = \"api\"\n ServiceSubset = \"v1\" }\n",
		"topology.hcl": `topology {
  datacenter = "dc1"
  trust_domain = "` + chainTD + `"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000"] },
    { name = "api", subset = "v1", addresses = ["127.0.1.10:21000"] },
    { name = "api-backup", subset = "b", addresses = ["127.0.1.20:21000"] },
  ]
  gateways = [{ datacenter = "dc2", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] }]
  peers = [{ name = "other", trust_domain = "11111111-2222-3333-4444-555555555555.consul", name_at_peer = "dc1-default",
             gateways = ["127.0.9.5:8443"], imports = ["api"] }]
}`}))
	dc2 := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{
		"api.hcl": chainEntries, "backup.hcl": backupEntries,
		"topology.hcl": `topology {
  datacenter = "dc2"
  trust_domain = "` + chainTD + `"
  services = [
    { name = "api", addresses = ["127.0.2.10:21000", "127.0.2.11:21000"] },
    { name = "api", subset = "v1", addresses = ["127.0.2.11:21000"] },
  ]
}`}))
	gw1, gw2 := &routing.PeeringRouter{Source: dc1}, &routing.PeeringRouter{Source: dc2}

	all := resolvetest.Chain(resolvetest.Plan(t, dc1, "web", "api"))
	all = append(all, resolvetest.Chain(resolvetest.Plan(t, dc1, "web", "api-v1"))...)
	assert.Equal(t, []string{"api dc1 direct", "api dc2 direct",
		"v1.api dc1 direct", "v1.api dc2 direct", "b.api-backup dc1 direct", "api peer other remote-gateway"}, all)

	var targets []resolve.Target
	for _, up := range []string{"api", "api-v1"} {
		targets = append(targets, resolvetest.Plan(t, dc1, "web", up).Chain()...)
	}
	for _, tc := range []struct {
		at1, at2 []string // where dc1's gateway sends it; where dc2's does (nil: not its to route)
	}{
		{[]string{"127.0.1.10:21000"}, nil},
		{[]string{"127.0.2.105:8443"}, []string{"127.0.2.10:21000", "127.0.2.11:21000"}},
		{[]string{"127.0.1.10:21000"}, nil},
		{[]string{"127.0.2.105:8443"}, []string{"127.0.2.11:21000"}},
		{[]string{"127.0.1.20:21000"}, nil},
		{[]string{"127.0.9.5:8443"}, nil},
	} {
		target := targets[0]
		targets = targets[1:]
		require.NotEmpty(t, target.SNI, target.String())
		got, reason := route(t, gw1, target.SNI)
		assert.Empty(t, reason, "dc1's gateway, %s (%s)", target, target.SNI)
		assert.ElementsMatch(t, tc.at1, got, "dc1's gateway, %s", target)
		if tc.at2 != nil {
			got, reason = route(t, gw2, target.SNI)
			assert.Empty(t, reason, "dc2's gateway, %s (%s)", target, target.SNI)
			assert.ElementsMatch(t, tc.at2, got, "dc2's gateway, %s", target)
		}
	}
}
