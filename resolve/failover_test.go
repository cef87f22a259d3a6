package resolve_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// failoverTopology is three datacenters and a peer: api everywhere, its v1
// subset in dc1 and dc2, api-backup's b subset in dc1.
const failoverTopology = `topology {
  datacenter   = "dc1"
  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000", "127.0.1.11:21000"] },
    { name = "api", subset = "v1", addresses = ["127.0.1.10:21000"] },
    { name = "api", datacenter = "dc2", addresses = ["127.0.2.10:21000"], wan_addresses = ["127.0.2.110:21000"] },
    { name = "api", datacenter = "dc2", subset = "v1", addresses = ["127.0.2.10:21000"], wan_addresses = ["127.0.2.110:21000"] },
    { name = "api", datacenter = "dc3", addresses = ["127.0.3.10:21000"], wan_addresses = ["127.0.3.110:21000"] },
    { name = "api-backup", subset = "b", addresses = ["127.0.1.20:21000"] },
  ]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.1.5:8443"], wan_addresses = ["127.0.1.105:8443"] },
    { datacenter = "dc2", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] },
    { datacenter = "dc3", addresses = ["127.0.3.5:8443"], wan_addresses = ["127.0.3.105:8443"] },
  ]
  peers = [
    { name = "other", trust_domain = "11111111-2222-3333-4444-555555555555.consul", name_at_peer = "dc1-default",
      gateways = ["127.0.9.5:8443"], imports = ["api"] },
  ]
}
`

const apiResolver = `Kind = "service-resolver"
Name = "api"
Subsets = { v1 = { Filter = "Service.Meta.version == v1" } }
Failover = {
  "*"  = { Datacenters = ["dc2", "dc3"] }
  "v1" = { Targets = [{ Datacenter = "dc2" }, { Service = "api-backup" }, { Peer = "other" }] }
}
`

const backupResolver = `Kind = "service-resolver"
Name = "api-backup"
DefaultSubset = "b"
Subsets = { b = { Filter = "Service.Meta.x == y" } }
Failover = { "*" = { Datacenters = ["dc9"] } }
`

// failoverSource loads files with failoverTopology; api and api-backup get
// resolvers that define the topology's subsets unless files has theirs.
func failoverSource(t *testing.T, files map[string]string) mesh.Source {
	t.Helper()
	files["topology.hcl"] = failoverTopology
	if _, ok := files["api.hcl"]; !ok {
		files["api.hcl"] = "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\n"
	}
	if _, ok := files["backup.hcl"]; !ok {
		files["backup.hcl"] = "Kind = \"service-resolver\"\nName = \"api-backup\"\nSubsets = { b = {} }\n"
	}
	return resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
}

// Failover by Datacenters: each datacenter in order, after the primary
// target, each with the downstream's mode (here the upstream's "local").
func TestFailoverDatacenters(t *testing.T) {
	src := failoverSource(t, map[string]string{"api.hcl": apiResolver,
		"web.hcl": webProxy("", `{ destination_name = "api", mesh_gateway { mode = "local" } }`)})
	plan := resolvetest.Plan(t, src, "web", "api")
	resolvetest.ExpectChain(t, plan, "api dc1 direct", "api dc2 local-gateway", "api dc3 local-gateway")
	require.Len(t, plan.Failover, 2)
	f := plan.Failover[0]
	assert.Equal(t, "api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", f.SNI)
	assert.Equal(t, []string{"127.0.1.5:8443"}, f.Dial, "the local gateway")
	assert.Equal(t, []string{"web sidecar", "gateway dc1", "gateway dc2", "api dc2"}, f.Hops)
	assert.Equal(t, api.MeshGatewayModeLocal, f.Mode)
	assert.Equal(t, modes.LayerUpstream, f.Layer)
	assert.Equal(t, 1, f.Healthy, "api's instances in dc2, whatever the gateway path")
	assert.Equal(t, 2, plan.Healthy)
	assert.Contains(t, plan.Resolver, `service-resolver "api": Failover["*"]: 2 failover targets`)
	// A service with no failover has a chain of one.
	plan = resolvetest.Plan(t, failoverSource(t, map[string]string{"web.hcl": webProxy("", `{ destination_name = "api" }`)}), "web", "api")
	resolvetest.ExpectChain(t, plan, "api dc1 direct")
	assert.Empty(t, plan.Failover)
}

