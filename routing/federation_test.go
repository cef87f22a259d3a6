package routing_test

import (
	"context"
	"errors"
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const td = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

func fedRoute(r gateway.Router, name string) (gateway.Route, string) {
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
	var rej *gateway.Rejection
	if errors.As(err, &rej) {
		return got, rej.Reason
	}
	return got, ""
}

func TestRoutesServerNamesAsConsulsGateway(t *testing.T) {
	r := &routing.FederationRouter{Source: resolvetest.Load(t, config.StaticOptions{}, "testdata/dc1.hcl")}
	cases := []struct {
		name, server string
		targets      []string
		remote       bool
		reason       string
	}{
		{"a local server by node name", "dc1-server-2.server.dc1.consul", []string{"127.0.1.3:8300"}, false, ""},
		{"a local server whose node name has dots", "ip-10-0-1-4.ec2.internal.server.dc1.consul", []string{"127.0.1.4:8300"}, false, ""},
		{"node names match without regard to case", "DC1-Server-1.server.dc1.consul", []string{"127.0.1.2:8300"}, false, ""},
		{"any local server", "server.dc1.consul", []string{"127.0.1.2:8300", "127.0.1.3:8300", "127.0.1.4:8300"}, false, ""},
		// One rule for case, as Envoy matches the server names of Consul's
		// filter chains (lower-cased): the whole name, keyword included.
		{"any local server, in capitals", "SERVER.DC1.CONSUL", []string{"127.0.1.2:8300", "127.0.1.3:8300", "127.0.1.4:8300"}, false, ""},
		{"any local server, some capitals", "server.DC1.consul", []string{"127.0.1.2:8300", "127.0.1.3:8300", "127.0.1.4:8300"}, false, ""},
		{"a local server, in capitals", "DC1-SERVER-2.SERVER.DC1.CONSUL", []string{"127.0.1.3:8300"}, false, ""},
		{"a server of another datacenter: its gateways, WAN", "dc2-server-1.server.dc2.consul", []string{"127.0.2.105:8443"}, true, ""},
		{"any server of another datacenter", "server.dc2.consul", []string{"127.0.2.105:8443"}, true, ""},
		{"a local node that is no server", "web-1.server.dc1.consul", nil, false, routing.ReasonUnknownServer},
		{"a datacenter the gateway knows no gateways of", "server.dc9.consul", nil, false, routing.ReasonUnknownDatacenter},
		{"another domain is not a server name: the mesh router refuses it", "server.dc1.example.com", nil, false, routing.ReasonForeignTrustDomain},
		{"service names go on to the mesh router", sni.ServiceSNI("api", "", "", "", "dc1", td), []string{"127.0.1.10:21000"}, false, ""},
		{"the peering control plane goes on to the peering router", sni.PeeringServerSNI("dc1", td), nil, false, routing.ReasonNotThroughGateways},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, reason := fedRoute(r, c.server)
			assert.Equal(t, c.reason, reason)
			assert.ElementsMatch(t, c.targets, got.Targets)
			assert.Equal(t, c.remote, got.Remote, "Remote only for other datacenters' gateways")
			if reason == "" && c.targets[0] != "127.0.1.10:21000" {
				assert.Equal(t, routing.RouteWANFederation, got.Kind)
			}
		})
	}
}

// server.<dc>.<domain> routes to every local server, which the gateway
// takes in turn (round robin, as Consul's gateway cluster for them).
func TestAnyLocalServerIsTakenInTurn(t *testing.T) {
	r := &routing.FederationRouter{Source: resolvetest.Load(t, config.StaticOptions{}, "testdata/dc1.hcl")}
	got, reason := fedRoute(r, "server.dc1.consul")
	require.Empty(t, reason)
	resolvetest.ExpectRoute(t, got, resolvetest.WantRoute{Targets: []string{"127.0.1.2:8300", "127.0.1.3:8300", "127.0.1.4:8300"},
		Policy: gateway.BalanceRoundRobin})
}

func TestServerNamesAreRefusedWithoutFederation(t *testing.T) {
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: td,
		Gateways: map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2"}: {{WAN: "127.0.2.105:8443"}}}})
	require.NoError(t, err)
	r := &routing.FederationRouter{Source: src}
	for _, name := range []string{"server.dc1.consul", "s1.server.dc1.consul", "server.dc2.consul"} {
		got, reason := fedRoute(r, name)
		assert.Equal(t, routing.ReasonNotFederating, reason, name)
		assert.Empty(t, got.Targets, name)
	}
	// The same names route once the view takes part.
	src, err = config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: td,
		Gateways:   map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2"}: {{WAN: "127.0.2.105:8443"}}},
		Federation: &mesh.Federation{Servers: []mesh.ConsulServer{{Node: "s1", Address: "127.0.1.2:8300"}}}})
	require.NoError(t, err)
	r = &routing.FederationRouter{Source: src}
	for name, want := range map[string]string{"server.dc1.consul": "127.0.1.2:8300", "s1.server.dc1.consul": "127.0.1.2:8300", "server.dc2.consul": "127.0.2.105:8443"} {
		got, reason := fedRoute(r, name)
		assert.Empty(t, reason, name)
		assert.Equal(t, []string{want}, got.Targets, name)
	}
}

func TestOwnDomain(t *testing.T) {
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: td,
		Federation: &mesh.Federation{Domain: "Mesh.Example.COM.", Servers: []mesh.ConsulServer{{Node: "s1", Address: "127.0.1.2:8300"}}}})
	require.NoError(t, err)
	r := &routing.FederationRouter{Source: src}
	got, reason := fedRoute(r, "s1.server.dc1.mesh.example.com")
	assert.Empty(t, reason)
	assert.Equal(t, []string{"127.0.1.2:8300"}, got.Targets)
	_, reason = fedRoute(r, "s1.server.dc1.consul")
	assert.Equal(t, routing.ReasonForeignTrustDomain, reason, "the default domain is not this cluster's")
}

func TestNoLocalServersKnown(t *testing.T) {
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: td, Federation: &mesh.Federation{}})
	require.NoError(t, err)
	_, reason := fedRoute(&routing.FederationRouter{Source: src}, "server.dc1.consul")
	assert.Equal(t, routing.ReasonNoServers, reason)
}

func TestTopologyFederationProblems(t *testing.T) {
	_, err := config.Parse("bad.hcl", []byte(`topology {
  wan_federation {
    servers = [
      { node = "", address = "127.0.1.2:8300" },
      { node = "s1", address = "127.0.1.2" },
      { node = "s2", address = "127.0.1.3:8300" },
      { node = "S2", address = "127.0.1.4:8300" },
      { node = "a/b", address = "127.0.1.5:8300" },
    ]
  }
}`))
	require.Error(t, err)
	for _, want := range []string{"a server without a node name", `address "127.0.1.2"`, `server "S2" listed twice`, `"a/b"`} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = config.Parse("typo.hcl", []byte(`topology {
  wan_federation { domian = "consul" }
}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `typo.hcl:2`)
	assert.Contains(t, err.Error(), `unknown key "domian" (did you mean "domain"?)`)
}
