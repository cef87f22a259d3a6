//go:build unix

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/routing/routingtest"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startSidecar runs the binary with args until the test ends.
func startSidecar(t *testing.T, args ...string) *syncbuf.Buffer {
	t.Helper()
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- run(ctx, append(args, "-log-level", "debug"), logs, ready) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("sidecar: %v\n%s", err, logs.String())
	}
	return logs
}

// hops checks which gateways each connection to api crossed.
type hops struct {
	gw1, gw2     *routingtest.Gateway
	sni          string
	want1, want2 int
}

// through waits until a connection on bind echoes and logLine has been
// logged (the plan as wanted: gateways found, the change seen), then sends 128 KiB over
// one more connection, checks they come back intact, and that it crossed
// dc1's gateway if via1 and dc2's if via2, and no other.
func (h *hops) through(t *testing.T, bind int, logs *syncbuf.Buffer, logLine string, via1, via2 bool) {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(bind)
	consultest.WaitFor(t, eventually, "a connection logged as "+logLine+" to echo", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		return string(got) == "x" && strings.Contains(logs.String(), logLine)
	})
	// The gateways count a connection when it closes: the ones that
	// checked the path are counted once no connection is open.
	consultest.WaitFor(t, eventually, "the gateways to close the connections that checked the path", func() bool {
		return h.gw1.Idle() && h.gw2.Idle()
	})
	h.want1, h.want2 = h.gw1.Count(h.sni), h.gw2.Count(h.sni)
	payload := make([]byte, 128<<10)
	rand.Read(payload)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	require.NoError(t, err, "%s", logs.String())
	c.Close()
	require.True(t, bytes.Equal(payload, got), "%d bytes back of %d", len(got), len(payload))
	if via1 {
		h.want1++
	}
	if via2 {
		h.want2++
	}
	consultest.WaitFor(t, eventually, "the gateways to count the connection", func() bool {
		return h.gw1.Count(h.sni) >= h.want1 && h.gw2.Count(h.sni) >= h.want2
	})
	assert.Equal(t, h.want1, h.gw1.Count(h.sni), "dc1's gateway")
	assert.Equal(t, h.want2, h.gw2.Count(h.sni), "dc2's gateway")
}

// The binary serves a connect-proxy registration in dc1 whose upstream is a
// Connect-native api in dc2, through meshgate gateways: plain bytes from the
// application go over the planned path and come back intact. Changing the
// mode at each layer (the registration's upstream, proxy-defaults,
// service-defaults, the registration's instance) changes the path of the
// next connection, and the log names the deciding layer each time. The same from
// a service definition file, reread on SIGHUP.
func TestSidecarFollowsTheRegistration(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	h := &hops{gw1: routingtest.StartGateway(t, dc1.Client), gw2: routingtest.StartGateway(t, dc2.Client),
		sni: sni.ServiceSNI("api", "", "", "", "dc2", dc1.TrustDomain())}
	sidecartest.ServeNative(t, dc2.Client, "api", sidecartest.WatchCerts(t, dc2.Client, "api"))

	bind := freePort(t)
	// register sets the upstream's mode and the instance's.
	register := func(mode, instance api.MeshGatewayMode) {
		require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindConnectProxy, ID: "web-sidecar-proxy", Name: "web-sidecar-proxy", Port: freePort(t),
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", MeshGateway: api.MeshGatewayConfig{Mode: instance}, Upstreams: []api.Upstream{{
				DestinationName: "api", Datacenter: "dc2", LocalBindPort: bind, MeshGateway: api.MeshGatewayConfig{Mode: mode}}}}}))
	}
	register(api.MeshGatewayModeLocal, "")
	t.Setenv("CONSUL_HTTP_ADDR", dc1.HTTPAddr)
	logs := startSidecar(t, "-proxy-id", "web-sidecar-proxy")
	h.through(t, bind, logs, "mode=local decided_by=upstream route=local-gateway", true, true)
	register(api.MeshGatewayModeRemote, "")
	h.through(t, bind, logs, "mode=remote decided_by=upstream route=remote-gateway", false, true)
	// The lower layers, each over the one below it.
	register("", "")
	_, _, err := dc1.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)
	h.through(t, bind, logs, "mode=local decided_by=proxy-defaults route=local-gateway", true, true)
	_, _, err = dc1.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web",
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}}, nil)
	require.NoError(t, err)
	h.through(t, bind, logs, "mode=remote decided_by=service-defaults route=remote-gateway", false, true)
	register("", api.MeshGatewayModeLocal)
	h.through(t, bind, logs, "mode=local decided_by=instance route=local-gateway", true, true)

	// From a file: a service definition with a sidecar_service, as the
	// agent takes it.
	fileBind := freePort(t)
	file := filepath.Join(t.TempDir(), "billing.hcl")
	write := func(mode string) {
		require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf(`service {
  name = "billing"
  port = 9090
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "api", datacenter = "dc2", local_bind_port = %d, mesh_gateway { mode = %q } }]
      }
    }
  }
}
`, fileBind, mode)), 0o644))
	}
	write("remote")
	fileLogs := startSidecar(t, "-proxy-id", "billing-sidecar-proxy", "-config", file)
	h.through(t, fileBind, fileLogs, "mode=remote decided_by=upstream route=remote-gateway", false, true)
	write("local")
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	consultest.WaitFor(t, eventually, "the reload", func() bool { return strings.Contains(fileLogs.String(), "registration reloaded") })
	h.through(t, fileBind, fileLogs, "mode=local decided_by=upstream route=local-gateway", true, true)
	write("sideways")
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	consultest.WaitFor(t, eventually, "the failed reload", func() bool { return strings.Contains(fileLogs.String(), "reload failed") })
	assert.Contains(t, fileLogs.String(), `sideways`, "the error names the bad mode")
	h.through(t, fileBind, fileLogs, "mode=local decided_by=upstream route=local-gateway", true, true)
}
