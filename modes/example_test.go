package modes_test

import (
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/modes"
)

func ExampleDecide() {
	// proxy-defaults says local, the proxy registration says remote, and the
	// upstream says nothing: the instance layer decides.
	global := &api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}
	proxy := &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web",
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}}
	up := api.Upstream{DestinationName: "api", Datacenter: "secondary"}

	d := modes.Decide(modes.ForUpstream(up, proxy, nil, global))
	fmt.Println(d.Mode, d.Layer)
	// Output: remote instance
}
