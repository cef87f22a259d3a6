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

func TestMeshRouterRotatesTargets(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"t.hcl": `topology {
  services = [{ name = "api", addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"] }]
}`})
	r := &routing.MeshRouter{Source: resolvetest.Load(t, config.StaticOptions{}, dir)}
	firsts := map[string]int{}
	for range 30 {
		got, reason := meshRoute(t, r, sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain))
		require.Empty(t, reason)
		require.Len(t, got.Targets, 3, "every endpoint stays in the list for failover")
		assert.ElementsMatch(t, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, got.Targets)
		firsts[got.Targets[0]]++
	}
	assert.Equal(t, map[string]int{"127.0.0.1:1": 10, "127.0.0.1:2": 10, "127.0.0.1:3": 10}, firsts)
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
