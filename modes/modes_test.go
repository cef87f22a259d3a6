package modes

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var allModes = []api.MeshGatewayMode{"", "none", "local", "remote"}

// TestDecideEveryCombination checks Decide on all 4^7 combinations of the
// layers against an independent statement of the rule: the answer is the
// first non-empty value in Consul's documented order, else "" from "default".
func TestDecideEveryCombination(t *testing.T) {
	order := []string{"upstream", "upstream-override", "instance", "upstream-defaults", "service-defaults", "proxy-defaults", "destination-defaults"}
	count := 0
	var vals [7]int
	for {
		l := Layers{allModes[vals[0]], allModes[vals[1]], allModes[vals[2]], allModes[vals[3]], allModes[vals[4]], allModes[vals[5]], allModes[vals[6]]}
		want := Decision{Layer: "default"}
		for i := range vals {
			if vals[i] != 0 {
				want = Decision{Mode: allModes[vals[i]], Layer: Layer(order[i])}
				break
			}
		}
		require.Equal(t, want, Decide(l), "%+v", l)
		count++
		i := 0
		for ; i < len(vals); i++ {
			vals[i]++
			if vals[i] < len(allModes) {
				break
			}
			vals[i] = 0
		}
		if i == len(vals) {
			break
		}
	}
	assert.Equal(t, 16384, count)
}

// The destination's service-defaults is a layer of each target, set apart
// from the downstream's layers.
func TestWithDestination(t *testing.T) {
	l := Layers{ProxyDefaults: ""}.WithDestination(&api.ServiceConfigEntry{Name: "api", MeshGateway: api.MeshGatewayConfig{Mode: "local"}})
	assert.Equal(t, Decision{Mode: "local", Layer: LayerDestinationDefaults}, Decide(l))
	l = Layers{ProxyDefaults: "remote"}.WithDestination(&api.ServiceConfigEntry{Name: "api", MeshGateway: api.MeshGatewayConfig{Mode: "local"}})
	assert.Equal(t, Decision{Mode: "remote", Layer: LayerProxyDefaults}, Decide(l), "any downstream layer overrides it")
	assert.Equal(t, Decision{Layer: LayerDefault}, Decide(Layers{Destination: "local"}.WithDestination(nil)), "nil: no destination layer")
}

func TestEffective(t *testing.T) {
	assert.Equal(t, api.MeshGatewayModeNone, Decision{}.Effective())
	assert.Equal(t, api.MeshGatewayModeLocal, Decision{Mode: "local"}.Effective())
}

func TestValidate(t *testing.T) {
	for _, m := range allModes {
		assert.NoError(t, Validate(m))
	}
	for _, bad := range []string{"Local", "remote ", "gateway", "x"} {
		err := Validate(api.MeshGatewayMode(bad))
		require.ErrorIs(t, err, ErrInvalidMode)
		assert.Contains(t, err.Error(), `"`+bad+`"`)
		assert.Contains(t, err.Error(), `"local"`)
	}
	err := Layers{Instance: "bogus", ProxyDefaults: "Remote"}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `instance: modes: invalid mesh gateway mode "bogus"`)
	assert.Contains(t, err.Error(), `proxy-defaults: modes: invalid mesh gateway mode "Remote"`)
}

func TestForUpstreamPicksEveryLayer(t *testing.T) {
	up := api.Upstream{DestinationName: "api", MeshGateway: api.MeshGatewayConfig{Mode: "remote"}}
	proxy := &api.AgentServiceConnectProxyConfig{MeshGateway: api.MeshGatewayConfig{Mode: "local"}}
	sd := &api.ServiceConfigEntry{
		Kind: api.ServiceDefaults, Name: "web",
		MeshGateway: api.MeshGatewayConfig{Mode: "none"},
		UpstreamConfig: &api.UpstreamConfiguration{
			Defaults: &api.UpstreamConfig{MeshGateway: api.MeshGatewayConfig{Mode: "remote"}},
			Overrides: []*api.UpstreamConfig{
				{Name: "db", MeshGateway: api.MeshGatewayConfig{Mode: "none"}},
				{Name: "api", Peer: "other", MeshGateway: api.MeshGatewayConfig{Mode: "none"}},
				{Name: "api", Namespace: "default", MeshGateway: api.MeshGatewayConfig{Mode: "local"}},
			},
		},
	}
	pd := &api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal, MeshGateway: api.MeshGatewayConfig{Mode: "local"}}
	got := ForUpstream(up, proxy, sd, pd)
	assert.Equal(t, Layers{Upstream: "remote", UpstreamOverride: "local", Instance: "local", UpstreamDefaults: "remote", ServiceDefaults: "none", ProxyDefaults: "local"}, got)
	assert.Equal(t, Layers{}, ForUpstream(api.Upstream{DestinationName: "api"}, nil, nil, nil))
}

func TestCheckUpstream(t *testing.T) {
	require.NoError(t, CheckUpstream(api.Upstream{DestinationName: "api", Datacenter: "dc2"}))
	require.NoError(t, CheckUpstream(api.Upstream{DestinationName: "api", DestinationPeer: "other"}))
	err := CheckUpstream(api.Upstream{DestinationName: "api", Datacenter: "dc2", DestinationPeer: "other"})
	require.ErrorIs(t, err, ErrUpstreamDatacenterAndPeer)
	require.ErrorContains(t, err, `datacenter "dc2", destination_peer "other" for "api"`)
	require.ErrorContains(t, CheckUpstream(api.Upstream{}), "no destination_name")
}
