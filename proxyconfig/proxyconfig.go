// Package proxyconfig reads the options in a mesh gateway's Proxy.Config, as
// Consul 1.22 defines them for its own gateways (GatewayConfig in Consul's
// agent/xds/config), and keeps those that mean something without Envoy:
// the connect timeout, the addresses to listen on, TCP keepalive towards
// other datacenters' and peers' gateways, and the request header bound of
// the L7 exports it terminates.
//
// A gateway's effective Proxy.Config is its registration's Proxy.Config over
// the proxy-defaults entry's Config (the local agent merges them:
// registration.GatewayService returns the result). Since proxy-defaults is
// shared with sidecars, it also carries options for them and for Envoy's
// bootstrap; ParseGateway lists those as Ignored, and options Consul does
// not define at all (a misspelling, most likely) as Unknown, so neither is
// dropped silently.
package proxyconfig

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
)

// The options ParseGateway applies, by the names Consul gives them.
const (
	ConnectTimeoutMs        = "connect_timeout_ms"
	BindTaggedAddresses     = "envoy_gateway_bind_tagged_addresses"
	BindAddresses           = "envoy_gateway_bind_addresses"
	NoDefaultBind           = "envoy_gateway_no_default_bind"
	RemoteKeepAliveEnable   = "envoy_gateway_remote_tcp_enable_keepalive"
	RemoteKeepAliveTime     = "envoy_gateway_remote_tcp_keepalive_time"
	RemoteKeepAliveInterval = "envoy_gateway_remote_tcp_keepalive_interval"
	RemoteKeepAliveProbes   = "envoy_gateway_remote_tcp_keepalive_probes"
	MaxRequestHeadersKB     = "max_request_headers_kb"
	meshGatewayAliasPrefix  = "envoy_mesh_gateway_"
)

// maxRequestHeadersKB is the largest max_request_headers_kb Envoy accepts.
const maxRequestHeadersKB = 8192

// aliases are the older names Consul still accepts for the bind options.
var aliases = map[string]string{
	meshGatewayAliasPrefix + "bind_tagged_addresses": BindTaggedAddresses,
	meshGatewayAliasPrefix + "bind_addresses":        BindAddresses,
	meshGatewayAliasPrefix + "no_default_bind":       NoDefaultBind,
}

// withoutEnvoy are the options Consul defines (for gateways, sidecars or
// Envoy's bootstrap) that have no meaning for a gateway without Envoy.
var withoutEnvoy = map[string]bool{
	"protocol": true, "bind_address": true, "bind_port": true,
	"local_connect_timeout_ms": true, "local_request_timeout_ms": true, "local_idle_timeout_ms": true,
	"max_inbound_connections": true, "balance_inbound_connections": true,
	"xds_fetch_timeout_ms": true, "envoy_dns_discovery_type": true,
	"envoy_bootstrap_json_tpl": true, "envoy_public_listener_json": true, "envoy_local_cluster_json": true,
	"envoy_listener_tracing_json": true, "envoy_tracing_json": true,
	"envoy_extra_static_clusters_json": true, "envoy_extra_static_listeners_json": true,
	"envoy_extra_stats_sinks_json": true, "envoy_stats_config_json": true, "envoy_stats_flush_interval": true,
	"envoy_stats_tags": true, "envoy_statsd_url": true, "envoy_dogstatsd_url": true,
	"envoy_prometheus_bind_addr": true, "envoy_stats_bind_addr": true,
	"envoy_telemetry_collector_bind_socket_dir": true,
}

