package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func seed(name string) string { return filepath.Join("..", "..", "config", "testdata", "seeds", name) }

var topology = filepath.Join("..", "..", "resolve", "testdata", "topology.hcl")

func explainJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	require.Equal(t, 0, code, errOut.String())
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var row map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &row), line)
		rows = append(rows, row)
	}
	return rows
}

func TestExplainSeedUpstreams(t *testing.T) {
	rows := explainJSON(t, seed("upstreams.yaml"), seed("global-local.hcl"))
	require.Len(t, rows, 3)
	for _, key := range []string{"service", "upstream", "datacenter", "mode", "source", "sni", "dial", "hops", "warnings"} {
		assert.Contains(t, rows[0], key)
	}
	assert.Equal(t, "web", rows[0]["service"])
	assert.Equal(t, "api", rows[0]["upstream"])
	assert.Equal(t, "dc1", rows[0]["datacenter"])
	assert.Equal(t, "remote", rows[0]["mode"])
	assert.Equal(t, "upstream", rows[0]["source"])
	assert.Equal(t, "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", rows[0]["sni"])
	assert.Equal(t, []any{}, rows[0]["dial"], "no topology: addresses unknown, an empty list")
	assert.Equal(t, "local", rows[1]["mode"])
	assert.Equal(t, "none", rows[2]["mode"])
}

func TestExplainWithTopologyAndFlags(t *testing.T) {
	rows := explainJSON(t, "-datacenter", "dc1", seed("instance-remote.yaml"), topology)
	require.Len(t, rows, 1)
	assert.Equal(t, "secondary", rows[0]["datacenter"])
	assert.Equal(t, "instance", rows[0]["source"])
	assert.Equal(t, []any{"127.0.2.105:8443"}, rows[0]["dial"])
	assert.Equal(t, []any{"web sidecar", "gateway secondary", "api secondary"}, rows[0]["hops"])

	rows = explainJSON(t, "-datacenter", "secondary", "-trust-domain", "abc.consul", seed("instance-remote.yaml"))
	assert.Equal(t, "direct", rows[0]["route"], "secondary is now the local datacenter")
	assert.Equal(t, "api.default.secondary.internal.abc.consul", rows[0]["sni"])
}

func TestExplainText(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"-format", "text", seed("upstreams.hcl"), topology}, &out, &errOut), errOut.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 4)
	assert.True(t, strings.HasPrefix(lines[0], "SERVICE"))
	assert.Equal(t, strings.Index(lines[0], "MODE"), strings.Index(lines[1], "remote"), "columns are aligned")
	assert.Contains(t, lines[3], "logging")
}

func TestExplainBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.hcl")
	require.NoError(t, os.WriteFile(bad, []byte("service {\n  name = \"web\"\n  proxy { mesh_gatway { mode = \"local\" } }\n  conect {}\n}\n"), 0o644))
	typo := filepath.Join("..", "..", "config", "testdata", "bad", "mesh-peering-typo.yaml")
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{bad, typo}, []string{`bad.hcl:3`, `"mesh_gatway" (did you mean "mesh_gateway"?)`, `bad.hcl:4`, `mesh-peering-typo.yaml:2`, `did you mean "Peering"?`}},
		{[]string{filepath.Join(dir, "missing.hcl")}, []string{"missing.hcl"}},
		{[]string{"-datacenter", "dc9", topology, seed("upstreams.hcl")}, []string{`-datacenter "dc9" disagrees`}},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		assert.Equal(t, 1, run(c.args, &out, &errOut))
		assert.Empty(t, out.String(), "nothing on stdout on bad input")
		for _, w := range c.want {
			assert.Contains(t, errOut.String(), w)
		}
	}
	var out, errOut bytes.Buffer
	assert.Equal(t, 2, run([]string{"-format", "xml", topology}, &out, &errOut))
	assert.Equal(t, 2, run(nil, &out, &errOut))
}