// The Failover entry of the target's subset applies, else "*"; Targets go
// to another datacenter (keeping the subset), another service (whose own
// redirects and default subset apply, but not its own failover), and a
// peer (where subsets do not cross). With no mode downstream, each target
// takes its own service's service-defaults mode, as the agent compiles it.
func TestFailoverTargetsOfASubset(t *testing.T) {
	src := failoverSource(t, map[string]string{"api.hcl": apiResolver, "backup.hcl": backupResolver,
		"api-sd.hcl":    "Kind = \"service-defaults\"\nName = \"api\"\nMeshGateway { Mode = \"local\" }\n",
		"backup-sd.hcl": "Kind = \"service-defaults\"\nName = \"api-backup\"\nMeshGateway { Mode = \"remote\" }\n",
		"redirect.hcl":  "Kind = \"service-resolver\"\nName = \"web-api\"\nRedirect { Service = \"api\"\n ServiceSubset = \"v1\" }\n",
		"web.hcl":       webProxy("", `{ destination_name = "web-api" }`)})
	plan := resolvetest.Plan(t, src, "web", "web-api")
	resolvetest.ExpectChain(t, plan, "v1.api dc1 direct", "v1.api dc2 local-gateway", "b.api-backup dc1 direct", "api peer other local-gateway")
	ch := plan.Chain()
	for i, want := range []modes.Layer{modes.LayerDestinationDefaults, modes.LayerDestinationDefaults, modes.LayerDestinationDefaults, modes.LayerDestinationDefaults} {
		assert.Equal(t, want, ch[i].Layer, ch[i].String())
	}
	assert.Equal(t, api.MeshGatewayModeRemote, ch[2].Mode, "api-backup's own service-defaults")
	assert.Equal(t, "v1.api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", ch[1].SNI)
	assert.Equal(t, "b.api-backup.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", ch[2].SNI)
	assert.Equal(t, "api.default.default.dc1-default.external.11111111-2222-3333-4444-555555555555.consul", ch[3].SNI)
	assert.Equal(t, []string{"127.0.1.20:21000"}, ch[2].Dial)
	assert.Equal(t, []int{1, 1, 1, 1}, []int{ch[0].Healthy, ch[1].Healthy, ch[2].Healthy, ch[3].Healthy})

	// The upstream's own mode overrides every target's.
	src = failoverSource(t, map[string]string{"api.hcl": apiResolver, "backup.hcl": backupResolver,
		"backup-sd.hcl": "Kind = \"service-defaults\"\nName = \"api-backup\"\nMeshGateway { Mode = \"remote\" }\n",
		"web.hcl":       webProxy("", `{ destination_name = "api", datacenter = "dc3", mesh_gateway { mode = "remote" } }`)})
	plan = resolvetest.Plan(t, src, "web", "api")
	resolvetest.ExpectChain(t, plan, "api dc3 remote-gateway", "api dc2 remote-gateway")
	assert.Equal(t, []string{"127.0.2.105:8443"}, plan.Failover[0].Dial, "dc2's gateway by WAN address")
}

// Failover to one other service or namespace, and never to the target
// itself.
func TestFailoverToAnotherServiceAndNotToItself(t *testing.T) {
	src := failoverSource(t, map[string]string{
		"api.hcl":    "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\nFailover = { \"*\" = { Service = \"api-backup\" } }\n",
		"backup.hcl": backupResolver,
		"db.hcl":     "Kind = \"service-resolver\"\nName = \"db\"\nFailover = { \"*\" = { Datacenters = [\"dc1\", \"dc2\"] } }\n",
		"web.hcl":    webProxy("", `{ destination_name = "api" }, { destination_name = "db", local_bind_port = 2 }`)})
	resolvetest.ExpectChain(t, resolvetest.Plan(t, src, "web", "api"), "api dc1 direct", "b.api-backup dc1 direct")
	db := resolvetest.Plan(t, src, "web", "db")
	resolvetest.ExpectChain(t, db, "db dc1 direct", "db dc2 direct")
	assert.Zero(t, db.Healthy)
	assert.Zero(t, db.Failover[0].Healthy, "the topology lists no db in dc2")
	assert.Contains(t, db.Warnings, "failover db dc2: no addresses known for db dc2")
}

