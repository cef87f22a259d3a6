package resolve_test

import (
	"context"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tenancyTopology has api in two namespaces of dc1 and dc2, and a peer.
const tenancyTopology = `topology {
  datacenter   = "dc1"
  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000"] },
    { name = "api", namespace = "team", addresses = ["127.0.1.30:21000", "127.0.1.31:21000"] },
    { name = "api", namespace = "team", subset = "v1", addresses = ["127.0.1.31:21000"] },
    { name = "api", datacenter = "dc2", addresses = ["127.0.2.10:21000"] },
    { name = "api", namespace = "team", datacenter = "dc2", addresses = ["127.0.2.30:21000"] },
  ]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.1.5:8443"] },
    { datacenter = "dc2", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] },
  ]
  peers = [{ name = "other", trust_domain = "11111111-2222-3333-4444-555555555555.consul", name_at_peer = "dc1-default",
             gateways = ["127.0.9.5:8443"] }]
}
`

// teamResolver defines the v1 subset of team's api.
const teamResolver = "Kind = \"service-resolver\"\nName = \"api\"\nNamespace = \"team\"\nSubsets = { v1 = {} }\n"

// proxyIn is web's sidecar in namespace ns with upstreams.
func proxyIn(ns, upstreams string) string {
	return `service {
  name = "web-sidecar-proxy"
  namespace = "` + ns + `"
  kind = "connect-proxy"
  port = 21000
  proxy {
    destination_service_name = "web"
    upstreams = [` + upstreams + `]
  }
}`
}

// An upstream that names no namespace is in the proxy's own, as Consul
// fills it in (agent/proxycfg's state.go: DestinationNamespace defaults to
// the proxy's namespace), for a peer's service too.
func TestUpstreamWithoutNamespaceIsInTheProxys(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{"topology.hcl": tenancyTopology, "api-team.hcl": teamResolver,
		"web.hcl": proxyIn("team", `{ destination_name = "api", local_bind_port = 1 },
      { destination_name = "api", destination_namespace = "default", local_bind_port = 2 },
      { destination_name = "api", destination_peer = "other", local_bind_port = 3 }`)}))
	plan := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Namespace: "team", Datacenter: "dc1"})
	resolvetest.Expect(t, plan, resolvetest.Want{Route: resolve.PathDirect,
		SNI: "api.team.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", Dial: []string{"127.0.1.30:21000", "127.0.1.31:21000"}})
	plan = resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Namespace: "default"})
	resolvetest.Expect(t, plan, resolvetest.Want{SNI: "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", Dial: []string{"127.0.1.10:21000"}})
	plan = resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Peer: "other"})
	resolvetest.Expect(t, plan, resolvetest.Want{SNI: "api.team.default.dc1-default.external.11111111-2222-3333-4444-555555555555.consul"})

	// In the default namespace, the default namespace.
	src = resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{"topology.hcl": tenancyTopology, "api-team.hcl": teamResolver,
		"web.hcl": webProxy("", `{ destination_name = "api" }`)}))
	resolvetest.Expect(t, resolvetest.Plan(t, src, "web", "api"), resolvetest.Want{Dial: []string{"127.0.1.10:21000"}})
}

// service-defaults and service-resolvers are one per name, namespace and
// partition, as in Consul: the same name in two namespaces is two entries,
// each applying to its own namespace's service, for the planner (the
// destination's and the downstream's entries) and for the gateway's router.
func TestEntriesOfEachNamespace(t *testing.T) {
	files := map[string]string{"topology.hcl": tenancyTopology,
		"api-sd.hcl":      "Kind = \"service-defaults\"\nName = \"api\"\nMeshGateway { Mode = \"local\" }\n",
		"api-team-sd.hcl": "Kind = \"service-defaults\"\nName = \"api\"\nNamespace = \"team\"\nMeshGateway { Mode = \"remote\" }\n",
		"api-team.hcl":    "Kind = \"service-resolver\"\nName = \"api\"\nNamespace = \"team\"\nDefaultSubset = \"v1\"\nSubsets = { v1 = {} }\n",
		"web.hcl": webProxy("", `{ destination_name = "api", datacenter = "dc2", local_bind_port = 1 },
      { destination_name = "api", destination_namespace = "team", datacenter = "dc2", local_bind_port = 2 },
      { destination_name = "api", destination_namespace = "team", local_bind_port = 3 }`)}
	src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
	plan := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Namespace: "default", Datacenter: "dc2"})
	resolvetest.Expect(t, plan, resolvetest.Want{Mode: api.MeshGatewayModeLocal, Layer: modes.LayerDestinationDefaults, Route: resolve.PathLocalGateway})
	plan = resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Namespace: "team", Datacenter: "dc2"})
	resolvetest.Expect(t, plan, resolvetest.Want{Mode: api.MeshGatewayModeRemote, Layer: modes.LayerDestinationDefaults, Route: resolve.PathRemoteGateway,
		Subset: "v1", SNI: "v1.api.team.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"})
	plan = resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Namespace: "team", Datacenter: "dc1"})
	resolvetest.Expect(t, plan, resolvetest.Want{Subset: "v1", Dial: []string{"127.0.1.31:21000"}})

	// The downstream's own service-defaults: those of its namespace.
	files["web-team-sd.hcl"] = "Kind = \"service-defaults\"\nName = \"web\"\nNamespace = \"team\"\nMeshGateway { Mode = \"remote\" }\n"
	files["web.hcl"] = webProxy("", `{ destination_name = "api", datacenter = "dc2" }`)
	src = resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
	resolvetest.Expect(t, resolvetest.Plan(t, src, "web", "api"), resolvetest.Want{Mode: api.MeshGatewayModeLocal, Layer: modes.LayerDestinationDefaults})
	files["web.hcl"] = proxyIn("team", `{ destination_name = "api", destination_namespace = "default", datacenter = "dc2" }`)
	src = resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
	resolvetest.Expect(t, resolvetest.Plan(t, src, "web", "api"), resolvetest.Want{Mode: api.MeshGatewayModeRemote, Layer: modes.LayerServiceDefaults})

	// The gateway: team's api goes to its default subset, default's to
	// every instance.
	r := &routing.MeshRouter{Source: src}
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "team", "", "dc1", config.DefaultTrustDomain)})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.1.31:21000"}, got.Targets)
	got, err = r.Route(context.Background(), &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain)})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.1.10:21000"}, got.Targets)

	// The same name twice in one namespace is still a second entry.
	_, err = config.Parse("twice.hcl", []byte("config_entries {\n  bootstrap = [\n"+
		"    { Kind = \"service-defaults\", Name = \"api\", Namespace = \"team\" },\n"+
		"    { Kind = \"service-defaults\", Name = \"api\", Namespace = \"team\" },\n"+
		"    { Kind = \"service-resolver\", Name = \"api\", Partition = \"ap1\" },\n"+
		"    { Kind = \"service-resolver\", Name = \"api\", Partition = \"ap1\" },\n  ]\n}\n"))
	assert.ErrorContains(t, err, `a second service-defaults for "api" in namespace "team"`)
	assert.ErrorContains(t, err, `a second service-resolver for "api" in partition "ap1"`)
}