// -consul plans from a live agent's registrations and config entries, with
// the same output as from files.
func TestExplainConsul(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web", Port: 8080}))
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
		Name: "web-sidecar-proxy", Port: 21000, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web",
			Upstreams: []api.Upstream{{DestinationName: "api", Datacenter: "dc2", LocalBindPort: 10000}}}}))
	_, _, err := agent.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)

	rows := explainJSON(t, "-consul")
	require.Len(t, rows, 1)
	assert.Equal(t, "web", rows[0]["service"])
	assert.Equal(t, "api", rows[0]["upstream"])
	assert.Equal(t, "dc2", rows[0]["datacenter"])
	assert.Equal(t, "local", rows[0]["mode"])
	assert.Equal(t, "proxy-defaults", rows[0]["source"])
	assert.Equal(t, "api.default.dc2.internal."+agent.TrustDomain(), rows[0]["sni"])

	var out, errOut bytes.Buffer
	assert.Equal(t, 1, run([]string{"-consul", "extra.hcl"}, &out, &errOut))
	assert.Empty(t, out.String())
}

// explain shows what a service-resolver does to an upstream: the redirect's
// target and the default subset, in the table and in the JSON.
func TestExplainServiceResolvers(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "resolvers.hcl"), []byte(`Kind = "service-resolver"
Name = "api"
Redirect { Service = "api-v2" }
`), 0o600))
	rows := explainJSON(t, dir, seed("upstreams.yaml"))
	assert.Equal(t, "api-v2", rows[0]["target"])
	assert.Equal(t, "api-v2.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", rows[0]["sni"])

	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"-format", "text", dir, seed("upstreams.yaml")}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "api => api-v2")
}

var federationTopology = filepath.Join("..", "..", "routing", "testdata", "dc1.hcl")

// -route shows how a gateway with the files routes each name: server names
// of WAN federation as their own kind, services and refusals beside them.
func TestExplainRoutes(t *testing.T) {
	rows := explainJSON(t, "-route", "node-dc2.server.dc2.consul", "-route", "DC1-Server-1.server.dc1.consul",
		"-route", "server.dc9.consul", "-route", "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul",
		"-route", "www.example.com", federationTopology)
	require.Len(t, rows, 5)
	assert.Equal(t, map[string]any{"server_name": "node-dc2.server.dc2.consul", "kind": "wan-federation", "route": "servers dc2",
		"targets": []any{"127.0.2.105:8443"}, "remote": true, "balance": "round_robin"}, rows[0])
	assert.Equal(t, map[string]any{"server_name": "DC1-Server-1.server.dc1.consul", "kind": "wan-federation", "route": "server dc1-server-1",
		"targets": []any{"127.0.1.2:8300"}, "balance": "round_robin"}, rows[1], "names are matched as the gateway reads them, lower-case")
	assert.Equal(t, "unknown-datacenter", rows[2]["rejected"])
	assert.Contains(t, rows[2]["error"], `"dc9"`, "the refusal names the datacenter")
	assert.NotContains(t, rows[2], "targets")
	assert.Equal(t, "service", rows[3]["kind"])
	assert.Equal(t, []any{"127.0.1.10:21000"}, rows[3]["targets"])
	assert.Equal(t, "foreign-trust-domain", rows[4]["rejected"])

	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"-format", "text", "-route", "server.dc1.consul", federationTopology}, &out, &errOut), errOut.String())
	assert.Equal(t, "SERVER NAME        KIND            ROUTE        TARGETS                                       BALANCE      LIMITS  REFUSED\n"+
		"server.dc1.consul  wan-federation  servers dc1  127.0.1.2:8300,127.0.1.3:8300,127.0.1.4:8300  round_robin  -       -\n", out.String())

	// Without a wan_federation block the gateway takes no part: refused.
	rows = explainJSON(t, "-route", "node-dc2.server.dc2.consul", topology)
	assert.Equal(t, "wan-federation-off", rows[0]["rejected"])

	errOut.Reset()
	assert.Equal(t, 2, run([]string{"-wan-federation", "-route", "x", federationTopology}, &out, &errOut))
	assert.Contains(t, errOut.String(), "-wan-federation goes with -consul and -route")
}

