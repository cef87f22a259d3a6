package resolve_test

import (
	"context"
	"testing"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func route(t *testing.T, r gateway.Router, name string) (gateway.Route, string) {
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
	r := &resolve.MeshRouter{Source: resolvetest.Load(t, resolve.StaticOptions{}, topology)}
	cases := []struct {
		name, sniName string
		targets       []string
		reason        string
	}{
		{"local service", sni.ServiceSNI("api", "", "", "", "dc1", td), []string{"127.0.1.10:21000"}, ""},
		{"service of another datacenter: its gateways, WAN", sni.ServiceSNI("api", "", "", "", "secondary", td), []string{"127.0.2.105:8443"}, ""},
		{"service of another datacenter the view lacks endpoints for", sni.ServiceSNI("nothing", "", "", "", "secondary", td), []string{"127.0.2.105:8443"}, ""},
		{"gateway name of another datacenter", sni.GatewaySNI("secondary", "", td), []string{"127.0.2.105:8443"}, ""},
		{"unknown local service", sni.ServiceSNI("nothing", "", "", "", "dc1", td), nil, resolve.ReasonUnknownService},
		{"unknown datacenter", sni.ServiceSNI("api", "", "", "", "dc9", td), nil, resolve.ReasonUnknownDatacenter},
		{"other partition without gateways", sni.ServiceSNI("api", "", "", "part1", "dc1", td), nil, resolve.ReasonUnknownDatacenter},
		{"foreign trust domain", sni.ServiceSNI("api", "", "", "", "dc1", peerTD), nil, resolve.ReasonForeignTrustDomain},
		{"not a Consul name", "www.example.com", nil, resolve.ReasonForeignTrustDomain},
		{"malformed", "api.dc1.internal." + td, nil, resolve.ReasonMalformedName},
		{"no SNI", "", nil, resolve.ReasonNoServerName},
		{"own datacenter's gateway name", sni.GatewaySNI("dc1", "", td), nil, resolve.ReasonUnsupportedName},
		{"subset", sni.ServiceSNI("api", "v2", "", "", "dc1", td), nil, resolve.ReasonUnsupportedName},
		{"prepared query", sni.QuerySNI("q", "dc1", td), nil, resolve.ReasonUnsupportedName},
		{"peered service", sni.PeeredServiceSNI("api", "", "", "webstuff", td), nil, resolve.ReasonUnsupportedName},
		{"peering server", sni.PeeringServerSNI("dc1", td), nil, resolve.ReasonUnsupportedName},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, reason := route(t, r, c.sniName)
			assert.Equal(t, c.reason, reason)
			assert.Equal(t, c.targets, got.Targets)
		})
	}
}

func TestMeshRouterRotatesTargets(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"t.hcl": `topology {
  services = [{ name = "api", addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"] }]
}`})
	r := &resolve.MeshRouter{Source: resolvetest.Load(t, resolve.StaticOptions{}, dir)}
	firsts := map[string]int{}
	for range 30 {
		got, reason := route(t, r, sni.ServiceSNI("api", "", "", "", "dc1", resolve.DefaultTrustDomain))
		require.Empty(t, reason)
		require.Len(t, got.Targets, 3, "every endpoint stays in the list for failover")
		assert.ElementsMatch(t, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, got.Targets)
		firsts[got.Targets[0]]++
	}
	assert.Equal(t, map[string]int{"127.0.0.1:1": 10, "127.0.0.1:2": 10, "127.0.0.1:3": 10}, firsts)
}

func BenchmarkMeshRouter(b *testing.B) {
	r := &resolve.MeshRouter{Source: resolvetest.Load(b, resolve.StaticOptions{}, topology)}
	hello := &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", td)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Route(context.Background(), hello); err != nil {
			b.Fatal(err)
		}
	}
}
