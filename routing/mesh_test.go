package routing_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// peerTD is another cluster's trust domain.
const peerTD = "11111111-2222-3333-4444-555555555555.consul"

// meshTopology says where things are for the mesh router's tests.
var meshTopology = filepath.Join("..", "resolve", "testdata", "topology.hcl")

func meshRoute(t *testing.T, r gateway.Router, name string) (gateway.Route, string) {
	t.Helper()
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
	if err != nil {
		rej, ok := err.(*gateway.Rejection)
		require.True(t, ok, "want a *gateway.Rejection, got %T %v", err, err)
		return got, rej.Reason
	}
	return got, ""
}

func TestMeshRouter(t *testing.T) {
	r := &routing.MeshRouter{Source: resolvetest.Load(t, config.StaticOptions{}, meshTopology)}
	cases := []struct {
		name, sniName string
		targets       []string
		reason        string
	}{
		{"local service", sni.ServiceSNI("api", "", "", "", "dc1", td), []string{"127.0.1.10:21000"}, ""},
		{"service of another datacenter: its gateways, WAN", sni.ServiceSNI("api", "", "", "", "secondary", td), []string{"127.0.2.105:8443"}, ""},
		{"service of another datacenter the view lacks endpoints for", sni.ServiceSNI("nothing", "", "", "", "secondary", td), []string{"127.0.2.105:8443"}, ""},
		{"gateway name of another datacenter", sni.GatewaySNI("secondary", "", td), []string{"127.0.2.105:8443"}, ""},
		{"unknown local service", sni.ServiceSNI("nothing", "", "", "", "dc1", td), nil, routing.ReasonUnknownService},
		{"unknown datacenter", sni.ServiceSNI("api", "", "", "", "dc9", td), nil, routing.ReasonUnknownDatacenter},
		{"other partition without gateways", sni.ServiceSNI("api", "", "", "part1", "dc1", td), nil, routing.ReasonUnknownDatacenter},
		{"foreign trust domain", sni.ServiceSNI("api", "", "", "", "dc1", peerTD), nil, routing.ReasonForeignTrustDomain},
		{"not a Consul name", "www.example.com", nil, routing.ReasonForeignTrustDomain},
		{"malformed", "api.dc1.internal." + td, nil, routing.ReasonMalformedName},
		{"no SNI", "", nil, routing.ReasonNoServerName},
		{"own datacenter's gateway name", sni.GatewaySNI("dc1", "", td), nil, routing.ReasonUnsupportedName},
		{"subset of a service without a resolver", sni.ServiceSNI("api", "v2", "", "", "dc1", td), nil, routing.ReasonUnknownSubset},
		{"prepared query", sni.QuerySNI("q", "dc1", td), nil, routing.ReasonUnsupportedName},
		{"peered service", sni.PeeredServiceSNI("api", "", "", "webstuff", td), nil, routing.ReasonUnsupportedName},
		{"peering server", sni.PeeringServerSNI("dc1", td), nil, routing.ReasonUnsupportedName},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, reason := meshRoute(t, r, c.sniName)
			assert.Equal(t, c.reason, reason)
			assert.Equal(t, c.targets, got.Targets)
			remote := strings.HasPrefix(c.name, "service of another") || strings.HasPrefix(c.name, "gateway name of another")
			assert.Equal(t, remote, got.Remote, "Remote only for other datacenters' gateways")
		})
	}
}

