package resolve

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/sni"
)

// Path says which way an upstream's connections go.
type Path string

// The paths an upstream can take.
const (
	// PathDirect dials the destination's endpoints (WAN addresses across
	// datacenters).
	PathDirect Path = "direct"
	// PathLocalGateway dials a mesh gateway of the local datacenter, which
	// forwards to the destination's gateways.
	PathLocalGateway Path = "local-gateway"
	// PathRemoteGateway dials a mesh gateway of the destination (another
	// datacenter, partition or peer).
	PathRemoteGateway Path = "remote-gateway"
)

// Plan is where one upstream's bytes go, and why.
type Plan struct {
	// Service is the downstream service; Proxy its proxy's name.
	Service string `json:"service"`
	Proxy   string `json:"proxy"`
	// Upstream is the destination service's name, as the upstream names it.
	Upstream string `json:"upstream"`
	// Target is the service the upstream resolves to when a
	// service-resolver redirects it elsewhere; empty otherwise. Subset is
	// the resolver subset the SNI names (an explicit one or DefaultSubset).
	// Resolver says which service-resolvers decided them.
	Target   string   `json:"target,omitempty"`
	Subset   string   `json:"subset,omitempty"`
	Resolver []string `json:"resolver,omitempty"`
	// Datacenter and Partition are where the destination is; for a peered
	// upstream Datacenter is empty and Peer names the peer.
	Datacenter string `json:"datacenter"`
	Partition  string `json:"partition"`
	Namespace  string `json:"namespace"`
	Peer       string `json:"peer,omitempty"`
	// Mode and Source are the mode decision: the value as set ("" when no
	// layer sets one) and the layer that decided.
	Mode   api.MeshGatewayMode `json:"mode"`
	Source modes.Source        `json:"source"`
	// Route is the path the mode gives this upstream.
	Route Path `json:"route"`
	// SNI is the server name the sidecar sends.
	SNI string `json:"sni"`
	// Dial lists the addresses to try, in order; empty when the view does not
	// know them.
	Dial []string `json:"dial"`
	// Hops describes the path, such as ["web sidecar", "gateway dc1",
	// "gateway dc2", "api dc2"].
	Hops []string `json:"hops"`
	// Warnings says what a careful operator should know.
	Warnings []string `json:"warnings"`
	// LocalBindPort is the upstream's local listener port.
	LocalBindPort int `json:"local_bind_port,omitempty"`
}

// PlanAll plans every upstream of every instance in the view, in order.
func PlanAll(v *View) []Plan {
	var out []Plan
	for _, inst := range v.Instances {
		out = append(out, PlanInstance(v, inst)...)
	}
	return out
}

// PlanInstance plans every upstream of one proxy instance.
func PlanInstance(v *View, inst Instance) []Plan {
	if inst.Proxy == nil {
		return nil
	}
	out := make([]Plan, 0, len(inst.Proxy.Upstreams))
	for _, up := range inst.Proxy.Upstreams {
		out = append(out, PlanUpstream(v, inst, up))
	}
	return out
}

// PlanUpstream applies Consul's semantics to one upstream of inst:
//   - the mode comes from modes.Resolve over the upstream, the downstream's
//     service-defaults (overrides, defaults, its own mode), the instance and
//     proxy-defaults;
//   - an upstream in the local datacenter and partition is dialled directly
//     whatever the mode;
//   - "none" (or no mode) dials the destination's endpoints, their WAN
//     addresses across datacenters; "local" dials the local gateways;
//     "remote" the destination's gateways;
//   - a peered upstream always crosses a gateway: "none" there becomes
//     "remote", with a warning, as in Consul.
//
// It is a pure function of its arguments.
func PlanUpstream(v *View, inst Instance, up api.Upstream) Plan {
	local := v.Local()
	p := Plan{
		Service:       inst.Service,
		Proxy:         inst.Name,
		Upstream:      up.DestinationName,
		Namespace:     tenancy.OrDefault(up.DestinationNamespace),
		Partition:     tenancy.OrDefault(firstNonEmpty(up.DestinationPartition, inst.Partition, local.Partition)),
		Peer:          up.DestinationPeer,
		LocalBindPort: up.LocalBindPort,
		Dial:          []string{},
		Warnings:      []string{},
	}
	if p.Peer == "" {
		p.Datacenter = firstNonEmpty(up.Datacenter, v.Datacenter)
	}
	target := followResolvers(v, &p)
	layers := modes.ForUpstream(up, inst.Proxy, v.ServiceDefaults[inst.Service], v.ProxyDefaults)
	d := modes.Decide(layers)
	p.Mode, p.Source = d.Mode, d.Source
	if err := layers.Validate(); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	if err := modes.CheckUpstream(up); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	self := inst.Service + " sidecar"

	if p.Peer != "" {
		planPeered(v, &p, target, d, self)
		return p
	}

	dest := Location{p.Datacenter, p.Partition}
	destHop := target + " " + dest.String()
	p.SNI = sni.ServiceSNI(target, p.Subset, p.Namespace, p.Partition, p.Datacenter, v.TrustDomain)
	crossDC := dest.Datacenter != local.Datacenter
	switch {
	case dest == local:
		p.Route = PathDirect
		if d.Mode != api.MeshGatewayModeDefault && d.Mode != api.MeshGatewayModeNone {
			p.Warnings = append(p.Warnings, fmt.Sprintf("mode %q from %s is ignored: %s is in the local datacenter and partition", d.Mode, d.Source, p.Upstream))
		}
		p.Dial = addrs(endpointsOf(v, target, p), false)
		p.Hops = []string{self, destHop}
	case d.Effective() == api.MeshGatewayModeLocal:
		p.Route = PathLocalGateway
		p.Dial = addrs(v.GatewaysIn(local), false)
		p.Hops = []string{self, "gateway " + local.String(), "gateway " + dest.String(), destHop}
	case d.Effective() == api.MeshGatewayModeRemote:
		p.Route = PathRemoteGateway
		p.Dial = addrs(v.GatewaysIn(dest), crossDC)
		p.Hops = []string{self, "gateway " + dest.String(), destHop}
	default:
		p.Route = PathDirect
		p.Dial = addrs(endpointsOf(v, target, p), crossDC)
		p.Hops = []string{self, destHop}
	}
	if len(p.Dial) == 0 {
		p.Warnings = append(p.Warnings, "no addresses known for "+p.Hops[1])
	}
	return p
}

