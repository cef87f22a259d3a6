package sidecar_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing/routingtest"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const eventually = 60 * time.Second

// echoes sends 256 KiB over c and reads them back.
func echoes(t *testing.T, c net.Conn) {
	t.Helper()
	want := make([]byte, 256<<10)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(want); errc <- err }()
	got := make([]byte, len(want))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.True(t, bytes.Equal(want, got), "the echo differs from what was sent")
}

// Two WAN-joined datacenters, a meshgate gateway in each, a Connect-native
// api in dc2 and web in dc1 dialling it through a sidecar.Dialer: each mode
// takes its path, with the bytes intact and each gateway forwarding exactly
// the connections the mode sends through it; the mode set at each layer of
// the precedence decides, changed live; a destination with the wrong
// identity is refused.
func TestModesMoveBytesAcrossDatacenters(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	gw1, gw2 := routingtest.StartGateway(t, dc1.Client), routingtest.StartGateway(t, dc2.Client)
	sidecartest.ServeNative(t, dc2.Client, "api", sidecartest.WatchCerts(t, dc2.Client, "api"))

	src, err := consulview.New(context.Background(), dc1.Client, consulview.Options{})
	require.NoError(t, err)
	t.Cleanup(src.Close)
	d := &sidecar.Dialer{Source: src, Certs: sidecartest.WatchCerts(t, dc1.Client, "web"), Client: dc1.Client,
		Instance: mesh.Instance{Service: "web", Name: "web", Proxy: &api.AgentServiceConnectProxyConfig{}}}
	apiSNI := d.Plan(api.Upstream{DestinationName: "api", Datacenter: "dc2"}).SNI

	// dial waits until up is planned along route and a connection gets
	// through, then counts what one more connection crosses: the gateways
	// count a connection when it closes, so the earlier ones are let close
	// first.
	dial := func(t *testing.T, up api.Upstream, route resolve.Path, source modes.Layer, through1, through2 bool) {
		t.Helper()
		consultest.WaitFor(t, eventually, "the plan for "+string(route)+" to be dialled", func() bool {
			plan := d.Plan(up)
			if plan.Route != route || plan.Layer != source {
				return false
			}
			c, _, err := d.Dial(context.Background(), up)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		consultest.WaitFor(t, eventually, "the gateways to close earlier connections", func() bool { return gw1.Idle() && gw2.Idle() })
		want1, want2 := gw1.Count(apiSNI), gw2.Count(apiSNI)
		c, plan, err := d.Dial(context.Background(), up)
		require.NoError(t, err)
		assert.Equal(t, route, plan.Route)
		assert.Equal(t, source, plan.Layer)
		echoes(t, c)
		c.Close()
		if through1 {
			want1++
		}
		if through2 {
			want2++
		}
		consultest.WaitFor(t, eventually, "the gateways to count the connection", func() bool {
			return gw1.Count(apiSNI) >= want1 && gw2.Count(apiSNI) >= want2 && gw1.Idle() && gw2.Idle()
		})
		assert.Equal(t, want1, gw1.Count(apiSNI), "connections forwarded by dc1's gateway, after %s", route)
		assert.Equal(t, want2, gw2.Count(apiSNI), "connections forwarded by dc2's gateway, after %s", route)
		t.Logf("%s (%s): %v", route, source, plan.Hops)
	}
	up := func(mode api.MeshGatewayMode) api.Upstream {
		return api.Upstream{DestinationName: "api", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: mode}}
	}
	// The upstream's own mode.
	dial(t, up(api.MeshGatewayModeNone), resolve.PathDirect, modes.LayerUpstream, false, false)
	dial(t, up(api.MeshGatewayModeLocal), resolve.PathLocalGateway, modes.LayerUpstream, true, true)
	dial(t, up(api.MeshGatewayModeRemote), resolve.PathRemoteGateway, modes.LayerUpstream, false, true)

	// The lower layers, changed live.
	_, _, err = dc1.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}}, nil)
	require.NoError(t, err)
	dial(t, up(""), resolve.PathRemoteGateway, modes.LayerProxyDefaults, false, true)
	_, _, err = dc1.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web",
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)
	dial(t, up(""), resolve.PathLocalGateway, modes.LayerServiceDefaults, true, true)
	d.Instance.Proxy = &api.AgentServiceConnectProxyConfig{MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeNone}}
	dial(t, up(""), resolve.PathDirect, modes.LayerInstance, false, false)

	// cache in dc2 presents api's certificate: refused, whatever the path.
	sidecartest.ServeNative(t, dc2.Client, "cache", sidecartest.WatchCerts(t, dc2.Client, "api"))
	consultest.WaitFor(t, eventually, "cache to be dialled", func() bool {
		_, _, err = d.Dial(context.Background(), api.Upstream{DestinationName: "cache", Datacenter: "dc2"})
		return err != nil && errors.Is(err, sidecar.ErrWrongIdentity)
	})
	assert.ErrorContains(t, err, "spiffe://"+dc1.TrustDomain()+"/ns/default/dc/dc2/svc/cache")
}

