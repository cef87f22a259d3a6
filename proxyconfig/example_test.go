package proxyconfig_test

import (
	"fmt"

	"github.com/meshgate/meshgate/proxyconfig"
)

func ExampleParseGateway() {
	// A gateway's effective Proxy.Config: its own options over proxy-defaults'.
	g, err := proxyconfig.ParseGateway(map[string]any{
		"connect_timeout_ms":                        2500,
		"envoy_gateway_bind_addresses":              map[string]any{"public": map[string]any{"address": "0.0.0.0", "port": 443}},
		"envoy_gateway_remote_tcp_enable_keepalive": true,
		"envoy_gateway_remote_tcp_keepalive_time":   60,
		"protocol":          "tcp",
		"conect_timeout_ms": 1,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("connect timeout:", g.ConnectTimeout)
	fmt.Println("listen on:", g.Binds("10.0.0.5:8443", nil))
	fmt.Println("keepalive to remote gateways:", g.RemoteKeepAlive.Enable, g.RemoteKeepAlive.Idle)
	fmt.Println("ignored:", g.Ignored, "unknown:", g.Unknown)
	// Output:
	// connect timeout: 2.5s
	// listen on: [10.0.0.5:8443 0.0.0.0:443]
	// keepalive to remote gateways: true 1m0s
	// ignored: [protocol] unknown: [conect_timeout_ms]
}
