package sidecar_test

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// authorizingServer serves config on loopback: each connection's handshake
// error (nil once it passed) goes to the channel, and a connection that
// passed gets one byte back for each it sends.
func authorizingServer(t *testing.T, config *tls.Config) (string, <-chan error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", config)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	results := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				err := c.(*tls.Conn).Handshake()
				results <- err
				if err == nil {
					var b [1]byte
					if _, err := c.Read(b[:]); err == nil {
						c.Write(b[:])
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), results
}

// exchange connects to addr as certs' service, sends a byte and reads one
// back: the error a refused client sees. The server's own identity is not
// what these tests check, so the client does not verify it.
func exchange(t *testing.T, addr string, certs *sidecar.Certs) error {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.Certificate(), nil
		},
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	var b [1]byte
	_, err = c.Read(b[:])
	return err
}

// With no agent to ask, no client gets through, and the server's error says
// whom it could not ask about.
func TestAuthorizingRefusesWhenTheAgentCannotBeAsked(t *testing.T) {
	ca, err := sidecartest.NewCA(config.DefaultTrustDomain)
	require.NoError(t, err)
	apiCerts, err := ca.Certs(sidecar.Identity{TrustDomain: ca.TrustDomain, Datacenter: "dc1", Service: "api"})
	require.NoError(t, err)
	webCerts, err := ca.Certs(sidecar.Identity{TrustDomain: ca.TrustDomain, Datacenter: "dc1", Service: "web"})
	require.NoError(t, err)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	agentAddr := closed.Addr().String()
	closed.Close()
	client, err := api.NewClient(&api.Config{Address: agentAddr})
	require.NoError(t, err)

	addr, results := authorizingServer(t, apiCerts.AuthorizingServerTLSConfig(client, "api"))
	assert.Error(t, exchange(t, addr, webCerts), "a client got through with no agent to ask")
	serverErr := <-results
	require.Error(t, serverErr)
	assert.Contains(t, serverErr.Error(), "asking the agent whether spiffe://"+ca.TrustDomain+"/ns/default/dc/dc1/svc/web may connect to api")
	assert.False(t, errors.Is(serverErr, sidecar.ErrNotAuthorized), "the agent gave no answer, so no intention refused it")

	// The same server without intentions lets the same client in.
	addr, results = authorizingServer(t, apiCerts.ServerTLSConfig())
	assert.NoError(t, exchange(t, addr, webCerts))
	assert.NoError(t, <-results)
}
