package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// freePort returns a loopback port nothing listens on at the moment.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// echoBackend is a plain TCP echo server; it returns its address and a
// channel that receives one value per connection it accepts.
func echoBackend(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { backend.Close() })
	reached := make(chan struct{}, 16)
	go echo.Serve(backend, func() { reached <- struct{}{} })
	return backend.Addr().String(), reached
}

// meshService registers service name with a sidecar whose address is an
// echoBackend, and returns the backend's channel.
func meshService(t *testing.T, agent *consultest.Agent, name string) <-chan struct{} {
	t.Helper()
	addr, reached := echoBackend(t)
	port := portOf(addr)
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: name, Port: port}))
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
		Name: name + "-sidecar-proxy", Address: "127.0.0.1", Port: port, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name}}))
	return reached
}

// portOf returns the port of a "host:port".
func portOf(hostport string) int {
	_, port, _ := net.SplitHostPort(hostport)
	p, _ := strconv.Atoi(port)
	return p
}

// reaches sends a ClientHello for name to addr and reports whether reached
// then receives a connection. The backend is not TLS, so the handshake
// itself fails after being forwarded.
func reaches(t *testing.T, addr, name string, reached <-chan struct{}) bool {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	tc := tlsClient(c, name)
	go tc.Handshake()
	select {
	case <-reached:
		return true
	case <-time.After(15 * time.Second):
		return false
	}
}

// The proxy-defaults entry's Config reaches a registering gateway through
// the agent: connect_timeout_ms sets the dial bound (a flag overrides it),
// envoy_gateway_bind_addresses adds a listener that routes like the first,
// and options it cannot apply are named in the log.
func TestConsulProxyDefaultsOptions(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	extraPort := freePort(t)
	extra := net.JoinHostPort("127.0.0.1", strconv.Itoa(extraPort))
	_, _, err := agent.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		Config: map[string]any{
			"connect_timeout_ms":                        1500,
			"envoy_gateway_bind_addresses":              map[string]any{"extra": map[string]any{"address": "127.0.0.1", "port": extraPort}},
			"envoy_gateway_remote_tcp_enable_keepalive": true,
			"protocol":          "tcp",
			"conect_timeout_ms": 5,
		}}, nil)
	require.NoError(t, err)
	reached := meshService(t, agent, "web")
	name := sni.ServiceSNI("web", "", "", "", "dc1", agent.TrustDomain())

	gw, logs, stop := start(t, "-consul")
	assert.True(t, reaches(t, gw, name, reached), "the default listener routes:\n%s", logs.String())
	assert.True(t, reaches(t, extra, name, reached), "the bind address routes too:\n%s", logs.String())
	require.NoError(t, stop())
	out := logs.String()
	assert.Contains(t, out, "connect_timeout=1.5s")
	assert.Contains(t, out, "remote_keepalive=true")
	assert.Contains(t, out, `listen=`+gw+","+extra)
	assert.Regexp(t, `level=INFO msg="meshgateway: Proxy.Config options that mean nothing without Envoy are ignored" options=\[protocol\]`, out)
	assert.Regexp(t, `level=WARN msg="meshgateway: Proxy.Config options Consul does not define are ignored" options=\[conect_timeout_ms\]`, out)

	_, logs, stop = start(t, "-consul", "-connect-timeout", "2s")
	require.NoError(t, stop())
	assert.Contains(t, logs.String(), "connect_timeout=2s", "the flag overrides connect_timeout_ms")

}

