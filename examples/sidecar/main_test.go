package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/cli"
	"github.com/meshgate/meshgate/internal/consultest"
	"github.com/meshgate/meshgate/internal/meshtest"
	"github.com/meshgate/meshgate/internal/syncbuf"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const eventually = 60 * time.Second

func TestUsage(t *testing.T) {
	for args, want := range map[string]int{"-h": 0, "-version": 0, "-nope": 2, "extra": 2, "": 2, "-proxy-id x -log-level loud": 2} {
		var logs bytes.Buffer
		err := run(context.Background(), strings.Fields(args), &logs, nil)
		assert.Equal(t, want, cli.ExitCode(&logs, "sidecar", err), "%q: %s", args, logs.String())
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// The binary serves a connect-proxy registration in dc1 whose upstream is a
// Connect-native api in dc2, through meshgate gateways: plain bytes from
// the application go over the planned path and come back intact; changing
// the registration's mode, then proxy-defaults, changes the path of the
// next connection, and the log names the deciding layer each time.
func TestSidecarFollowsTheRegistration(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	gw1, gw2 := meshtest.StartGateway(t, dc1), meshtest.StartGateway(t, dc2)
	meshtest.ServeNative(t, dc2, "api", meshtest.WatchCerts(t, dc2, "api"))
	apiSNI := sni.ServiceSNI("api", "", "", "", "dc2", dc1.TrustDomain())

	bind := freePort(t)
	register := func(mode api.MeshGatewayMode) {
		require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindConnectProxy, ID: "web-sidecar-proxy", Name: "web-sidecar-proxy", Port: freePort(t),
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", Upstreams: []api.Upstream{{
				DestinationName: "api", Datacenter: "dc2", LocalBindPort: bind, MeshGateway: api.MeshGatewayConfig{Mode: mode}}}}}))
	}
	register(api.MeshGatewayModeLocal)

	t.Setenv("CONSUL_HTTP_ADDR", dc1.HTTPAddr)
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-proxy-id", "web-sidecar-proxy", "-log-level", "debug"}, logs, ready)
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("sidecar: %v\n%s", err, logs.String())
	}

	var want1, want2 int
	through := func(t *testing.T, logLine string, via1, via2 bool) {
		t.Helper()
		payload := make([]byte, 128<<10)
		rand.Read(payload)
		// Until the path is as wanted (gateways found, the change seen),
		// connections may fail or take the previous path; only the last
		// one is counted.
		consultest.WaitFor(t, eventually, "a connection logged as "+logLine, func() bool {
			if !strings.Contains(logs.String(), logLine) {
				c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(bind))
				if err == nil {
					c.Write([]byte("x"))
					c.(*net.TCPConn).CloseWrite()
					io.ReadAll(c)
					c.Close()
				}
				return false
			}
			return true
		})
		consultest.WaitFor(t, eventually, "the gateways to settle", func() bool {
			a, b := gw1.Count(apiSNI), gw2.Count(apiSNI)
			time.Sleep(200 * time.Millisecond)
			return a == gw1.Count(apiSNI) && b == gw2.Count(apiSNI)
		})
		want1, want2 = gw1.Count(apiSNI), gw2.Count(apiSNI)
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(bind))
		require.NoError(t, err)
		go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		c.Close()
		require.True(t, bytes.Equal(payload, got), "%d bytes back of %d", len(got), len(payload))
		if via1 {
			want1++
		}
		if via2 {
			want2++
		}
		consultest.WaitFor(t, eventually, "the gateways to count the connection", func() bool {
			return gw1.Count(apiSNI) >= want1 && gw2.Count(apiSNI) >= want2
		})
		assert.Equal(t, want1, gw1.Count(apiSNI), "dc1's gateway")
		assert.Equal(t, want2, gw2.Count(apiSNI), "dc2's gateway")
	}
	through(t, "mode=local decided_by=upstream route=local-gateway", true, true)
	register(api.MeshGatewayModeRemote)
	through(t, "mode=remote decided_by=upstream route=remote-gateway", false, true)
	register("")
	_, _, err := dc1.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)
	through(t, "mode=local decided_by=proxy-defaults route=local-gateway", true, true)
}
