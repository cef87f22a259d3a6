package routing_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	tdA = "aaaaaaaa-0000-4000-8000-000000000001.consul"
	tdB = "bbbbbbbb-0000-4000-8000-000000000002.consul"
)

func load(t *testing.T, dir string) *config.Static {
	t.Helper()
	src, err := config.LoadStatic(config.StaticOptions{}, dir)
	require.NoError(t, err)
	return src
}

// route returns the targets, or the rejection reason.
func route(t *testing.T, r gateway.Router, serverName string) ([]string, string) {
	t.Helper()
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: serverName})
	if err != nil {
		var rej *gateway.Rejection
		require.True(t, errors.As(err, &rej), "a refusal is a *gateway.Rejection: %v", err)
		return nil, rej.Reason
	}
	require.NotEmpty(t, got.Targets)
	require.NotEmpty(t, got.Name)
	return got.Targets, ""
}

func TestRouterAcceptingAndExportingSide(t *testing.T) {
	r := &routing.PeeringRouter{Source: load(t, "testdata/cluster-b")}
	for _, tc := range []struct {
		what, name string
		targets    []string
		reason     string
	}{
		{"A's servers reach ours", sni.PeeringServerSNI("dc1", tdB), []string{"127.0.20.2:8503"}, ""},
		{"another datacenter's servers", sni.PeeringServerSNI("dc2", tdB), nil, routing.ReasonUnknownDatacenter},
		{"an export to A", sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB), nil, ""},
		{"not exported at all", sni.PeeredServiceSNI("billing", "", "", "cluster-a", tdB), nil, routing.ReasonNotExported},
		{"exported, but not to that peer", sni.PeeredServiceSNI("api", "", "", "cluster-z", tdB), nil, routing.ReasonNotExported},
		{"exported from another namespace", sni.PeeredServiceSNI("api", "other", "", "cluster-a", tdB), nil, routing.ReasonNotExported},
		{"exported from another partition", sni.PeeredServiceSNI("api", "", "part1", "cluster-a", tdB), nil, routing.ReasonNotExported},
		{"exported with no healthy endpoint", sni.PeeredServiceSNI("quiet", "", "", "cluster-a", tdB), nil, routing.ReasonUnknownService},
		{"a local service, through the mesh router", sni.ServiceSNI("billing", "", "", "", "dc1", tdB), []string{"127.0.20.12:21000"}, ""},
		{"A's own names are not B's to route", sni.PeeringServerSNI("dc1", tdA), nil, routing.ReasonForeignTrustDomain},
		{"an outside name", "www.example.com", nil, routing.ReasonForeignTrustDomain},
		{"no server name", "", nil, routing.ReasonNoServerName},
	} {
		t.Run(tc.what, func(t *testing.T) {
			targets, reason := route(t, r, tc.name)
			assert.Equal(t, tc.reason, reason)
			if tc.targets != nil {
				assert.Equal(t, tc.targets, targets)
			}
		})
	}
	// Both of api's endpoints get connections: the gateway takes them in
	// turn (round robin, api's resolver setting no policy), and an export
	// has no limits, as in Consul.
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)})
	require.NoError(t, err)
	resolvetest.ExpectRoute(t, got, resolvetest.WantRoute{Targets: []string{"127.0.20.10:21000", "127.0.20.11:21000"},
		Policy: gateway.BalanceRoundRobin, NoLimits: true})
}