// With -proxy-id the gateway serves as a gateway registered by someone
// else, with its Proxy.Config (the agent does not check a registration's
// own options, so bad values are meshgate's to refuse).
func TestConsulProxyIDServesTheRegistration(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	reached := meshService(t, agent, "web")
	name := sni.ServiceSNI("web", "", "", "", "dc1", agent.TrustDomain())
	at := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	register := func(id string, port int, tagged map[string]api.ServiceAddress, config map[string]any) {
		require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindMeshGateway, ID: id, Name: "edge", Address: "127.0.0.1", Port: port,
			TaggedAddresses: tagged, Proxy: &api.AgentServiceConnectProxyConfig{Config: config},
		}))
	}

	// no_default_bind: only the bind addresses listen.
	own, extra := freePort(t), freePort(t)
	register("gw-1", own, nil, map[string]any{
		"envoy_gateway_no_default_bind": true,
		"envoy_gateway_bind_addresses":  map[string]any{"extra": map[string]any{"address": "127.0.0.1", "port": extra}},
	})
	_, logs, stop := start(t, "-consul", "-proxy-id", "gw-1")
	assert.True(t, reaches(t, at(extra), name, reached), "the bind address routes:\n%s", logs.String())
	c, err := net.DialTimeout("tcp", at(own), 5*time.Second)
	if err == nil {
		c.Close()
	}
	assert.Error(t, err, "no listener on the registration's own port")
	require.NoError(t, stop())
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.Contains(t, services, "gw-1", "a gateway it did not register is left registered")

	// bind_tagged_addresses (by its older name): each tagged address listens,
	// including lan_ipv4 and wan_ipv4, which the agent adds with the
	// registration's own address, as for Consul's gateway.
	own, lan, wan := freePort(t), freePort(t), freePort(t)
	register("gw-2", own, map[string]api.ServiceAddress{"lan": {Address: "127.0.0.1", Port: lan}, "wan": {Address: "127.0.0.1", Port: wan}},
		map[string]any{"envoy_mesh_gateway_bind_tagged_addresses": true})
	_, logs, stop = start(t, "-consul", "-proxy-id", "gw-2")
	for _, port := range []int{own, lan, wan} {
		assert.True(t, reaches(t, at(port), name, reached), "%s routes:\n%s", at(port), logs.String())
	}
	require.NoError(t, stop())

	register("gw-bad", freePort(t), nil, map[string]any{"connect_timeout_ms": "soon"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for args, want := range map[string]string{
		"-consul -proxy-id gw-bad": `connect_timeout_ms: want a whole number, got "soon"`,
		"-consul -proxy-id web":    `service "web" is a typical service, not a mesh-gateway`,
		"-consul -proxy-id nope":   `the agent has no service with ID "nope"`,
		"-proxy-id gw-1":           "-proxy-id needs -consul",
	} {
		err := run(ctx, strings.Fields(args), io.Discard, nil)
		assert.ErrorContains(t, err, want, args)
	}
}

// tlsClient starts TLS for name on c, without verifying the server, with
// a generous deadline.
func tlsClient(c net.Conn, name string) *tls.Conn {
	tc := tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	return tc
}

// Without Consul, the proxy-defaults entry in the -config files gives the
// same options, as Consul merges it into every gateway's Proxy.Config.
func TestFileProxyDefaultsOptions(t *testing.T) {
	backend, reached := echoBackend(t)
	extra := freePort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "proxy-defaults.hcl")
	require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf(`
Kind = "proxy-defaults"
Name = "global"
Config {
  connect_timeout_ms = 700
  envoy_gateway_bind_addresses {
    second { address = "127.0.0.1", port = %d }
  }
  envoy_stats_tags = ["a=b"]
}
`, extra)), 0o644))
	gw, logs, stop := start(t, "-config", file, "-service", "web="+backend)
	name := sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain)
	assert.True(t, reaches(t, gw, name, reached), logs.String())
	assert.True(t, reaches(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(extra)), name, reached), logs.String())
	require.NoError(t, stop())
	assert.Contains(t, logs.String(), "connect_timeout=700ms")
	assert.Contains(t, logs.String(), "options=[envoy_stats_tags]")

	require.NoError(t, os.WriteFile(file, []byte(`
Kind = "proxy-defaults"
Name = "global"
Config { envoy_gateway_remote_tcp_keepalive_probes = "many" }
`), 0o644))
	err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-config", file}, io.Discard, nil)
	assert.ErrorContains(t, err, `envoy_gateway_remote_tcp_keepalive_probes: want a whole number, got "many"`)
}
