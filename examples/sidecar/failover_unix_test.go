//go:build unix

package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/routing/routingtest"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The binary fails over along a service-resolver's chain: while dc1's api
// is healthy its connections stay there; once dc1's api is critical they go
// to dc2's through the gateways, the log says so, and the access log and
// the metrics name the target that carried each connection; once dc1's api
// passes again, they come back.
func TestSidecarFailsOverAndSaysWhichTarget(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	routingtest.StartGateway(t, dc1.Client)
	gw2 := routingtest.StartGateway(t, dc2.Client)
	api1 := sidecartest.StartNative(t, dc1.Client, "api", sidecartest.WatchCerts(t, dc1.Client, "api"))
	api2 := sidecartest.StartNative(t, dc2.Client, "api", sidecartest.WatchCerts(t, dc2.Client, "api"))
	_, _, err := dc1.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc2"}}}}, nil)
	require.NoError(t, err)
	bind := freePort(t)
	require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "web-sidecar-proxy", Name: "web-sidecar-proxy", Port: freePort(t),
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", Upstreams: []api.Upstream{{
			DestinationName: "api", LocalBindPort: bind, MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}}}}))
	t.Setenv("CONSUL_HTTP_ADDR", dc1.HTTPAddr)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	adminAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logs := startSidecar(t, "-proxy-id", "web-sidecar-proxy", "-access-log", accessLog, "-admin", adminAddr)

	addr := "127.0.0.1:" + strconv.Itoa(bind)
	echo := func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		return string(got) == "x"
	}
	require.True(t, echo(), logs.String())
	assert.Contains(t, logs.String(), `chain="api dc1 direct, api dc2 local-gateway"`)
	before1, before2 := api1.Accepted(), api2.Accepted()
	require.True(t, echo())
	assert.Equal(t, 1, api1.Accepted()-before1, "healthy: at dc1's api")
	assert.Equal(t, 0, api2.Accepted()-before2)

	api1.SetHealth(t, api.HealthCritical)
	consultest.WaitFor(t, eventually, "a connection to fail over", func() bool {
		return echo() && strings.Contains(logs.String(), "upstream failed over")
	})
	assert.Contains(t, logs.String(), `msg="sidecar: upstream failed over" upstream=api target="api dc2" passed_over="api dc1: no healthy instances"`)
	before1, before2 = api1.Accepted(), api2.Accepted()
	require.True(t, echo())
	assert.Equal(t, 0, api1.Accepted()-before1, "critical: none at dc1's api")
	assert.Equal(t, 1, api2.Accepted()-before2, "at dc2's api")
	consultest.WaitFor(t, eventually, "the access log to name the failover target", func() bool {
		b, _ := os.ReadFile(accessLog)
		return strings.Contains(string(b), `target="api dc2" target_index=1 route=local-gateway`)
	})
	b, err := os.ReadFile(accessLog)
	require.NoError(t, err)
	assert.Contains(t, string(b), `passed_over="api dc1: no healthy instances"`)
	assert.Contains(t, string(b), `target="api dc1" target_index=0 route=direct`)
	metrics := scrapeText(t, "http://"+adminAddr+"/metrics")
	assert.Contains(t, metrics, `meshgate_sidecar_upstream_connections_total{outcome="forwarded",target="api dc2",upstream="api"}`)
	assert.Contains(t, metrics, `meshgate_sidecar_upstream_connections_total{outcome="forwarded",target="api dc1",upstream="api"}`)
	// dc2's gateway, which the chain's failover target leads to, probed
	// (-probe-interval, on by default) and up.
	up := `meshgate_remote_gateway_up{address="` + gw2.Addr + `",location="dc2"} 1`
	consultest.WaitFor(t, eventually, "dc2's gateway probed and up", func() bool {
		return strings.Contains(scrapeText(t, "http://"+adminAddr+"/metrics"), up)
	})

	api1.SetHealth(t, api.HealthPassing)
	consultest.WaitFor(t, eventually, "connections to come back", func() bool {
		return echo() && strings.Contains(logs.String(), "upstream back on its primary target")
	})
}

func scrapeText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}
