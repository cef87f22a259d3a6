package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ErrNotAuthorized is wrapped by the handshake error of a client whose
// service Consul's intentions do not allow to connect.
var ErrNotAuthorized = errors.New("sidecar: the intentions do not allow this client")

// AuthorizingServerTLSConfig is ServerTLSConfig that also enforces Consul's
// intentions for service, as a sidecar does for the service behind it: once
// the client's chain verifies, the handshake asks the agent behind client
// whether the client's SPIFFE ID may connect to service
// (/v1/agent/connect/authorize, the question Consul's own Connect-native
// library asks). The agent answers from its cache of the intentions, which
// it keeps current, so a changed intention applies to the next handshake. A
// client that may not connect fails the handshake with an error wrapping
// ErrNotAuthorized and the agent's reason; so does every client while the
// agent cannot be asked (no answer is no).
//
// With TLS 1.3 the client learns of the refusal on its first read or write.
func (c *Certs) AuthorizingServerTLSConfig(client *api.Client, service string) *tls.Config {
	cfg := c.ServerTLSConfig()
	agent := client.Agent()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return authorize(agent, service, cs.PeerCertificates)
	}
	return cfg
}

// authorize asks agent whether the client whose chain is peer may connect
// to service.
func authorize(agent *api.Agent, service string, peer []*x509.Certificate) error {
	if len(peer) == 0 {
		return errors.New("sidecar: the client sent no certificate")
	}
	leaf := peer[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return fmt.Errorf("sidecar: the client's certificate names %v, not one SPIFFE ID", leaf.URIs)
	}
	id := leaf.URIs[0].String()
	resp, err := agent.ConnectAuthorize(&api.AgentAuthorizeParams{
		Target: service, ClientCertURI: id, ClientCertSerial: colonHex(leaf.SerialNumber)})
	if err != nil {
		return fmt.Errorf("sidecar: asking the agent whether %s may connect to %s: %w", id, service, err)
	}
	if !resp.Authorized {
		return fmt.Errorf("%w: %s may not connect to %s: %s", ErrNotAuthorized, id, service, resp.Reason)
	}
	return nil
}

// colonHex writes a certificate's serial number as Consul does: its bytes
// in lower-case hex, joined by colons.
func colonHex(n *big.Int) string {
	var b strings.Builder
	for i, x := range n.Bytes() {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02x", x)
	}
	return b.String()
}
