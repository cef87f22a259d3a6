package proxyconfig_test

import (
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fromJSON decodes src as the Consul API client does a service's Proxy.Config.
func fromJSON(t *testing.T, src string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(src), &m))
	return m
}

func TestParseGatewayReadsEachOption(t *testing.T) {
	g, err := proxyconfig.ParseGateway(fromJSON(t, `{
		"connect_timeout_ms": 1500,
		"envoy_gateway_no_default_bind": true,
		"envoy_gateway_bind_tagged_addresses": "true",
		"envoy_gateway_bind_addresses": {"all": {"address": "127.0.0.2", "port": 8444}, "v6": {"Address": "::1", "Port": "8445"}},
		"envoy_gateway_remote_tcp_enable_keepalive": 1,
		"envoy_gateway_remote_tcp_keepalive_time": 30,
		"envoy_gateway_remote_tcp_keepalive_interval": "5",
		"envoy_gateway_remote_tcp_keepalive_probes": 4,
		"max_request_headers_kb": 96,
		"protocol": "tcp",
		"envoy_prometheus_bind_addr": "0.0.0.0:9102",
		"conect_timeout_ms": 10
	}`))
	require.NoError(t, err)
	assert.Equal(t, proxyconfig.Gateway{
		ConnectTimeout:      1500 * time.Millisecond,
		NoDefaultBind:       true,
		BindTaggedAddresses: true,
		BindAddresses:       map[string]string{"all": "127.0.0.2:8444", "v6": "[::1]:8445"},
		RemoteKeepAlive:     net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 4},
		MaxRequestHeadersKB: 96,
		Ignored:             []string{"envoy_prometheus_bind_addr", "protocol"},
		Unknown:             []string{"conect_timeout_ms"},
	}, g)
}

func TestParseGatewayDefaults(t *testing.T) {
	for _, config := range []map[string]any{nil, {"connect_timeout_ms": 0}, {"connect_timeout_ms": -5}} {
		g, err := proxyconfig.ParseGateway(config)
		require.NoError(t, err)
		assert.Zero(t, g.ConnectTimeout, "%v: below 1 ms is Consul's default", config)
		assert.False(t, g.RemoteKeepAlive.Enable)
		assert.Equal(t, net.KeepAliveConfig{Idle: -1, Interval: -1, Count: -1}, g.RemoteKeepAlive,
			"unset keepalive parameters are the system's")
	}
}

// max_request_headers_kb bounds the terminated exports' request headers,
// within Envoy's limit of 8 MiB.
func TestParseGatewayMaxRequestHeaders(t *testing.T) {
	g, err := proxyconfig.ParseGateway(map[string]any{"max_request_headers_kb": "8192"})
	require.NoError(t, err)
	assert.Equal(t, 8192, g.MaxRequestHeadersKB)
	_, err = proxyconfig.ParseGateway(map[string]any{"max_request_headers_kb": 8193})
	assert.EqualError(t, err, "proxyconfig: max_request_headers_kb: 8193 is over Envoy's limit, 8192")
}

func TestParseGatewayAcceptsConsulsOlderNames(t *testing.T) {
	g, err := proxyconfig.ParseGateway(map[string]any{
		"envoy_mesh_gateway_no_default_bind":       true,
		"envoy_mesh_gateway_bind_tagged_addresses": true,
		"envoy_mesh_gateway_bind_addresses":        map[string]any{"x": map[string]any{"address": "127.0.0.3", "port": 1}},
	})
	require.NoError(t, err)
	assert.True(t, g.NoDefaultBind)
	assert.True(t, g.BindTaggedAddresses)
	assert.Equal(t, map[string]string{"x": "127.0.0.3:1"}, g.BindAddresses)
	assert.Empty(t, g.Unknown)
}

func TestParseGatewayNamesEachBadValue(t *testing.T) {
	_, err := proxyconfig.ParseGateway(fromJSON(t, `{
		"connect_timeout_ms": "soon",
		"envoy_gateway_no_default_bind": "maybe",
		"envoy_gateway_remote_tcp_keepalive_time": 1.5,
		"envoy_gateway_remote_tcp_keepalive_probes": -2,
		"envoy_gateway_bind_addresses": {"a": {"address": "127.0.0.1", "port": 70000}}
	}`))
	var me *multierror.Error
	require.True(t, errors.As(err, &me), "%v", err)
	require.Len(t, me.Errors, 5, "%v", err)
	for _, want := range []string{
		`connect_timeout_ms: want a whole number, got "soon"`,
		`envoy_gateway_no_default_bind: want true or false, got "maybe"`,
		`envoy_gateway_remote_tcp_keepalive_time: want a whole number, got 1.5`,
		`envoy_gateway_remote_tcp_keepalive_probes: -2 probes out of range`,
		`envoy_gateway_bind_addresses: a: port 70000 out of range 1-65535`,
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestParseGatewayBindAddressShapes(t *testing.T) {
	for src, want := range map[string]string{
		`"0.0.0.0:1"`:                               `want a map of name to {address, port}, got "0.0.0.0:1"`,
		`{"a": "0.0.0.0:1"}`:                        `a: want {address, port}, got "0.0.0.0:1"`,
		`{"a": {"address": 7, "port": 1}}`:          `a: address: want a string, got 7 (float64)`,
		`{"a": {"address": "x"}}`:                   `a: port -1 out of range`,
		`{"a": {"addr": "x", "port": 1}}`:           `a: unknown field "addr" (want address and port)`,
		`{"a": {"address": "x", "port": "eighty"}}`: `a: port: want a whole number, got "eighty"`,
	} {
		_, err := proxyconfig.ParseGateway(fromJSON(t, `{"envoy_gateway_bind_addresses": `+src+`}`))
		require.Error(t, err, src)
		assert.Contains(t, err.Error(), want, src)
	}
}

func TestBindsFollowsConsulsOrderWithoutDuplicates(t *testing.T) {
	tagged := map[string]string{"lan": "127.0.0.1:8443", "wan": "127.0.0.9:443", "wan_ipv4": "127.0.0.9:443"}
	g := proxyconfig.Gateway{BindTaggedAddresses: true, BindAddresses: map[string]string{"extra": "127.0.0.5:8443"}}
	assert.Equal(t, []string{"127.0.0.1:8443", "127.0.0.5:8443", "127.0.0.9:443"}, g.Binds("127.0.0.1:8443", tagged),
		"default, extra, lan (same as default), wan, wan_ipv4 (same as wan)")

	assert.Equal(t, []string{"127.0.0.1:8443"}, proxyconfig.Gateway{}.Binds("127.0.0.1:8443", tagged),
		"tagged addresses only with BindTaggedAddresses")
	g = proxyconfig.Gateway{NoDefaultBind: true, BindAddresses: map[string]string{"only": "127.0.0.5:1"}}
	assert.Equal(t, []string{"127.0.0.5:1"}, g.Binds("127.0.0.1:8443", tagged))
	assert.Empty(t, proxyconfig.Gateway{NoDefaultBind: true}.Binds("127.0.0.1:8443", nil))
}

func TestKnown(t *testing.T) {
	for _, name := range []string{"connect_timeout_ms", "Protocol", "envoy_mesh_gateway_no_default_bind", "envoy_stats_tags"} {
		assert.True(t, proxyconfig.Known(name), name)
	}
	for _, name := range []string{"conect_timeout_ms", "envoy_gateway_bind", ""} {
		assert.False(t, proxyconfig.Known(name), name)
	}
}
