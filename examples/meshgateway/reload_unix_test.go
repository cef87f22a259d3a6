//go:build unix

package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// SIGHUP rereads the files: a new route works at once while a connection
// opened before keeps flowing; a broken file is reported and the routes in
// force stay.
func TestReloadOnSIGHUP(t *testing.T) {
	web, webReached := echoBackend(t)
	api, apiReached := echoBackend(t)
	file := filepath.Join(t.TempDir(), "topology.hcl")
	write := func(src string) { require.NoError(t, os.WriteFile(file, []byte(src), 0o644)) }
	topology := func(services ...string) string {
		return fmt.Sprintf("topology {\n  services = [%s]\n}\n", strings.Join(services, ", "))
	}
	webEntry := fmt.Sprintf(`{ name = "web", addresses = [%q] }`, web)
	write(topology(webEntry))
	gw, logs, stop := start(t, "-config", file)
	defer stop()
	name := func(service string) string {
		return sni.ServiceSNI(service, "", "", "", "dc1", config.DefaultTrustDomain)
	}
	hup := func(want string, n int) {
		t.Helper()
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		require.Eventually(t, func() bool { return strings.Count(logs.String(), want) == n }, time.Minute, 10*time.Millisecond, logs.String())
	}

	// A connection through the gateway to web, left open: the ClientHello
	// and what follows are echoed by the backend.
	open, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer open.Close()
	open.SetDeadline(time.Now().Add(time.Minute))
	hello := hellotest.Record(t, name("web"))
	_, err = open.Write(hello)
	require.NoError(t, err)
	_, err = io.ReadFull(open, make([]byte, len(hello)))
	require.NoError(t, err)
	<-webReached
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	require.Error(t, tlsClient(c, name("api")).Handshake(), "api is not routed yet")
	c.Close()

	write(topology(webEntry, fmt.Sprintf(`{ name = "api", addresses = [%q] }`, api)))
	hup("meshgateway: reloaded", 1)
	assert.Contains(t, logs.String(), "services_added=[api@dc1]")
	assert.True(t, reaches(t, gw, name("api"), apiReached), "the new route works:\n%s", logs.String())

	write("topology { services = [ { name = \"api\", addresses = [\"no-port\"] } ] }")
	hup("reload failed; the previous configuration stays in force", 1)
	assert.True(t, reaches(t, gw, name("api"), apiReached), "a broken file leaves the routes in force")
	assert.True(t, reaches(t, gw, name("web"), webReached))

	// The connection opened before the reloads still forwards.
	_, err = open.Write([]byte("still here"))
	require.NoError(t, err)
	buf := make([]byte, len("still here"))
	_, err = io.ReadFull(open, buf)
	require.NoError(t, err)
	assert.Equal(t, "still here", string(buf))
	open.Close()
	require.NoError(t, stop())
}

// SIGHUP applies the proxy-defaults entry's Config from the files too: a
// bind address added is listened on, one dropped is closed, while a
// connection it accepted keeps flowing; a bad value refuses the reload,
// naming the option, and the configuration in force stays.
func TestReloadAppliesProxyDefaults(t *testing.T) {
	web, _ := echoBackend(t)
	dir := t.TempDir()
	topology := filepath.Join(dir, "topology.hcl")
	require.NoError(t, os.WriteFile(topology, []byte(fmt.Sprintf("topology {\n  services = [{ name = \"web\", addresses = [%q] }]\n}\n", web)), 0o644))
	defaults := filepath.Join(dir, "proxy-defaults.hcl")
	writeDefaults := func(config string) {
		require.NoError(t, os.WriteFile(defaults, []byte("Kind = \"proxy-defaults\"\nName = \"global\"\nConfig {\n"+config+"}\n"), 0o644))
	}
	extra := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	host, port, _ := net.SplitHostPort(extra)
	writeDefaults("  connect_timeout_ms = 2000\n")
	gw, logs, stop := start(t, "-config", dir)
	defer stop()
	assert.Contains(t, logs.String(), "connect_timeout=2s")
	name := sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain)
	hup := func(want string, n int) {
		t.Helper()
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		require.Eventually(t, func() bool { return strings.Count(logs.String(), want) == n }, time.Minute, 10*time.Millisecond, logs.String())
	}

	writeDefaults(fmt.Sprintf("  envoy_gateway_bind_addresses = { extra = { address = %q, port = %s } }\n", host, port))
	hup("meshgateway: reloaded", 1)
	assert.True(t, listens(extra), "the bind address added:\n%s", logs.String())
	assert.Contains(t, logs.String(), "opened=["+extra+"]")
	assert.Contains(t, logs.String(), "connect_timeout=5s", "connect_timeout_ms gone: the default")
	open := keptOpen(t, extra, name)

	writeDefaults("  envoy_gateway_remote_tcp_enable_keepalive = \"maybe\"\n")
	hup("reload failed; the previous configuration stays in force", 1)
	assert.Contains(t, logs.String(), "envoy_gateway_remote_tcp_enable_keepalive")
	assert.True(t, listens(extra), "the configuration in force stays")

	writeDefaults("")
	hup("meshgateway: reloaded", 2)
	assert.False(t, listens(extra), "the bind address dropped")
	assert.True(t, listens(gw))
	stillEchoes(t, open, "accepted by a listener since closed")
	open.Close() // or the drain waits for it
	require.NoError(t, stop())
}
