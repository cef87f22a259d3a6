package sidecar_test

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A peer's exported service may be served by the exporting mesh gateway's
// own certificate: Consul's gateway terminates http, http2 and grpc
// exports, and the peering tells the importing side to accept the
// gateway's identity too (PeerMeta.SpiffeID: the service's and
// spiffe://<td>/gateway/mesh/dc/<dc>). The Dialer accepts exactly the
// identities the import lists, and no other.
func TestDialerAcceptsTheIdentitiesAPeerListsForAnImport(t *testing.T) {
	const tdB = "bbbbbbbb-0000-4000-8000-000000000002.consul"
	caA, err := sidecartest.NewCA(config.DefaultTrustDomain)
	require.NoError(t, err)
	caB, err := sidecartest.NewCA(tdB)
	require.NoError(t, err)
	gatewayID := "spiffe://" + tdB + "/gateway/mesh/dc/dc1"
	serveAs := func(spiffeID string) string {
		leaf, err := caB.Leaf(spiffeID)
		require.NoError(t, err)
		return serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}})
	}
	web, err := caA.Certs(sidecar.Identity{Datacenter: "dc1", Service: "web"})
	require.NoError(t, err)
	dial := func(addr string, ids []string) error {
		src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: caA.TrustDomain,
			Peers: map[string]mesh.Peer{"b": {Name: "b", TrustDomain: tdB, NameAtPeer: "a", Gateways: []string{addr},
				Roots: []string{caB.RootPEM()}, Imports: []mesh.ImportedService{{Name: "api", SpiffeIDs: ids}}}}})
		require.NoError(t, err)
		d := &sidecar.Dialer{Source: src, Certs: web, Instance: mesh.Instance{Service: "web", Name: "web-sidecar-proxy"}}
		c, _, err := d.Dial(context.Background(), api.Upstream{DestinationName: "api", DestinationPeer: "b"})
		if err == nil {
			c.Close()
		}
		return err
	}
	listed := []string{"spiffe://" + tdB + "/ns/default/dc/dc1/svc/api", gatewayID}
	assert.NoError(t, dial(serveAs(gatewayID), listed), "the gateway's identity, listed by the peer")
	assert.NoError(t, dial(serveAs("spiffe://"+tdB+"/ns/default/dc/dc1/svc/api"), listed), "the service's own")
	err = dial(serveAs(gatewayID), nil)
	assert.True(t, errors.Is(err, sidecar.ErrWrongIdentity), "without the list, the service's identity only: %v", err)
	err = dial(serveAs("spiffe://"+tdB+"/gateway/mesh/dc/dc9"), listed)
	assert.True(t, errors.Is(err, sidecar.ErrWrongIdentity), "another gateway: %v", err)
}
