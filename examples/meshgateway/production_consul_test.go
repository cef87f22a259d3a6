package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/agenterr"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// documentedPolicy is the policy Consul's docs give a mesh gateway.
const documentedPolicy = `
service "mesh-gateway" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
`

// useAgentEnv sets the CONSUL_ variables of env (consultest.Agent.Env)
// for the test and empties the others.
func useAgentEnv(t *testing.T, env []string) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CONSUL_") {
			t.Setenv(k, "")
		}
	}
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CONSUL_") {
			t.Setenv(k, v)
		}
	}
}

// routes reports whether a ClientHello for name sent to the gateway at gw
// reaches the backend whose connections reached receives, within a
// couple of seconds (a caller polls).
func routes(gw, name string, reached <-chan struct{}) bool {
	c, err := net.DialTimeout("tcp", gw, 2*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	go tlsClient(c, name).Handshake()
	select {
	case <-reached:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

// A production agent: ACLs on with default deny, only TLS ports open
// (https with verify_incoming and client certificates, grpc_tls; http and
// grpc closed), a secondary datacenter WAN-joined. Every subtest shares
// the two agents. The gateway reaches the agent over HTTPS from the
// CONSUL_* environment Consul's own tools read, with exactly the token
// Consul documents for a mesh gateway, given by -token-file or -token.
func TestProductionAgent(t *testing.T) {
	started := time.Now()
	agentTLS := consultest.NewTLS(t)
	dc1 := consultest.Start(t, consultest.Options{ACL: true, TLS: agentTLS, TLSOnly: true})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1, ACL: true, TLS: agentTLS, TLSOnly: true})
	td := dc1.TrustDomain()
	documented := dc1.Token(t, "documented", documentedPolicy)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(documented+"\n"), 0o600))
	useAgentEnv(t, dc1.Env("")) // no token in the environment: the flags give it
	consultest.WaitFor(t, time.Minute, "dc1 to know dc2", func() bool {
		dcs, err := dc1.Client.Catalog().Datacenters()
		return err == nil && len(dcs) == 2
	})
	t.Logf("two TLS-only agents with ACLs ready in %s", time.Since(started).Round(100*time.Millisecond))

	webReached := meshService(t, dc1, "web")
	// dc2's mesh gateway, where dc1's gateway sends dc2's names.
	dc2Addr, dc2Reached := echoBackend(t)
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindMeshGateway, Name: "mesh-gateway",
		Address: "127.0.0.1", Port: portOf(dc2Addr), TaggedAddresses: map[string]api.ServiceAddress{"wan": {Address: "127.0.0.1", Port: portOf(dc2Addr)}}}))

	t.Run("documented token", func(t *testing.T) {
		gw, logs, stop := start(t, "-consul", "-token-file", tokenFile)
		svc, _, err := dc1.Client.Agent().Service("mesh-gateway", nil)
		require.NoError(t, err, logs.String())
		assert.Equal(t, "127.0.0.1", svc.Address)
		consultest.WaitFor(t, time.Minute, "the gateway's check to pass", func() bool {
			st, _, err := dc1.Client.Agent().AgentHealthServiceByID("mesh-gateway")
			return err == nil && st == api.HealthPassing
		})
		consultest.WaitFor(t, time.Minute, "a local service to route", func() bool {
			return routes(gw, sni.ServiceSNI("web", "", "", "", "dc1", td), webReached)
		})
		consultest.WaitFor(t, time.Minute, "another datacenter's name to route to its gateway", func() bool {
			return routes(gw, sni.ServiceSNI("api", "", "", "", "dc2", td), dc2Reached)
		})
		require.NoError(t, stop())
		services, err := dc1.Client.Agent().Services()
		require.NoError(t, err)
		assert.NotContains(t, services, "mesh-gateway", "deregistered on shutdown")
		out := logs.String()
		assert.NotContains(t, out, documented, "the token is never printed")
		assert.NotContains(t, out, "level=WARN")
		assert.NotContains(t, out, "level=ERROR")
		// Nothing was denied, and no agent-only endpoint was asked.
		assert.NotContains(t, dc1.Log(), "Permission denied")
		assert.NotContains(t, dc1.Log(), "/v1/agent/self")
	})

	t.Run("token flag and peering asked for without peering:read", func(t *testing.T) {
		// -token over the environment's token, which is wrong.
		t.Setenv(api.HTTPTokenEnvName, "00000000-0000-4000-8000-000000000000")
		gw, logs, stop := start(t, "-consul", "-token", documented, "-peering", "on")
		defer stop()
		consultest.WaitFor(t, time.Minute, "a local service to route", func() bool {
			return routes(gw, sni.ServiceSNI("web", "", "", "", "dc1", td), webReached)
		})
		out := logs.String()
		assert.Contains(t, out, `level=WARN`)
		assert.Contains(t, out, `GET /v1/peerings (listing peerings): add peering = \"read\" to the token's policy`, "one warning names the endpoint and the rule")
		assert.NotContains(t, out, documented)
	})

	t.Run("each documented rule removed", func(t *testing.T) {
		for _, c := range []struct{ rule, endpoint string }{
			{`service "mesh-gateway" { policy = "write" }`, "PUT /v1/agent/service/register"},
			{`service_prefix "" { policy = "read" }`, "GET /v1/health/service/consul"},
			{`node_prefix "" { policy = "read" }`, "GET /v1/health/service/consul"},
		} {
			token := dc1.Token(t, "without-"+strings.Fields(c.rule)[0], strings.Replace(documentedPolicy, c.rule, "", 1))
			var logs strings.Builder
			err := run(t.Context(), []string{"-consul", "-listen", "127.0.0.1:0", "-token", token}, &logs, nil)
			require.ErrorIs(t, err, consulview.ErrPermissionDenied, c.rule)
			var pe *agenterr.PermissionError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, c.endpoint, pe.Endpoint, c.rule)
			assert.ErrorContains(t, err, "add ", c.rule)
			assert.ErrorContains(t, err, c.rule, "names the rule to add")
			assert.NotContains(t, err.Error()+logs.String(), token, "the token is never printed")
		}
	})

	t.Run("L7 termination says it needs mesh:write", func(t *testing.T) {
		// The certificate is read from the gRPC TLS port
		// (CONSUL_GRPC_ADDR=https://..., CONSUL_GRPC_CACERT).
		_, logs, stop := start(t, "-consul", "-token-file", tokenFile, "-l7-exports", "terminate")
		defer stop()
		assert.Contains(t, logs.String(), `-l7-exports terminate: the token lacks mesh:write`)
		assert.Contains(t, logs.String(), `add mesh = \"write\" to the token's policy`)
		assert.Contains(t, logs.String(), `grpc_addr=https://`+dc1.GRPCTLS)
	})

	t.Run("namespace and partition on Consul CE", func(t *testing.T) {
		for flag, want := range map[string]string{
			"-namespace": "Namespaces are a Consul Enterprise feature",
			"-partition": "Partitions are a Consul Enterprise feature",
		} {
			err := run(t.Context(), []string{"-consul", "-listen", "127.0.0.1:0", "-token-file", tokenFile, flag, "team-a"}, &strings.Builder{}, nil)
			require.ErrorIs(t, err, agenterr.ErrEnterpriseOnly, flag)
			assert.ErrorContains(t, err, want, flag)
			assert.NotContains(t, err.Error(), "\n", "one line")
		}
	})

	t.Run("instances on one agent", func(t *testing.T) {
		t.Setenv(api.HTTPTokenFileEnvName, tokenFile)
		instancesOnOneAgent(t, dc1)
	})

	t.Run("HTTPS without a client certificate", func(t *testing.T) {
		// The agent's verify_incoming refuses the connection: the
		// gateway fails at start, naming the request, and does not hang.
		t.Setenv(api.HTTPClientCert, "")
		t.Setenv(api.HTTPClientKey, "")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		err := run(ctx, []string{"-consul", "-listen", "127.0.0.1:0", "-token-file", tokenFile}, &strings.Builder{}, nil)
		require.Error(t, err)
		assert.False(t, errors.Is(err, context.DeadlineExceeded), "an error at once: %v", err)
		assert.ErrorContains(t, err, "https://"+dc1.HTTPSAddr+"/v1/")
	})
}