// -route shows the policy in force, the weights and the limits, from the
// resolver, the instances and the gateway's own service-defaults (named by
// -gateway-service).
func TestExplainRoutePolicyAndLimits(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"t.hcl":   "topology {\n  services = [{ name = \"api\", addresses = [\"127.0.0.1:1\", \"127.0.0.1:2\"], weights = [3, 1] }]\n}\n",
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nLoadBalancer { Policy = \"least_request\" }\n",
		"gw.hcl":  "Kind = \"service-defaults\"\nName = \"edge\"\nUpstreamConfig { Defaults { Limits { MaxConnections = 5 } } }\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600))
	}
	name := "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
	rows := explainJSON(t, "-route", name, "-gateway-service", "edge", dir)
	assert.Equal(t, "least_request choice_count 2", rows[0]["balance"])
	assert.Equal(t, []any{3.0, 1.0}, rows[0]["weights"])
	assert.Equal(t, map[string]any{"MaxConnections": 5.0}, rows[0]["limits"])
	rows = explainJSON(t, "-route", name, dir)
	assert.NotContains(t, rows[0], "limits", "mesh-gateway's service-defaults set none")
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"-format", "text", "-gateway-service", "edge", "-route", name, dir}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "least_request choice_count 2 weights 3:1  MaxConnections=5")
}

// The discovery chain: the failover target of a service-resolver, with its
// own path and health, in JSON and as a row of its own in the table.
func TestExplainFailoverChain(t *testing.T) {
	dir := filepath.Join("..", "..", "resolve", "testdata", "failover")
	rows := explainJSON(t, dir)
	require.Len(t, rows, 1)
	assert.Equal(t, 1.0, rows[0]["healthy"])
	require.Len(t, rows[0]["failover"], 1)
	f := rows[0]["failover"].([]any)[0].(map[string]any)
	assert.Equal(t, "dc2", f["datacenter"])
	assert.Equal(t, "local-gateway", f["route"])
	assert.Equal(t, []any{"127.0.1.5:8443"}, f["dial"])
	assert.Equal(t, "api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul", f["sni"])
	assert.Equal(t, 1.0, f["healthy"])
	assert.Contains(t, rows[0]["warnings"], `mode "local" from upstream is ignored for the primary target: api is in the local datacenter and partition`)

	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"-format", "text", dir}, &out, &errOut), errOut.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	assert.Regexp(t, `^web +api +dc1 +local +upstream +direct +1 +127.0.1.10:21000 +web sidecar -> api dc1 `, lines[1])
	assert.Regexp(t, `^- +failover 1: api dc2 +dc2 +local +upstream +local-gateway +1 +127.0.1.5:8443 +web sidecar -> gateway dc1 -> gateway dc2 -> api dc2 +-$`, lines[2])
}

// -consul is safe to run in a loop: each run closes what it opens, so the
// connections the agent holds from this address stay few however many
// runs there are (the agent answers 429 to every client of an address past
// 200, gateways included).
func TestExplainConsulInALoopLeavesNoConnections(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
		Name: "web-sidecar-proxy", Port: 21000, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web",
			Upstreams: []api.Upstream{{DestinationName: "api", LocalBindPort: 10000}}}}))
	before, err := agent.OpenHTTPConns()
	require.NoError(t, err)
	const runs = 30
	most := 0
	for i := range runs {
		args := []string{"-consul"}
		if i%2 == 1 {
			args = []string{"-consul", "-route", "api.default.dc1.internal." + agent.TrustDomain()}
		}
		var out, errOut bytes.Buffer
		require.Equal(t, 0, run(args, &out, &errOut), errOut.String())
		n, err := agent.OpenHTTPConns()
		require.NoError(t, err)
		most = max(most, n)
	}
	t.Logf("agent's connections on its HTTP port: %d before, at most %d during %d runs", before, most, runs)
	// What one run holds while it runs is gone once it returns: the agent
	// closes its end within a moment.
	consultest.WaitFor(t, time.Minute, "the agent's connections back to where they were", func() bool {
		n, err := agent.OpenHTTPConns()
		return err == nil && n <= before
	})
	assert.LessOrEqual(t, most, before+2, "runs leave no connection open on the agent")
}
