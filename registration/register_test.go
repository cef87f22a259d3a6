package registration_test

import (
	"context"
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

// eventually bounds a wait for the agent.
const eventually = 60 * time.Second

// The registration helper registers a mesh-gateway service with lan and wan
// addresses and a TCP check on the listener, passing from the start, and
// removes it.
func TestRegister(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	reg, err := registration.Register(context.Background(), agent.Client, registration.Gateway{
		Address: ln.Addr().String(), WANAddress: "127.0.9.9:443", CheckInterval: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, "mesh-gateway", reg.ID())
	// Passing at once, though the agent's first check runs up to an
	// interval (an hour here) later.
	entries, _, err := agent.Client.Health().Service("mesh-gateway", "", true, nil)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	s := entries[0].Service
	assert.Equal(t, api.ServiceKindMeshGateway, s.Kind)
	assert.Equal(t, api.ServiceAddress{Address: "127.0.9.9", Port: 443}, s.TaggedAddresses["wan"])
	assert.Equal(t, ln.Addr().String(), net.JoinHostPort(s.TaggedAddresses["lan"].Address, strconv.Itoa(s.TaggedAddresses["lan"].Port)))
	require.NoError(t, reg.Deregister(context.Background()))
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.NotContains(t, services, "mesh-gateway")
	assert.NoError(t, reg.Deregister(context.Background()), "deregistering what is gone is no error")
}

// Several instances on one agent, each under its own ID: each removes or
// puts into maintenance only itself; an ID held by a live instance is
// refused, one held by a restart at the same address or by a dead instance
// is taken over, and the instance it was taken from then leaves it alone.
func TestInstances(t *testing.T) {
	ctx := context.Background()
	agent := consultest.Start(t, consultest.Options{})
	listen := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().String()
	}
	status := func(id string) string {
		st, _, err := agent.Client.Agent().AgentHealthServiceByID(id)
		require.NoError(t, err)
		return st
	}
	check := 200 * time.Millisecond
	aAddr, bAddr := listen(), listen()
	a, err := registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-a", Address: aAddr, CheckInterval: check})
	require.NoError(t, err)
	b, err := registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-b", Address: bAddr, CheckInterval: check})
	require.NoError(t, err)
	entries, _, err := agent.Client.Health().Service("mesh-gateway", "", true, nil)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "both instances registered and passing")

	// A third instance that takes b's ID is refused while b is alive.
	_, err = registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-b", Address: listen(), CheckInterval: check})
	require.ErrorIs(t, err, registration.ErrIDInUse)
	assert.ErrorContains(t, err, bAddr)
	assert.ErrorContains(t, err, "-proxy-id")
	assert.Equal(t, api.HealthPassing, status("gw-b"))

	// a leaves: b stays registered and passing.
	require.NoError(t, a.Maintenance(ctx, true, "draining"))
	assert.Equal(t, api.HealthCritical, status("gw-a"), "in maintenance")
	assert.Equal(t, api.HealthPassing, status("gw-b"))
	require.NoError(t, a.Deregister(ctx))
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.NotContains(t, services, "gw-a")
	assert.Equal(t, api.HealthPassing, status("gw-b"))

	// A new process at b's address (a restart, a hand-over) takes b's
	// registration over; the old one then removes nothing.
	b2, err := registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-b", Address: bAddr, CheckInterval: check})
	require.NoError(t, err)
	require.ErrorIs(t, b.Maintenance(ctx, true, "old process"), registration.ErrReplaced)
	require.ErrorIs(t, b.Deregister(ctx), registration.ErrReplaced)
	assert.Equal(t, api.HealthPassing, status("gw-b"), "the new process's registration is untouched")

	// An instance that died (nothing listens at its address) leaves a
	// critical registration, which the next instance takes over.
	dead := listen()
	_, err = registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-c", Address: "127.0.0.1:1", CheckAddress: "127.0.0.1:1", CheckInterval: check})
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the dead instance's check to fail", func() bool { return status("gw-c") == api.HealthCritical })
	c, err := registration.Register(ctx, agent.Client, registration.Gateway{ID: "gw-c", Address: dead, CheckInterval: check})
	require.NoError(t, err)
	svc, _, err := agent.Client.Agent().Service("gw-c", nil)
	require.NoError(t, err)
	assert.Equal(t, dead, net.JoinHostPort(svc.Address, strconv.Itoa(svc.Port)))
	require.NoError(t, c.Deregister(ctx))
	require.NoError(t, b2.Deregister(ctx))
}

// Without a host in its address the gateway is registered as Consul's
// command registers one without -address: no service address (the catalog
// gives the node's) and its check on 127.0.0.1, which passes.
func TestRegisterNodeAddress(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	require.NoError(t, err)
	defer ln.Close()
	addr, err := registration.Advertise(ln.Addr().String(), "")
	require.NoError(t, err)
	reg, err := registration.Register(context.Background(), agent.Client, registration.Gateway{Address: addr, CheckInterval: 200 * time.Millisecond})
	require.NoError(t, err)
	defer reg.Deregister(context.Background())
	// The agent's own view of the check: the catalog gets a passing
	// check's output only every few minutes (check_update_interval).
	var output string
	consultest.WaitFor(t, eventually, "the check on 127.0.0.1 to have run and passed", func() bool {
		checks, err := agent.Client.Agent().Checks()
		if err != nil || checks["service:mesh-gateway"] == nil {
			return false
		}
		output = checks["service:mesh-gateway"].Output
		return checks["service:mesh-gateway"].Status == api.HealthPassing && strings.Contains(output, "Success")
	})
	port := ln.Addr().(*net.TCPAddr).Port
	assert.Contains(t, output, "127.0.0.1:"+strconv.Itoa(port))
	nodes, _, err := agent.Client.Catalog().Service("mesh-gateway", "", nil)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.Empty(t, nodes[0].ServiceAddress, "no wildcard advertised")
	assert.Equal(t, "127.0.0.1", nodes[0].Address, "the node's address")
	assert.Equal(t, port, nodes[0].ServicePort)
}