func planPeered(v *View, p *Plan, target string, d modes.Decision, self string) {
	peer, known := v.Peers[p.Peer]
	gateways := peer.Gateways
	im, imported := peer.Import(target, p.Namespace)
	if imported && len(im.Gateways) > 0 {
		gateways = im.Gateways
	}
	destHop := target + " peer " + p.Peer
	peerHop := "gateway peer " + p.Peer
	switch d.Mode {
	case api.MeshGatewayModeNone:
		p.Warnings = append(p.Warnings, fmt.Sprintf("mode \"none\" from %s is treated as \"remote\": peered upstreams always cross a mesh gateway", d.Source))
		fallthrough
	case api.MeshGatewayModeDefault, api.MeshGatewayModeRemote:
		p.Route = PathRemoteGateway
		p.Dial = append(p.Dial, gateways...)
		p.Hops = []string{self, peerHop, destHop}
	case api.MeshGatewayModeLocal:
		p.Route = PathLocalGateway
		p.Dial = addrs(v.GatewaysIn(v.Local()), false)
		p.Hops = []string{self, "gateway " + v.Local().String(), peerHop, destHop}
	default:
		p.Route = PathRemoteGateway
		p.Hops = []string{self, peerHop, destHop}
	}
	switch {
	case imported && im.SNI != "":
		p.SNI = im.SNI
	case !known:
		p.Warnings = append(p.Warnings, fmt.Sprintf("peer %q is unknown: its trust domain, and so the SNI, and its gateways are not known", p.Peer))
	case peer.TrustDomain == "" || peer.NameAtPeer == "":
		p.Warnings = append(p.Warnings, fmt.Sprintf("peer %q lacks trust_domain or name_at_peer: the SNI is not known", p.Peer))
	default:
		p.SNI = sni.PeeredServiceSNI(target, p.Namespace, p.Partition, peer.NameAtPeer, peer.TrustDomain)
	}
	if len(p.Dial) == 0 && known {
		p.Warnings = append(p.Warnings, "no addresses known for "+p.Hops[1])
	}
}

// maxRedirects bounds how many service-resolver redirects are followed, so
// that a cycle of redirects ends.
const maxRedirects = 8

// followResolvers applies the view's service-resolvers to the upstream of
// p as Consul's discovery chain does where the SNI depends on them: each
// Redirect moves the target (service, subset, namespace, partition,
// datacenter or peer), and the DefaultSubset of the service finally reached
// applies when no subset was chosen. It updates p and returns the target
// service's name.
func followResolvers(v *View, p *Plan) string {
	target := p.Upstream
	seen := map[string]bool{}
	for range maxRedirects {
		r := v.Resolvers[target]
		if r == nil || r.Redirect == nil || seen[target] || p.Peer != "" {
			break
		}
		seen[target] = true
		rd := r.Redirect
		p.Resolver = append(p.Resolver, fmt.Sprintf("service-resolver %q redirects to %s", target, describeRedirect(rd)))
		if rd.Service != "" && rd.Service != target {
			target, p.Subset = rd.Service, ""
		}
		if rd.ServiceSubset != "" {
			p.Subset = rd.ServiceSubset
		}
		if rd.Namespace != "" {
			p.Namespace = rd.Namespace
		}
		if rd.Partition != "" {
			p.Partition = rd.Partition
		}
		if rd.Datacenter != "" {
			p.Datacenter = rd.Datacenter
		}
		if rd.Peer != "" {
			p.Peer, p.Datacenter = rd.Peer, ""
		}
	}
	if r := v.Resolvers[target]; r != nil && p.Subset == "" && r.DefaultSubset != "" && p.Peer == "" {
		p.Subset = r.DefaultSubset
		p.Resolver = append(p.Resolver, fmt.Sprintf("service-resolver %q: default subset %q", target, r.DefaultSubset))
	}
	if target != p.Upstream {
		p.Target = target
	}
	return target
}

func describeRedirect(r *api.ServiceResolverRedirect) string {
	var parts []string
	for _, f := range []struct{ k, v string }{{"service", r.Service}, {"subset", r.ServiceSubset}, {"namespace", r.Namespace},
		{"partition", r.Partition}, {"datacenter", r.Datacenter}, {"peer", r.Peer}, {"sameness group", r.SamenessGroup}} {
		if f.v != "" {
			parts = append(parts, f.k+" "+f.v)
		}
	}
	return strings.Join(parts, ", ")
}

// endpointsOf returns the endpoints the plan dials when it goes directly:
// the subset's when the plan names one.
func endpointsOf(v *View, service string, p Plan) []Endpoint {
	if p.Subset != "" {
		return v.SubsetEndpoints(service, p.Subset, p.Namespace, p.Partition, p.Datacenter)
	}
	return v.Endpoints(service, p.Namespace, p.Partition, p.Datacenter)
}

// addrs returns the endpoints' addresses, preferring WAN ones when wan is set.
func addrs(eps []Endpoint, wan bool) []string {
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		if a := e.BestAddress(wan); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