func TestRouterDialingAndImportingSide(t *testing.T) {
	r := &routing.PeeringRouter{Source: load(t, "testdata/cluster-a")}
	for _, tc := range []struct {
		what, name string
		targets    []string
		reason     string
	}{
		{"our servers reach B's, through B's gateway", sni.PeeringServerSNI("dc1", tdB), []string{"127.0.20.5:8443"}, ""},
		{"a sidecar in local mode reaches B's api", sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB), []string{"127.0.20.5:8443"}, ""},
		{"a service B does not export to us", sni.PeeredServiceSNI("billing", "", "", "cluster-a", tdB), nil, routing.ReasonForeignTrustDomain},
		{"api under another peer label", sni.PeeredServiceSNI("api", "", "", "cluster-z", tdB), nil, routing.ReasonForeignTrustDomain},
		{"B's internal names are never matched by pattern", sni.ServiceSNI("api", "", "", "", "dc1", tdB), nil, routing.ReasonForeignTrustDomain},
		{"B's other datacenters' servers", sni.PeeringServerSNI("dc2", tdB), nil, routing.ReasonForeignTrustDomain},
		{"our own servers, for B's servers dialling us", sni.PeeringServerSNI("dc1", tdA), []string{"127.0.10.2:8503"}, ""},
		{"our own service, through the mesh router", sni.ServiceSNI("web", "", "", "", "dc1", tdA), []string{"127.0.10.1:21000"}, ""},
		{"we export nothing", sni.PeeredServiceSNI("web", "", "", "cluster-b", tdA), nil, routing.ReasonNotExported},
	} {
		t.Run(tc.what, func(t *testing.T) {
			targets, reason := route(t, r, tc.name)
			assert.Equal(t, tc.reason, reason)
			assert.Equal(t, tc.targets, targets)
		})
	}
}

// Routes to a peer's gateways are Remote (the Server applies its remote
// keepalive to them); routes to our own servers and instances are not.
func TestRouterMarksPeersGatewaysRemote(t *testing.T) {
	r := &routing.PeeringRouter{Source: load(t, "testdata/cluster-a")}
	for name, remote := range map[string]bool{
		sni.PeeringServerSNI("dc1", tdB):                      true,
		sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB): true,
		sni.PeeringServerSNI("dc1", tdA):                      false,
		sni.ServiceSNI("web", "", "", "", "dc1", tdA):         false,
	} {
		got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
		require.NoError(t, err, name)
		assert.Equal(t, remote, got.Remote, name)
	}
}

// Without the mesh entry, neither direction of the control plane is routed,
// as in Consul; the data plane does not depend on it.
func TestRouterControlPlaneNeedsTheMeshEntry(t *testing.T) {
	for _, dir := range []string{"testdata/cluster-a", "testdata/cluster-b"} {
		v := *load(t, dir).View()
		v.Mesh = &api.MeshConfigEntry{}
		r := &routing.PeeringRouter{Source: staticView{&v}}
		_, reason := route(t, r, sni.PeeringServerSNI("dc1", tdB))
		assert.Equal(t, routing.ReasonNotThroughGateways, reason, dir)
	}
	v := *load(t, "testdata/cluster-a").View()
	v.Mesh = nil
	targets, reason := route(t, &routing.PeeringRouter{Source: staticView{&v}}, sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB))
	assert.Empty(t, reason)
	assert.Equal(t, []string{"127.0.20.5:8443"}, targets)

	v = *load(t, "testdata/cluster-b").View()
	v.Servers = nil
	_, reason = route(t, &routing.PeeringRouter{Source: staticView{&v}}, sni.PeeringServerSNI("dc1", tdB))
	assert.Equal(t, routing.ReasonNoPeeringServers, reason)
}

// A new view is seen by the next connection: the router's index of peer
// names follows the source.
func TestRouterFollowsTheView(t *testing.T) {
	a := load(t, "testdata/cluster-a").View()
	src := &switchable{}
	src.v = a
	r := &routing.PeeringRouter{Source: src}
	_, reason := route(t, r, sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB))
	require.Empty(t, reason)

	without := *a
	without.Peers = map[string]mesh.Peer{}
	src.v = &without
	_, reason = route(t, r, sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB))
	assert.Equal(t, routing.ReasonForeignTrustDomain, reason, "a peering deleted: its names are no longer routed")
}

type staticView struct{ v *mesh.View }

func (s staticView) View() *mesh.View { return s.v }

type switchable struct{ v *mesh.View }

func (s *switchable) View() *mesh.View { return s.v }
