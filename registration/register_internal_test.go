package registration

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The registration is Consul's own gateway registration: kind, lan and wan
// tagged addresses, a TCP check that deregisters a dead gateway after 6 h
// unless told otherwise. (The agent does not report the deregistration
// setting back, and reaps after a minute at the soonest, so this is checked
// on what is sent.)
func TestGatewayIsRegisteredAsConsulsOwn(t *testing.T) {
	reg, err := Gateway{Address: "127.0.0.1:8443", WANAddress: "198.51.100.5:443"}.registration()
	require.NoError(t, err)
	assert.Equal(t, api.ServiceKindMeshGateway, reg.Kind)
	assert.Equal(t, "mesh-gateway", reg.Name)
	assert.Equal(t, map[string]api.ServiceAddress{"lan": {Address: "127.0.0.1", Port: 8443}, "wan": {Address: "198.51.100.5", Port: 443}}, reg.TaggedAddresses)
	assert.Equal(t, "127.0.0.1:8443", reg.Check.TCP)
	assert.Equal(t, "6h0m0s", reg.Check.DeregisterCriticalServiceAfter)

	assert.Nil(t, reg.Proxy, "no Proxy.Config unless given: proxy-defaults' applies")

	reg, err = Gateway{Address: "127.0.0.1:8443", DeregisterCriticalAfter: 90 * time.Second,
		CheckAddress: "127.0.0.2:9443", ProxyConfig: map[string]any{"connect_timeout_ms": 900}}.registration()
	require.NoError(t, err)
	assert.Equal(t, "1m30s", reg.Check.DeregisterCriticalServiceAfter)
	assert.Equal(t, "127.0.0.2:9443", reg.Check.TCP, "a gateway not listening on its address is checked elsewhere")
	assert.Equal(t, "127.0.0.1", reg.Address)
	assert.Equal(t, map[string]any{"connect_timeout_ms": 900}, reg.Proxy.Config)

	_, err = Gateway{Address: "127.0.0.1:99999"}.registration()
	assert.ErrorContains(t, err, `"99999"`)
}

// ExposeServers is Consul's -expose-servers: the meta its servers pick
// gateways to federate through by, and the caller's own meta kept.
func TestGatewayExposesServers(t *testing.T) {
	mine := map[string]string{"zone": "a"}
	reg, err := Gateway{Address: "127.0.0.1:8443", Meta: mine, ExposeServers: true}.registration()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"zone": "a", "consul-wan-federation": "1"}, reg.Meta)
	assert.Equal(t, map[string]string{"zone": "a"}, mine, "the caller's map is not changed")
	assert.True(t, ExposesServers(&api.AgentService{Meta: reg.Meta}))

	reg, err = Gateway{Address: "127.0.0.1:8443"}.registration()
	require.NoError(t, err)
	assert.Empty(t, reg.Meta[MetaWANFederation])
	assert.False(t, ExposesServers(&api.AgentService{Meta: reg.Meta}))
}
