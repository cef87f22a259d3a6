package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/registration"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Two instances on one agent, each with its own -proxy-id: both registered
// and passing; stopping one leaves the other registered and passing; a
// third that takes a live one's ID is refused. A gateway on a wildcard
// listener advertises -address (or, without it, the node's address), never
// the wildcard, and its check passes. The environment reaches agent with
// a token that may register mesh-gateway (TestProductionAgent runs it).
func instancesOnOneAgent(t *testing.T, agent *consultest.Agent) {
	passing := func(id string) bool {
		st, _, err := agent.Client.Agent().AgentHealthServiceByID(id)
		return err == nil && st == api.HealthPassing
	}
	_, logsA, stopA := start(t, "-consul", "-listen", "127.0.0.1:0", "-proxy-id", "gw-a", "-register")
	gwB, logsB, stopB := start(t, "-consul", "-listen", "127.0.0.1:0", "-proxy-id", "gw-b", "-register")
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	require.Contains(t, services, "gw-a", logsA.String())
	require.Contains(t, services, "gw-b", logsB.String())
	assert.Equal(t, "mesh-gateway", services["gw-b"].Service)
	assert.True(t, passing("gw-a") && passing("gw-b"))

	err = run(t.Context(), []string{"-consul", "-listen", "127.0.0.1:0", "-proxy-id", "gw-b", "-register"}, &strings.Builder{}, nil)
	require.ErrorIs(t, err, registration.ErrIDInUse)
	assert.ErrorContains(t, err, gwB)

	require.NoError(t, stopA())
	services, err = agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.NotContains(t, services, "gw-a")
	require.Contains(t, services, "gw-b")
	assert.True(t, passing("gw-b"), "the other instance stays passing")
	require.NoError(t, stopB())

	// A wildcard listener with -address 127.0.0.1: 127.0.0.1 is
	// registered at the listener's port, and its check passes.
	_, port, err := net.SplitHostPort(consultest.FreeAddr(t))
	require.NoError(t, err)
	_, logs, stop := start(t, "-consul", "-listen", "0.0.0.0:"+port, "-address", "127.0.0.1", "-proxy-id", "gw-wild", "-register")
	defer stop()
	svc, _, err := agent.Client.Agent().Service("gw-wild", nil)
	require.NoError(t, err, logs.String())
	assert.Equal(t, "127.0.0.1", svc.Address)
	assert.Equal(t, port, strconv.Itoa(svc.Port))
	assert.Equal(t, api.ServiceAddress{Address: "127.0.0.1", Port: svc.Port}, svc.TaggedAddresses["lan"])
	consultest.WaitFor(t, time.Minute, "the check of 127.0.0.1:"+port+" to run and pass", func() bool {
		checks, err := agent.Client.Agent().Checks()
		c := checks["service:gw-wild"]
		return err == nil && c != nil && c.Status == api.HealthPassing && strings.Contains(c.Output, net.JoinHostPort("127.0.0.1", port)+": Success")
	})
}
