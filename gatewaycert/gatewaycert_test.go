package gatewaycert_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gatewaycert"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/registration"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventually bounds a wait for the agent.
const eventually = 60 * time.Second

// A mesh gateway's own certificate, which the agent's HTTP API does not
// issue, is read over xDS once the gateway serves an http export to a peer:
// it names the gateway's identity and chains to the cluster's roots.
func TestGatewayCertsComeFromTheAgentsXDS(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	reg, err := registration.Register(context.Background(), a.Client, registration.Gateway{Address: "127.0.0.1:9"})
	require.NoError(t, err)
	t.Cleanup(func() { reg.Deregister(context.Background()) })
	certs, err := gatewaycert.Watch(context.Background(), a.Client, gatewaycert.Options{GRPCAddr: a.GRPC, GatewayID: "mesh-gateway"})
	require.NoError(t, err)
	t.Cleanup(certs.Close)
	assert.Nil(t, certs.Certificate(), "no certificate before an L7 export")
	require.ErrorContains(t, certs.Err(), "once the gateway serves an export to a peer")

	// A peering for the export to name (the peer need not connect).
	_, _, err = a.Client.Peerings().GenerateToken(context.Background(), api.PeeringGenerateTokenRequest{PeerName: "cluster-x"}, nil)
	require.NoError(t, err)
	_, _, err = a.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil)
	require.NoError(t, err)
	require.NoError(t, a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "api", Port: 9, Connect: &api.AgentServiceConnect{Native: true}}))
	_, _, err = a.Client.ConfigEntries().Set(&api.ExportedServicesConfigEntry{Name: "default",
		Services: []api.ExportedService{{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "cluster-x"}}}}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the gateway's certificate", func() bool { return certs.Certificate() != nil })
	require.NoError(t, certs.Err())
	leaf, err := x509.ParseCertificate(certs.Certificate().Certificate[0])
	require.NoError(t, err)
	require.Len(t, leaf.URIs, 1)
	assert.Equal(t, "spiffe://"+a.TrustDomain()+"/gateway/mesh/dc/dc1", leaf.URIs[0].String())
	inter := x509.NewCertPool()
	for _, der := range certs.Certificate().Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: certs.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	assert.NoError(t, err, "the gateway's leaf chains to the cluster's roots")
}