// An Identity matches only its own SPIFFE ID; without a datacenter, any
// datacenter's.
func TestIdentityMatches(t *testing.T) {
	parse := func(s string) *url.URL { u, err := url.Parse(s); require.NoError(t, err); return u }
	id := sidecar.Identity{TrustDomain: "td.consul", Namespace: "default", Datacenter: "dc2", Service: "api"}
	assert.Equal(t, "spiffe://td.consul/ns/default/dc/dc2/svc/api", id.String())
	assert.True(t, id.Matches(parse("spiffe://td.consul/ns/default/dc/dc2/svc/api")))
	for _, other := range []string{
		"spiffe://td.consul/ns/default/dc/dc1/svc/api",
		"spiffe://td.consul/ns/default/dc/dc2/svc/api2",
		"spiffe://other.consul/ns/default/dc/dc2/svc/api",
		"spiffe://td.consul/ns/ops/dc/dc2/svc/api",
		"spiffe://td.consul/ap/p1/ns/default/dc/dc2/svc/api",
		"https://td.consul/ns/default/dc/dc2/svc/api",
	} {
		assert.False(t, id.Matches(parse(other)), other)
	}
	anyDC := sidecar.Identity{TrustDomain: "peer.consul", Partition: "p1", Service: "api"}
	assert.Equal(t, "spiffe://peer.consul/ap/p1/ns/default/dc/*/svc/api", anyDC.String())
	assert.True(t, anyDC.Matches(parse("spiffe://peer.consul/ap/p1/ns/default/dc/east/svc/api")))
	assert.False(t, anyDC.Matches(parse("spiffe://peer.consul/ap/p1/ns/default/dc//svc/api")))
	assert.False(t, anyDC.Matches(parse("spiffe://peer.consul/ap/p1/ns/default/dc/east/svc/api/x")))
}

// The leaf and the roots follow a CA rotation: the new root joins the
// roots, and the leaf is re-issued under it.
func TestCertsFollowCARotation(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	certs := sidecartest.WatchCerts(t, agent.Client, "web")
	roots0, leaf0 := certs.Roots(), certs.Certificate()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	_, err = agent.Client.Connect().CASetConfig(&api.CAConfig{Provider: "consul",
		Config: map[string]any{"PrivateKey": string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the new root in the roots", func() bool { return !certs.Roots().Equal(roots0) })
	verifies := func(cert *tls.Certificate, roots *x509.CertPool) bool {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		require.NoError(t, err)
		_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	}
	require.True(t, verifies(leaf0, roots0))
	consultest.WaitFor(t, eventually, "a leaf issued under the new root", func() bool {
		cert := certs.Certificate()
		return cert != leaf0 && verifies(cert, certs.Roots()) && !verifies(cert, roots0)
	})
	assert.NoError(t, certs.Err())
}

// A Connect-native api serving with AuthorizingServerTLSConfig follows
// the intentions on a real agent: web gets in while no intention says
// otherwise, is refused with the agent's reason once one denies it, while
// billing, which no intention names, still gets in; and gets in again once
// the intention allows it.
func TestIntentionsDecideWhoConnects(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	apiCerts := sidecartest.WatchCerts(t, dc1.Client, "api")
	webCerts := sidecartest.WatchCerts(t, dc1.Client, "web")
	billingCerts := sidecartest.WatchCerts(t, dc1.Client, "billing")
	addr, results := authorizingServer(t, apiCerts.AuthorizingServerTLSConfig(dc1.Client, "api"))
	var lastServerErr error
	// admitted reports whether a client of certs got through, and keeps
	// the server's side of the answer.
	admitted := func(certs *sidecar.Certs) bool {
		err := exchange(t, addr, certs)
		lastServerErr = <-results
		return err == nil && lastServerErr == nil
	}
	intend := func(action api.IntentionAction) {
		t.Helper()
		_, _, err := dc1.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{
			Kind: api.ServiceIntentions, Name: "api",
			Sources: []*api.SourceIntention{{Name: "web", Action: action}},
		}, nil)
		require.NoError(t, err)
	}

	require.True(t, admitted(webCerts), "no intention yet, and the agent's default allows: %v", lastServerErr)

	intend(api.IntentionActionDeny)
	consultest.WaitFor(t, eventually, "web to be refused", func() bool { return !admitted(webCerts) })
	require.ErrorIs(t, lastServerErr, sidecar.ErrNotAuthorized)
	assert.Contains(t, lastServerErr.Error(), "/svc/web may not connect to api")
	assert.Contains(t, lastServerErr.Error(), "intention", "the agent's reason names the intention that matched")
	assert.True(t, admitted(billingCerts), "billing, which no intention names, is refused: %v", lastServerErr)

	intend(api.IntentionActionAllow)
	consultest.WaitFor(t, eventually, "web to be let in again", func() bool { return admitted(webCerts) })
}
