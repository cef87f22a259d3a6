package consultest

import (
	"crypto/tls"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A production-like agent: ACLs with default deny, and only TLS ports open.
// Plain HTTP and HTTPS without a client certificate are refused; the
// agent's own client, a token made by policy, the consul command run with
// Env, and a TLS handshake on the gRPC TLS port all work.
func TestTLSOnlyAgent(t *testing.T) {
	agentTLS := NewTLS(t)
	a := Start(t, Options{ACL: true, TLS: agentTLS, TLSOnly: true})
	require.Empty(t, a.HTTPAddr, "no plaintext HTTP")
	require.Empty(t, a.GRPC, "no plaintext gRPC")

	// Plain HTTP to the HTTPS port.
	resp, err := http.Get("http://" + a.HTTPSAddr + "/v1/status/leader")
	if err == nil {
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "plain HTTP is not served")
	}
	// HTTPS without a client certificate.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: agentTLS.CertPool()}}}
	resp, err = noCert.Get("https://" + a.HTTPSAddr + "/v1/status/leader")
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "the agent requires a client certificate")

	// A token made by policy can do what its rules say and no more.
	token := a.Token(t, "nodes-only", `node_prefix "" { policy = "read" }`)
	c := a.ClientWithToken(token)
	nodes, _, err := c.Catalog().Nodes(nil)
	require.NoError(t, err)
	assert.NotEmpty(t, nodes)
	_, _, err = c.ACL().PolicyList(nil)
	var se api.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusForbidden, se.Code)

	// The consul command, with the environment a program gets.
	cmd := exec.Command(Binary(t), "catalog", "nodes")
	cmd.Env = a.Env(token)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), a.NodeName)
	for _, kv := range cmd.Env {
		if strings.HasPrefix(kv, "CONSUL_GRPC_ADDR=") {
			assert.Equal(t, "CONSUL_GRPC_ADDR=https://"+a.GRPCTLS, kv)
		}
	}

	// The gRPC TLS port speaks TLS with the agent's certificate.
	conn, err := tls.Dial("tcp", a.GRPCTLS, &tls.Config{RootCAs: agentTLS.CertPool(), NextProtos: []string{"h2"}})
	require.NoError(t, err)
	conn.Close()
}
