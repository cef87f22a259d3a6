package main

import (
	"io"
	"net"
	"strconv"
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

// keptOpen is a connection through gw to an echo backend, left open.
func keptOpen(t *testing.T, gw, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	hello := hellotest.Record(t, name)
	_, err = c.Write(hello)
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, err)
	return c
}

// stillEchoes checks that c still carries bytes both ways.
func stillEchoes(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_, err := c.Write([]byte(what))
	require.NoError(t, err)
	buf := make([]byte, len(what))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err, what)
	assert.Equal(t, what, string(buf))
}

func listens(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// A gateway registered with -consul follows its Proxy.Config as the agent
// merges it, without a restart: a bind address added to proxy-defaults is
// listened on, envoy_gateway_no_default_bind closes the gateway's own
// listener (the health check moves to the one left) and its removal opens
// it again, each within moments; a connection opened before all that keeps
// flowing; a bad value leaves the configuration in force and says why.
// (The health check's move is seen in its output, after the agent's
// random first wait of up to its 10 s interval.)
func TestConsulConfigurationFollowsTheAgent(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	reached := meshService(t, agent, "web")
	name := sni.ServiceSNI("web", "", "", "", "dc1", agent.TrustDomain())
	gw, logs, stop := start(t, "-consul")
	defer stop()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the gateway's log:\n%s", logs.String())
		}
	})
	open := keptOpen(t, gw, name)
	<-reached

	extraPort := freePort(t)
	extra := net.JoinHostPort("127.0.0.1", strconv.Itoa(extraPort))
	setConfig := func(config map[string]any) {
		t.Helper()
		_, _, err := agent.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal, Config: config}, nil)
		require.NoError(t, err)
	}
	bind := map[string]any{"extra": map[string]any{"address": "127.0.0.1", "port": extraPort}}
	setConfig(map[string]any{"envoy_gateway_bind_addresses": bind, "connect_timeout_ms": 1500})
	consultest.WaitFor(t, time.Minute, "the added bind address to be listened on", func() bool { return listens(extra) })
	assert.True(t, reaches(t, extra, name, reached), "it routes like the first:\n%s", logs.String())
	assert.Contains(t, logs.String(), `msg="meshgateway: configuration applied" listening=`+gw+","+extra+` opened=[`+extra+`] closed=[] connect_timeout=1.5s`)

	// The agent does not show a TCP check's address, but its output names
	// it once it ran ("dial tcp <addr>: ..." or "TCP connect <addr>: ...").
	checkTCP := func() string {
		checks, err := agent.Client.Agent().Checks()
		require.NoError(t, err)
		for _, c := range checks {
			if c.ServiceName == "mesh-gateway" {
				for _, a := range []string{gw, extra} {
					if strings.Contains(c.Output, a) {
						return a
					}
				}
			}
		}
		return ""
	}
	consultest.WaitFor(t, time.Minute, "the health check to run on the gateway's own listener", func() bool { return checkTCP() == gw })
	setConfig(map[string]any{"envoy_gateway_bind_addresses": bind, "envoy_gateway_no_default_bind": true})
	consultest.WaitFor(t, time.Minute, "the gateway's own listener to close", func() bool { return !listens(gw) })
	consultest.WaitFor(t, time.Minute, "the health check to move to the listener left", func() bool { return checkTCP() == extra })
	assert.True(t, reaches(t, extra, name, reached))
	stillEchoes(t, open, "after its listener closed")

	// A value only gateways read (the agent itself refuses to merge a bad
	// connect_timeout_ms, and keeps the registration as it was).
	setConfig(map[string]any{"envoy_gateway_bind_addresses": bind, "envoy_gateway_remote_tcp_keepalive_time": "soon"})
	consultest.WaitFor(t, time.Minute, "the bad value to be reported", func() bool {
		return strings.Contains(logs.String(), "cannot be applied; the one in force stays")
	})
	assert.Regexp(t, `envoy_gateway_remote_tcp_keepalive_time: want a whole number, got .{0,3}soon`, logs.String(), "the error names the option and the value")
	assert.False(t, listens(gw), "the configuration in force stays: no default bind")

	setConfig(map[string]any{"envoy_gateway_bind_addresses": bind})
	consultest.WaitFor(t, time.Minute, "the gateway's own listener to open again", func() bool { return listens(gw) })
	consultest.WaitFor(t, time.Minute, "the health check to come back", func() bool { return checkTCP() == gw })
	assert.True(t, reaches(t, gw, name, reached))
	stillEchoes(t, open, "through every change")
	open.Close() // or the drain waits for it
	require.NoError(t, stop())
}