// Gateway is what a mesh gateway's Proxy.Config asks of meshgate.
type Gateway struct {
	// ConnectTimeout bounds each dial (connect_timeout_ms); zero when the
	// option is unset or below 1, where Consul uses 5 s. A service-resolver's
	// ConnectTimeout still overrides it for its service.
	ConnectTimeout time.Duration
	// NoDefaultBind: do not listen on the gateway's own address and port.
	NoDefaultBind bool
	// BindTaggedAddresses: also listen on each of the registration's tagged
	// addresses.
	BindTaggedAddresses bool
	// BindAddresses are more addresses to listen on, "host:port" by the
	// name the option gives each.
	BindAddresses map[string]string
	// RemoteKeepAlive is TCP keepalive for connections to other datacenters'
	// and peers' gateways (envoy_gateway_remote_tcp_*): Enable, and Idle,
	// Interval and Count from the time (seconds), interval (seconds) and
	// probes options; an unset one is -1, the operating system's default,
	// as Envoy leaves it.
	RemoteKeepAlive net.KeepAliveConfig
	// MaxRequestHeadersKB bounds the request headers of the peers' HTTP
	// requests to exports the gateway terminates (max_request_headers_kb,
	// which Consul hands to the gateway's HTTP connection managers); zero
	// when unset or below 1, where Envoy's default, 60, applies.
	MaxRequestHeadersKB int
	// Ignored lists, sorted, the options given that Consul defines but that
	// mean nothing without Envoy (such as protocol or envoy_stats_tags).
	Ignored []string
	// Unknown lists, sorted, the options given that Consul does not define.
	Unknown []string
}

// ParseService reads the options of a registered gateway as the agent
// returns it (registration.GatewayService): its Proxy.Config, its own over
// the proxy-defaults entry's. The error names the service.
func ParseService(svc *api.AgentService) (Gateway, error) {
	var config map[string]any
	if svc.Proxy != nil {
		config = svc.Proxy.Config
	}
	opts, err := ParseGateway(config)
	if err != nil {
		return opts, fmt.Errorf("gateway %q's Proxy.Config (its own over proxy-defaults'): %w", svc.ID, err)
	}
	return opts, nil
}

// ParseGateway reads config, a gateway's effective Proxy.Config (as decoded
// from Consul's JSON, or built by hand). Values are read as Consul reads
// them, weakly typed: a number may be given as a string, a boolean as
// "true" or 1. Every option whose value is unusable is reported in one
// error, naming the option and the value.
func ParseGateway(config map[string]any) (Gateway, error) {
	g := Gateway{RemoteKeepAlive: net.KeepAliveConfig{Idle: -1, Interval: -1, Count: -1}}
	var errs []error
	for key, value := range config {
		name := strings.ToLower(key)
		if canonical, ok := aliases[name]; ok {
			name = canonical
		}
		var err error
		switch name {
		case ConnectTimeoutMs:
			var ms int64
			if ms, err = wholeNumber(value); err == nil && ms >= 1 {
				g.ConnectTimeout = time.Duration(ms) * time.Millisecond
			}
		case NoDefaultBind:
			g.NoDefaultBind, err = boolean(value)
		case BindTaggedAddresses:
			g.BindTaggedAddresses, err = boolean(value)
		case BindAddresses:
			g.BindAddresses, err = bindAddresses(value)
		case RemoteKeepAliveEnable:
			g.RemoteKeepAlive.Enable, err = boolean(value)
		case RemoteKeepAliveTime:
			g.RemoteKeepAlive.Idle, err = seconds(value)
		case RemoteKeepAliveInterval:
			g.RemoteKeepAlive.Interval, err = seconds(value)
		case RemoteKeepAliveProbes:
			g.RemoteKeepAlive.Count, err = probes(value)
		case MaxRequestHeadersKB:
			var kb int64
			if kb, err = wholeNumber(value); err == nil && kb >= 1 {
				if kb > maxRequestHeadersKB {
					err = fmt.Errorf("%d is over Envoy's limit, %d", kb, maxRequestHeadersKB)
				} else {
					g.MaxRequestHeadersKB = int(kb)
				}
			}
		default:
			if withoutEnvoy[name] {
				g.Ignored = append(g.Ignored, key)
			} else {
				g.Unknown = append(g.Unknown, key)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("proxyconfig: %s: %w", key, err))
		}
	}
	sort.Strings(g.Ignored)
	sort.Strings(g.Unknown)
	sortErrors(errs)
	return g, problems.Join(errs...)
}

