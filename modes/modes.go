// Package modes decides a Consul upstream's mesh-gateway mode: the value
// (api.MeshGatewayMode: "", "none", "local" or "remote"), its validation, and
// the precedence between the layers that may set it, reporting which layer
// decided.
//
// Layers, highest first (Consul's order, with the two finer service-defaults
// layers in their places):
//
//	upstream            the upstream definition's mesh_gateway
//	upstream-override   the downstream's service-defaults UpstreamConfig.Overrides entry for this upstream
//	instance            the proxy registration's proxy.mesh_gateway
//	upstream-defaults   the downstream's service-defaults UpstreamConfig.Defaults
//	service-defaults    the downstream's service-defaults MeshGateway
//	proxy-defaults      proxy-defaults "global" MeshGateway
//	destination-defaults the service-defaults MeshGateway of the service the
//	                    connection goes to (each target of a discovery chain:
//	                    after redirects, and each failover target)
//
// An empty mode means "not set here" and defers to the next layer; when no
// layer sets one the result is "" from source "default", which behaves as
// "none".
//
// The last layer is Consul's discovery chain compiler at work: the agent
// resolves the first six into the upstream's mode and hands it to the
// compiler as an override; only when that is empty does each target take
// its own service's service-defaults mode (compile.go, getResolverNode).
// So two targets of one chain can take different paths.
package modes

import (
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
)

// Layer names one of the layers that may set a mode, and the one that
// decided.
type Layer string

// The layers, as named in output.
const (
	LayerUpstream         Layer = "upstream"
	LayerUpstreamOverride Layer = "upstream-override"
	LayerInstance         Layer = "instance"
	LayerUpstreamDefaults Layer = "upstream-defaults"
	LayerServiceDefaults  Layer = "service-defaults"
	LayerProxyDefaults    Layer = "proxy-defaults"
	// LayerDestinationDefaults is the service-defaults of the destination
	// service (a discovery chain target's), consulted only when no layer
	// above sets a mode.
	LayerDestinationDefaults Layer = "destination-defaults"
	LayerDefault             Layer = "default"
)

// Precedence lists the layers that can set a mode, highest first.
func Precedence() []Layer {
	return []Layer{LayerUpstream, LayerUpstreamOverride, LayerInstance, LayerUpstreamDefaults, LayerServiceDefaults, LayerProxyDefaults,
		LayerDestinationDefaults}
}

// ErrInvalidMode is wrapped by the error for a mode Consul does not know.
var ErrInvalidMode = errors.New("modes: invalid mesh gateway mode")

// Validate returns nil for the four modes Consul knows and otherwise an error
// that wraps ErrInvalidMode, names the value and lists the valid ones. As in
// Consul, the comparison is case-sensitive.
func Validate(m api.MeshGatewayMode) error {
	switch m {
	case api.MeshGatewayModeDefault, api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote:
		return nil
	}
	return fmt.Errorf("%w %q (valid: \"\", \"none\", \"local\", \"remote\")", ErrInvalidMode, string(m))
}

// Parse returns s as a mode, or Validate's error.
func Parse(s string) (api.MeshGatewayMode, error) {
	m := api.MeshGatewayMode(s)
	return m, Validate(m)
}

// Layers holds the mode each layer sets; "" means the layer does not set one.
type Layers struct {
	Upstream         api.MeshGatewayMode
	UpstreamOverride api.MeshGatewayMode
	Instance         api.MeshGatewayMode
	UpstreamDefaults api.MeshGatewayMode
	ServiceDefaults  api.MeshGatewayMode
	ProxyDefaults    api.MeshGatewayMode
	// Destination is the destination service's service-defaults mode (see
	// WithDestination); ForUpstream leaves it empty.
	Destination api.MeshGatewayMode
}

// WithDestination returns l with the Destination layer taken from the
// service-defaults entry of the service a target resolves to (nil: none).
func (l Layers) WithDestination(destination *api.ServiceConfigEntry) Layers {
	l.Destination = ""
	if destination != nil {
		l.Destination = destination.MeshGateway.Mode
	}
	return l
}

