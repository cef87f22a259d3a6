package registration_test

import (
	"context"
	"net"
	"strconv"
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
// addresses and a TCP check on the listener, and removes it.
func TestRegister(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dereg, err := registration.Register(context.Background(), agent.Client, registration.Gateway{
		Address: ln.Addr().String(), WANAddress: "127.0.9.9:443", CheckInterval: 200 * time.Millisecond})
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the gateway's check to pass", func() bool {
		entries, _, err := agent.Client.Health().Service("mesh-gateway", "", true, nil)
		return err == nil && len(entries) == 1
	})
	entries, _, err := agent.Client.Health().Service("mesh-gateway", "", true, nil)
	require.NoError(t, err)
	s := entries[0].Service
	assert.Equal(t, api.ServiceKindMeshGateway, s.Kind)
	assert.Equal(t, api.ServiceAddress{Address: "127.0.9.9", Port: 443}, s.TaggedAddresses["wan"])
	assert.Equal(t, ln.Addr().String(), net.JoinHostPort(s.TaggedAddresses["lan"].Address, strconv.Itoa(s.TaggedAddresses["lan"].Port)))
	require.NoError(t, dereg())
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.NotContains(t, services, "mesh-gateway")
}