// Binds returns the addresses a gateway registered at address ("host:port",
// where an empty host means every interface) with taggedAddresses listens
// on: its own unless NoDefaultBind, each tagged one if BindTaggedAddresses,
// and BindAddresses, without duplicates, in Consul's order (sorted by name,
// the own address named "default").
func (g Gateway) Binds(address string, taggedAddresses map[string]string) []string {
	named := map[string]string{}
	if !g.NoDefaultBind && address != "" {
		named["default"] = address
	}
	if g.BindTaggedAddresses {
		for name, a := range taggedAddresses {
			named[name] = a
		}
	}
	for name, a := range g.BindAddresses {
		named[name] = a
	}
	names := make([]string, 0, len(named))
	for name := range named {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []string
	seen := map[string]bool{}
	for _, name := range names {
		if a := named[name]; !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// Known reports whether Consul defines the option name for a gateway, sidecar
// or Envoy's bootstrap, whether or not meshgate applies it.
func Known(name string) bool {
	name = strings.ToLower(name)
	if _, ok := aliases[name]; ok || withoutEnvoy[name] {
		return true
	}
	switch name {
	case ConnectTimeoutMs, NoDefaultBind, BindTaggedAddresses, BindAddresses,
		RemoteKeepAliveEnable, RemoteKeepAliveTime, RemoteKeepAliveInterval, RemoteKeepAliveProbes, MaxRequestHeadersKB:
		return true
	}
	return false
}

func bindAddresses(value any) (map[string]string, error) {
	m, ok := value.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a map of name to {address, port}, got %s", describe(value))
	}
	out := make(map[string]string, len(m))
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		a, ok := m[name].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: want {address, port}, got %s", name, describe(m[name]))
		}
		var host string
		var port int64 = -1
		for k, v := range a {
			switch strings.ToLower(k) {
			case "address":
				s, ok := v.(string)
				if !ok {
					return nil, fmt.Errorf("%s: address: want a string, got %s", name, describe(v))
				}
				host = s
			case "port":
				p, err := wholeNumber(v)
				if err != nil {
					return nil, fmt.Errorf("%s: port: %w", name, err)
				}
				port = p
			default:
				return nil, fmt.Errorf("%s: unknown field %q (want address and port)", name, k)
			}
		}
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("%s: port %d out of range 1-65535", name, port)
		}
		out[name] = net.JoinHostPort(host, strconv.FormatInt(port, 10))
	}
	return out, nil
}

// wholeNumber reads value as mapstructure's weakly typed input does an int.
func wholeNumber(value any) (int64, error) {
	switch v := value.(type) {
	case int:
		return int64(v), nil
	case int32:
		return int64(v), nil
	case int64:
		return v, nil
	case float64:
		if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
			return 0, fmt.Errorf("want a whole number, got %v", v)
		}
		return int64(v), nil
	case json.Number:
		return parseWhole(v.String())
	case string:
		return parseWhole(v)
	case bool:
		if v {
			return 1, nil
		}
		return 0, nil
	}
	return 0, fmt.Errorf("want a whole number, got %s", describe(value))
}

func parseWhole(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("want a whole number, got %q", s)
	}
	return n, nil
}

// boolean reads value as mapstructure's weakly typed input does a bool.
func boolean(value any) (bool, error) {
	switch v := value.(type) {
	case bool:
		return v, nil
	case string:
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("want true or false, got %q", v)
		}
		return b, nil
	}
	n, err := wholeNumber(value)
	if err != nil {
		return false, fmt.Errorf("want true or false, got %s", describe(value))
	}
	return n != 0, nil
}

func seconds(value any) (time.Duration, error) {
	n, err := wholeNumber(value)
	if err != nil {
		return 0, err
	}
	if n < 0 || n > math.MaxInt32 {
		return 0, fmt.Errorf("%d seconds out of range", n)
	}
	if n == 0 {
		return -1, nil
	}
	return time.Duration(n) * time.Second, nil
}

func probes(value any) (int, error) {
	n, err := wholeNumber(value)
	switch {
	case err != nil:
		return 0, err
	case n < 0 || n > math.MaxInt32:
		return 0, fmt.Errorf("%d probes out of range", n)
	case n == 0:
		return -1, nil
	}
	return int(n), nil
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("%q", v)
	case map[string]any:
		return "a map"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%v (%T)", v, v)
}

func sortErrors(errs []error) {
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
}