// A local service's route carries what Consul configures on its cluster:
// its resolver's LoadBalancer (a hash-based one left out, as Consul leaves
// it on a gateway), its instances' weights and the limits of the gateway's
// own service-defaults; its targets stay in the catalog's order (the
// gateway takes them in turn). Other datacenters' gateways are round robin
// with the same limits.
func TestMeshRouterBalancesAsConsul(t *testing.T) {
	files := map[string]string{
		"t.hcl": `topology {
  services = [
    { name = "api", addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], weights = [3, 1, 1] },
    { name = "web", addresses = ["127.0.0.1:4", "127.0.0.1:5"] },
    { name = "db", addresses = ["127.0.0.1:6", "127.0.0.1:7"] },
  ]
  gateways = [{ datacenter = "dc2", wan_addresses = ["127.0.2.1:8443"] }]
}`,
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nLoadBalancer { Policy = \"least_request\"\nLeastRequestConfig { ChoiceCount = 3 } }\n",
		"web.hcl": "Kind = \"service-resolver\"\nName = \"web\"\nLoadBalancer { Policy = \"maglev\" }\n",
		"gw.hcl": `Kind = "service-defaults"
Name = "mesh-gateway"
UpstreamConfig { Defaults { Limits { MaxConnections = 5, MaxPendingRequests = 2 } } }
`}
	src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
	name := func(svc, dc string) string { return sni.ServiceSNI(svc, "", "", "", dc, config.DefaultTrustDomain) }
	resolvetest.ExpectRoute(t, resolvetest.Route(t, src, "", name("api", "dc1")), resolvetest.WantRoute{Kind: routing.RouteService,
		Targets: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, Weights: []int{3, 1, 1},
		Policy: gateway.BalanceLeastRequest, ChoiceCount: 3, MaxConnections: 5, MaxPendingRequests: 2})
	resolvetest.ExpectRoute(t, resolvetest.Route(t, src, "", name("web", "dc1")), resolvetest.WantRoute{
		Targets: []string{"127.0.0.1:4", "127.0.0.1:5"}, Policy: gateway.BalanceRoundRobin})
	db := resolvetest.Route(t, src, "", name("db", "dc1"))
	resolvetest.ExpectRoute(t, db, resolvetest.WantRoute{Policy: gateway.BalanceRoundRobin, MaxConnections: 5})
	assert.Nil(t, db.Weights, "all 1")
	resolvetest.ExpectRoute(t, resolvetest.Route(t, src, "", name("api", "dc2")), resolvetest.WantRoute{Kind: routing.RouteGateway,
		Targets: []string{"127.0.2.1:8443"}, Policy: gateway.BalanceRoundRobin, MaxConnections: 5})
	// Another gateway's service-defaults are not this one's.
	resolvetest.ExpectRoute(t, resolvetest.Route(t, src, "other-gateway", name("api", "dc1")), resolvetest.WantRoute{NoLimits: true})

	// resolvetest says what differs.
	ft := &testing.T{}
	resolvetest.ExpectRoute(ft, db, resolvetest.WantRoute{Policy: gateway.BalanceRandom, MaxConcurrentRequests: 3})
	assert.True(t, ft.Failed())
}

// Envoy's panic threshold, which Consul leaves at 50 % on a gateway's
// service clusters: with fewer than half of a service's (or subset's)
// instances healthy, the critical ones are routed too; with half or more,
// only the healthy ones; with none healthy, all of them rather than none.
func TestMeshRouterPanicThreshold(t *testing.T) {
	files := map[string]string{"t.hcl": `topology {
  services = [
    { name = "few", addresses = ["127.0.0.1:1"], critical_addresses = ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"] },
    { name = "half", addresses = ["127.0.0.1:5", "127.0.0.1:6"], critical_addresses = ["127.0.0.1:7", "127.0.0.1:8"] },
    { name = "none", critical_addresses = ["127.0.0.1:9"] },
    { name = "few", subset = "v1", addresses = ["127.0.0.1:1"], critical_addresses = ["127.0.0.1:2", "127.0.0.1:3"] },
  ]
}`, "few.hcl": "Kind = \"service-resolver\"\nName = \"few\"\nSubsets = { v1 = {} }\n"}
	src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
	name := func(svc, subset string) string {
		return sni.ServiceSNI(svc, subset, "", "", "dc1", config.DefaultTrustDomain)
	}
	for sniName, want := range map[string][]string{
		name("few", ""):   {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"},
		name("few", "v1"): {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"},
		name("half", ""):  {"127.0.0.1:5", "127.0.0.1:6"},
		name("none", ""):  {"127.0.0.1:9"},
	} {
		resolvetest.ExpectRoute(t, resolvetest.Route(t, src, "", sniName), resolvetest.WantRoute{Targets: want, Policy: gateway.BalanceRoundRobin})
	}
	resolvetest.ExpectRefused(t, src, "", name("nothing", ""), routing.ReasonUnknownService)
}

func BenchmarkMeshRouter(b *testing.B) {
	r := &routing.MeshRouter{Source: resolvetest.Load(b, config.StaticOptions{}, meshTopology)}
	hello := &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", td)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Route(context.Background(), hello); err != nil {
			b.Fatal(err)
		}
	}
}

// Subsets route as in Consul's gateway: the subset SNI to the subset's
// endpoints, the plain SNI to the DefaultSubset's only, an undefined subset
// nowhere, with the resolver's ConnectTimeout.
func TestMeshRouterSubsets(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{
		"resolver.hcl": `Kind = "service-resolver"
Name = "api"
DefaultSubset = "v1"
ConnectTimeout = "750ms"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = { Filter = "Service.Meta.version == v2" }
}`,
		"t.hcl": `topology {
  trust_domain = "` + td + `"
  services = [
    { name = "api", addresses = ["127.0.0.1:1", "127.0.0.1:2"] },
    { name = "api", subset = "v1", addresses = ["127.0.0.1:1"] },
    { name = "api", subset = "v2", addresses = ["127.0.0.1:2"] },
    { name = "db", addresses = ["127.0.0.1:3"] },
  ]
}`})
	r := &routing.MeshRouter{Source: resolvetest.Load(t, config.StaticOptions{}, dir)}
	for _, c := range []struct {
		sniName, routeName string
		targets            []string
		reason             string
	}{
		{sni.ServiceSNI("api", "", "", "", "dc1", td), "service api subset v1", []string{"127.0.0.1:1"}, ""},
		{sni.ServiceSNI("api", "v1", "", "", "dc1", td), "service api subset v1", []string{"127.0.0.1:1"}, ""},
		{sni.ServiceSNI("api", "v2", "", "", "dc1", td), "service api subset v2", []string{"127.0.0.1:2"}, ""},
		{sni.ServiceSNI("api", "v3", "", "", "dc1", td), "", nil, routing.ReasonUnknownSubset},
		{sni.ServiceSNI("db", "", "", "", "dc1", td), "service db", []string{"127.0.0.1:3"}, ""},
	} {
		got, reason := meshRoute(t, r, c.sniName)
		assert.Equal(t, c.reason, reason, c.sniName)
		assert.Equal(t, c.targets, got.Targets, c.sniName)
		assert.Equal(t, c.routeName, got.Name, c.sniName)
		if c.routeName != "" && c.routeName != "service db" {
			assert.Equal(t, "750ms", got.ConnectTimeout.String(), c.sniName)
		} else {
			assert.Zero(t, got.ConnectTimeout, c.sniName)
		}
	}
}
