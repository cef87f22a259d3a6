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
	assert.NotContains(t, reg.Meta, MetaInstance, "Register adds the instance's mark")

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

// As "consul connect envoy -register": no wan tagged address unless given,
// no service address when the advertised one has no host (the node's,
// with the check on 127.0.0.1), a wildcard never advertised, the check
// passing from the start, -bind-address as Consul writes it.
func TestGatewayAddressesAsConsulsCommand(t *testing.T) {
	reg, err := Gateway{Address: "127.0.0.1:8443"}.registration()
	require.NoError(t, err)
	assert.Equal(t, map[string]api.ServiceAddress{"lan": {Address: "127.0.0.1", Port: 8443}}, reg.TaggedAddresses, "no wan unless given")
	assert.Equal(t, api.HealthPassing, reg.Check.Status)
	assert.Empty(t, reg.Check.Timeout, "Consul's default timeout, as its command sets none")

	reg, err = Gateway{Address: ":9443"}.registration()
	require.NoError(t, err)
	assert.Empty(t, reg.Address)
	assert.Equal(t, 9443, reg.Port)
	assert.Empty(t, reg.TaggedAddresses)
	assert.Equal(t, "127.0.0.1:9443", reg.Check.TCP)

	for _, wild := range []string{"0.0.0.0:8443", "[::]:8443"} {
		_, err = Gateway{Address: wild}.registration()
		assert.ErrorContains(t, err, "wildcard", wild)
	}
	_, err = Gateway{Address: "127.0.0.1:8443", WANAddress: ":443"}.registration()
	assert.ErrorContains(t, err, `":443"`)

	reg, err = Gateway{Address: "127.0.0.1:8443", ProxyConfig: map[string]any{"connect_timeout_ms": 900},
		BindAddresses: map[string]string{"default": "0.0.0.0:9444"}}.registration()
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"connect_timeout_ms": 900, "envoy_gateway_no_default_bind": true,
		"envoy_gateway_bind_addresses": map[string]any{"default": map[string]any{"Address": "0.0.0.0", "Port": 9444}}}, reg.Proxy.Config)
	_, err = Gateway{Address: "127.0.0.1:8443", BindAddresses: map[string]string{"x": "nowhere"}}.registration()
	assert.ErrorContains(t, err, "x=nowhere")
}

func TestAdvertise(t *testing.T) {
	for _, c := range []struct{ listen, address, want string }{
		{"127.0.0.1:8443", "", "127.0.0.1:8443"},
		{"[::]:8443", "", ":8443"},
		{"0.0.0.0:9443", "", ":9443"},
		{"[::]:9443", "127.0.0.1", "127.0.0.1:9443"},
		{"[::]:9443", "10.0.0.5:443", "10.0.0.5:443"},
		{"127.0.0.1:9443", ":443", "127.0.0.1:443"},
		{"[::]:9443", "0.0.0.0", ":9443"},
		{"[::1]:9443", "", "[::1]:9443"},
		{"[::]:9443", "gw.example.com:443", "gw.example.com:443"},
	} {
		got, err := Advertise(c.listen, c.address)
		require.NoError(t, err, "%s %s", c.listen, c.address)
		assert.Equal(t, c.want, got, "listen %s, -address %q", c.listen, c.address)
	}
	for _, bad := range []string{"gw.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1"} {
		_, err := Advertise("127.0.0.1:8443", bad)
		assert.ErrorContains(t, err, bad)
	}
}

func TestListenAddress(t *testing.T) {
	got, err := ListenAddress("127.0.0.1")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:8443", got, "Consul's default port")
	got, err = ListenAddress("127.0.0.1:9443")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9443", got)
	got, err = ListenAddress(":9443")
	require.NoError(t, err)
	assert.Equal(t, ":9443", got)
	_, err = ListenAddress("192.0.2.7:8443") // TEST-NET-1: no interface has it
	assert.ErrorContains(t, err, `"192.0.2.7" is not an address of this host`)
}