// Sameness groups (Consul Enterprise): a Failover's SamenessGroup, a
// Redirect to one, and the group that is the default for failover of every
// service without a resolver. Members in order; the local partition is the
// target itself and is left out.
func TestFailoverSamenessGroups(t *testing.T) {
	group := "Kind = \"sameness-group\"\nName = \"g\"\nMembers = [{ Partition = \"default\" }, { Peer = \"other\" }, { Peer = \"west\" }]\n"
	src := failoverSource(t, map[string]string{"g.hcl": group,
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\nFailover = { \"*\" = { SamenessGroup = \"g\" } }\n",
		"db.hcl":  "Kind = \"service-resolver\"\nName = \"db\"\nRedirect { SamenessGroup = \"g\" }\n",
		"web.hcl": webProxy("", `{ destination_name = "api" }, { destination_name = "db", local_bind_port = 2 }, { destination_name = "cache", local_bind_port = 3 }`)})
	api := resolvetest.Plan(t, src, "web", "api")
	resolvetest.ExpectChain(t, api, "api dc1 direct", "api peer other remote-gateway", "api peer west remote-gateway")
	assert.Contains(t, api.Warnings, `failover api peer west: peer "west" is unknown: its trust domain, and so the SNI, and its gateways are not known`)
	resolvetest.ExpectChain(t, resolvetest.Plan(t, src, "web", "db"), "db dc1 direct", "db peer other remote-gateway", "db peer west remote-gateway")
	resolvetest.ExpectChain(t, resolvetest.Plan(t, src, "web", "cache"), "cache dc1 direct")

	src = failoverSource(t, map[string]string{"g.hcl": group + "DefaultForFailover = true\n",
		"web.hcl": webProxy("", `{ destination_name = "cache" }`)})
	resolvetest.ExpectChain(t, resolvetest.Plan(t, src, "web", "cache"), "cache dc1 direct", "cache peer other remote-gateway", "cache peer west remote-gateway")

	src = failoverSource(t, map[string]string{
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\nFailover = { \"*\" = { SamenessGroup = \"missing\" } }\n",
		"web.hcl": webProxy("", `{ destination_name = "api" }`)})
	plan := resolvetest.Plan(t, src, "web", "api")
	resolvetest.ExpectChain(t, plan, "api dc1 direct")
	assert.Contains(t, plan.Warnings, `sameness group "missing" is not defined: no failover targets from it (Consul refuses to compile this chain)`)
}

// A redirect cycle is named, as Consul refuses to compile it.
func TestRedirectCycle(t *testing.T) {
	src := failoverSource(t, map[string]string{
		"a.hcl":   "Kind = \"service-resolver\"\nName = \"a\"\nRedirect { Service = \"b\" }\n",
		"b.hcl":   "Kind = \"service-resolver\"\nName = \"b\"\nRedirect { Service = \"a\" }\n",
		"web.hcl": webProxy("", `{ destination_name = "a" }`)})
	plan := resolvetest.Plan(t, src, "web", "a")
	assert.Contains(t, plan.Warnings, "circular service-resolver redirect: a.default.default.dc1 -> b.default.default.dc1 -> a.default.default.dc1 (Consul refuses to compile this chain)")
}

// ExpectChain fails a test in one line that shows both chains.
func TestExpectChainSaysWhatDiffers(t *testing.T) {
	src := failoverSource(t, map[string]string{"api.hcl": apiResolver, "web.hcl": webProxy("", `{ destination_name = "api" }`)})
	plan := resolvetest.Plan(t, src, "web", "api")
	ft := &testing.T{}
	resolvetest.ExpectChain(ft, plan, "api dc1 direct", "api dc3 direct")
	assert.True(t, ft.Failed())
	assert.Equal(t, []string{"api dc1 direct", "api dc2 direct", "api dc3 direct"}, resolvetest.Chain(plan))
}