// Get returns the mode layer s sets.
func (l Layers) Get(s Layer) api.MeshGatewayMode {
	switch s {
	case LayerUpstream:
		return l.Upstream
	case LayerUpstreamOverride:
		return l.UpstreamOverride
	case LayerInstance:
		return l.Instance
	case LayerUpstreamDefaults:
		return l.UpstreamDefaults
	case LayerServiceDefaults:
		return l.ServiceDefaults
	case LayerProxyDefaults:
		return l.ProxyDefaults
	case LayerDestinationDefaults:
		return l.Destination
	}
	return ""
}

// Validate checks every layer and reports each invalid one, naming its layer.
func (l Layers) Validate() error {
	var errs []error
	for _, s := range Precedence() {
		if err := Validate(l.Get(s)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
		}
	}
	return problems.Join(errs...)
}

// Decision is a resolved mode and the layer that decided it.
type Decision struct {
	Mode  api.MeshGatewayMode
	Layer Layer
}

// Effective returns the mode as it behaves: "" behaves as "none".
func (d Decision) Effective() api.MeshGatewayMode {
	if d.Mode == api.MeshGatewayModeDefault {
		return api.MeshGatewayModeNone
	}
	return d.Mode
}

// Decide returns the mode of the highest layer that sets one, or "" from
// LayerDefault. It does not validate; call Layers.Validate first where the
// values come from users.
func Decide(l Layers) Decision {
	for _, s := range Precedence() {
		if m := l.Get(s); m != api.MeshGatewayModeDefault {
			return Decision{Mode: m, Layer: s}
		}
	}
	return Decision{Layer: LayerDefault}
}

// ForUpstream builds the layers for one upstream of a proxy from the consul/api
// types, so callers never pick fields by hand. proxy is the proxy
// registration's configuration (for a sidecar_service, its proxy block);
// serviceDefaults is the downstream service's service-defaults entry and
// proxyDefaults the proxy-defaults "global" entry. Any of the three may be nil.
func ForUpstream(up api.Upstream, proxy *api.AgentServiceConnectProxyConfig, serviceDefaults *api.ServiceConfigEntry, proxyDefaults *api.ProxyConfigEntry) Layers {
	l := Layers{Upstream: up.MeshGateway.Mode}
	if proxy != nil {
		l.Instance = proxy.MeshGateway.Mode
	}
	if serviceDefaults != nil {
		l.ServiceDefaults = serviceDefaults.MeshGateway.Mode
		if uc := serviceDefaults.UpstreamConfig; uc != nil {
			if uc.Defaults != nil {
				l.UpstreamDefaults = uc.Defaults.MeshGateway.Mode
			}
			if o := OverrideFor(up, uc.Overrides); o != nil {
				l.UpstreamOverride = o.MeshGateway.Mode
			}
		}
	}
	if proxyDefaults != nil {
		l.ProxyDefaults = proxyDefaults.MeshGateway.Mode
	}
	return l
}

// OverrideFor returns the entry of overrides that applies to up: the same
// service name, namespace, partition and peer, where empty namespace and
// partition mean "default". It returns nil when none applies.
func OverrideFor(up api.Upstream, overrides []*api.UpstreamConfig) *api.UpstreamConfig {
	for _, o := range overrides {
		if o != nil && o.Name == up.DestinationName &&
			tenancy.OrDefault(o.Namespace) == tenancy.OrDefault(up.DestinationNamespace) &&
			tenancy.OrDefault(o.Partition) == tenancy.OrDefault(up.DestinationPartition) &&
			o.Peer == up.DestinationPeer {
			return o
		}
	}
	return nil
}

// ErrUpstreamDatacenterAndPeer is wrapped by CheckUpstream's error for an
// upstream that names both a datacenter and a peer: Consul refuses it, and
// no mode applies to it.
var ErrUpstreamDatacenterAndPeer = errors.New("upstream sets both datacenter and destination_peer")

// CheckUpstream applies Consul's rules to one upstream definition: it has a
// destination, and it is in a datacenter or at a peer, not both.
func CheckUpstream(up api.Upstream) error {
	if up.DestinationName == "" {
		return errors.New("upstream has no destination_name")
	}
	if up.Datacenter != "" && up.DestinationPeer != "" {
		return fmt.Errorf("%w (datacenter %q, destination_peer %q for %q)", ErrUpstreamDatacenterAndPeer, up.Datacenter, up.DestinationPeer, up.DestinationName)
	}
	return nil
}
