package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// forwarded opens a connection to gw for name and returns it once the
// echoing backend has sent the ClientHello back (it was forwarded), held
// open for the caller; false when the gateway closed it instead.
func forwarded(t *testing.T, gw, name string) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	hello := hellotest.Record(t, name)
	c.Write(hello)
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		c.Close()
		return nil, false
	}
	c.SetReadDeadline(time.Time{})
	return c, true
}

// refused reports whether the gateway closes a connection for name
// without forwarding it.
func refused(t *testing.T, gw, name string) bool {
	t.Helper()
	c, ok := forwarded(t, gw, name)
	if ok {
		c.Close()
	}
	return !ok
}

// With a real agent, what Consul configures on a gateway is applied while
// it runs: the AccessLogs of proxy-defaults switched on (to a file, in
// Envoy's format), off, and on again, each seen by the next connection;
// the limits of the gateway's own service-defaults (MaxConnections 1, then
// 2, then none), seen by the next connection, a connection over them
// refused with over-limit (UO in the access log); a field it does not
// apply named in the warning. Then, with -access-log, the flag wins and
// the warning says so.
func TestConsulAccessLogsAndLimitsLive(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	reached := meshService(t, agent, "web")
	go func() {
		for range reached { // the echoed hello says a connection was forwarded
		}
	}()
	td := agent.TrustDomain()
	web := sni.ServiceSNI("web", "", "", "", "dc1", td)
	unknown := func(svc string) string { return sni.ServiceSNI(svc, "", "", "", "dc1", td) }
	path := filepath.Join(t.TempDir(), "access.log")
	accessLogs := func(enabled bool) {
		t.Helper()
		_, _, err := agent.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
			AccessLogs: &api.AccessLogsConfig{Enabled: enabled, Type: api.FileLogSinkType, Path: path,
				TextFormat: "%REQUESTED_SERVER_NAME% %RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS%"}}, nil)
		require.NoError(t, err)
	}
	logged := func() string {
		b, _ := os.ReadFile(path)
		return string(b)
	}
	limit := func(n int) {
		t.Helper()
		_, _, err := agent.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "mesh-gateway",
			UpstreamConfig: &api.UpstreamConfiguration{Defaults: &api.UpstreamConfig{Limits: &api.UpstreamLimits{MaxConnections: &n}}}}, nil)
		require.NoError(t, err)
	}

	gw, logs, stop := start(t, "-consul")
	defer stop()

	// Access logs on: a refused name gets its line.
	accessLogs(true)
	consultest.WaitFor(t, 30*time.Second, "a line in the AccessLogs file", func() bool {
		refused(t, gw, unknown("first"))
		return strings.Contains(logged(), unknown("first")+" NC unknown-service\n")
	})
	// Off: the next connection writes nothing; on again: the next does.
	accessLogs(false)
	consultest.WaitFor(t, 30*time.Second, "the gateway to turn its access log off", func() bool {
		return strings.Contains(logs.String(), `msg="meshgateway: access log from AccessLogs" enabled=false`)
	})
	require.True(t, refused(t, gw, unknown("while-off")))
	accessLogs(true)
	consultest.WaitFor(t, 30*time.Second, "the access log on again", func() bool {
		refused(t, gw, unknown("on-again"))
		return strings.Contains(logged(), unknown("on-again"))
	})
	assert.NotContains(t, logged(), unknown("while-off"), "no line while AccessLogs was off")

	// Limits: one connection held, the next refused over the limit of 1.
	limit(1)
	first, ok := forwarded(t, gw, web)
	require.True(t, ok, "the first connection under MaxConnections 1")
	defer first.Close()
	consultest.WaitFor(t, 30*time.Second, "MaxConnections 1 to refuse a second connection", func() bool { return refused(t, gw, web) })
	consultest.WaitFor(t, 30*time.Second, "the refusal's line", func() bool { return strings.Contains(logged(), web+" UO over-limit\n") })
	// Raised to 2 while running: the next connection is forwarded.
	limit(2)
	var second net.Conn
	consultest.WaitFor(t, 30*time.Second, "MaxConnections 2 to admit a second connection", func() bool {
		second, ok = forwarded(t, gw, web)
		return ok
	})
	defer second.Close()
	assert.True(t, refused(t, gw, web), "a third over MaxConnections 2")
	// Deleted: no limit (no hidden one either).
	_, err := agent.Client.ConfigEntries().Delete(api.ServiceDefaults, "mesh-gateway", nil)
	require.NoError(t, err)
	consultest.WaitFor(t, 30*time.Second, "a third connection once the limits are gone", func() bool {
		c, ok := forwarded(t, gw, web)
		if ok {
			c.Close()
		}
		return ok
	})

	// A field the gateway does not apply is named in the warning.
	_, _, err = agent.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "web",
		LoadBalancer: &api.LoadBalancer{Policy: "maglev"}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, 30*time.Second, "the warning naming the resolver's policy", func() bool {
		return strings.Contains(logs.String(), `msg="meshgate: Consul fields set but not applied by this gateway"`) &&
			strings.Contains(logs.String(), `service-resolver \"web\": LoadBalancer.Policy \"maglev\"`)
	})
	require.NoError(t, stop())

	// -access-log wins over AccessLogs, and the warning says so.
	flagged := filepath.Join(t.TempDir(), "flag.log")
	gw, logs, stop = start(t, "-consul", "-access-log", flagged)
	before := logged()
	consultest.WaitFor(t, 30*time.Second, "the warning that -access-log wins", func() bool {
		return strings.Contains(logs.String(), "AccessLogs: not applied: -access-log is given and wins")
	})
	refused(t, gw, unknown("flagged"))
	require.NoError(t, stop())
	b, err := os.ReadFile(flagged)
	require.NoError(t, err)
	assert.Contains(t, string(b), unknown("flagged"), "the flag's log has the line")
	assert.Equal(t, before, logged(), "AccessLogs' file has nothing more")
}
