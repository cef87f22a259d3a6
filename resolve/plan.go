package resolve

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
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

// Plan is where one upstream's bytes go, and why: its primary target (the
// embedded Target: the service the upstream resolves to, where it is, its
// mode decision and path) and its failover targets, with what a careful
// operator should know.
type Plan struct {
	// Service is the downstream service; Proxy its proxy's name. (The
	// destination service is Target.Service.)
	Service string
	Proxy   string
	// Upstream is the destination service's name, as the upstream names it.
	Upstream string
	// Target is the primary target: Target.Service is Upstream unless a
	// service-resolver redirects it elsewhere (empty means Upstream), and Target.Subset the
	// resolver subset the SNI names (an explicit one or DefaultSubset). For
	// a peered upstream Target.Datacenter is empty and Target.Peer names
	// the peer. Target.Healthy counts the primary target's healthy
	// instances the view knows of.
	Target
	// Resolver says which service-resolvers decided the targets.
	Resolver []string
	// Warnings says what a careful operator should know.
	Warnings []string
	// LocalBindPort is the upstream's local listener port.
	LocalBindPort int
	// Failover lists the failover targets in order (a service-resolver's
	// Failover, or a sameness group's members), each with its own mode and
	// path; empty when there are none. A dialer (sidecar.Dialer) takes the
	// first target of Chain() with healthy instances, and the next when its
	// dials fail.
	Failover []Target
	// Served and PassedOver are set by a dialer: the index in Chain() of the
	// target that carried the connection, and why each target before it was
	// passed over.
	Served     int
	PassedOver []string
}

// Redirected reports whether a service-resolver sent the upstream to
// another service (Target.Service is set and is not Upstream).
func (p Plan) Redirected() bool { return p.Target.Service != "" && p.Target.Service != p.Upstream }

// MarshalJSON writes the plan as one flat object, as examples/explain
// prints it: the primary target's fields beside the plan's, "target" the
// service a service-resolver redirected the upstream to (absent when none).
func (p Plan) MarshalJSON() ([]byte, error) {
	redirected := ""
	if p.Redirected() {
		redirected = p.Target.Service
	}
	return json.Marshal(struct {
		Service       string              `json:"service"`
		Proxy         string              `json:"proxy"`
		Upstream      string              `json:"upstream"`
		Target        string              `json:"target,omitempty"`
		Subset        string              `json:"subset,omitempty"`
		Resolver      []string            `json:"resolver,omitempty"`
		Datacenter    string              `json:"datacenter"`
		Partition     string              `json:"partition"`
		Namespace     string              `json:"namespace"`
		Peer          string              `json:"peer,omitempty"`
		Mode          api.MeshGatewayMode `json:"mode"`
		Layer         modes.Layer         `json:"source"`
		Route         Path                `json:"route"`
		SNI           string              `json:"sni"`
		Dial          []string            `json:"dial"`
		Weights       []int               `json:"weights,omitempty"`
		Balance       Balance             `json:"balance"`
		Hops          []string            `json:"hops"`
		Warnings      []string            `json:"warnings"`
		LocalBindPort int                 `json:"local_bind_port,omitempty"`
		Healthy       int                 `json:"healthy"`
		Failover      []Target            `json:"failover,omitempty"`
		Served        int                 `json:"served,omitempty"`
		PassedOver    []string            `json:"passed_over,omitempty"`
	}{p.Service, p.Proxy, p.Upstream, redirected, p.Subset, p.Resolver, p.Datacenter, p.Partition, p.Namespace, p.Peer,
		p.Mode, p.Layer, p.Route, p.SNI, p.Dial, p.Weights, p.Balance, p.Hops, p.Warnings, p.LocalBindPort, p.Healthy, p.Failover, p.Served, p.PassedOver})
}

// PlanAll plans every upstream of every instance in the view, in order.
func PlanAll(v *mesh.View) []Plan {
	var out []Plan
	for _, inst := range v.Instances {
		out = append(out, PlanInstance(v, inst)...)
	}
	return out
}

// PlanInstance plans every upstream of one proxy instance.
func PlanInstance(v *mesh.View, inst mesh.Instance) []Plan {
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
//   - an upstream without a namespace or partition is in the proxy's;
//   - the mode comes from modes.Resolve over the upstream, the downstream's
//     service-defaults (overrides, defaults, its own mode), the instance and
//     proxy-defaults, and, when none of them sets one, the service-defaults
//     of the service the connection goes to;
//   - service-resolvers move the upstream as Consul's discovery chain
//     compiler does: redirects, the default subset, and failover targets,
//     each with its own mode and path (see Target);
//   - an upstream in the local datacenter and partition is dialled directly
//     whatever the mode;
//   - "none" (or no mode) dials the destination's endpoints, their WAN
//     addresses across datacenters; "local" dials the local gateways;
//     "remote" the destination's gateways;
//   - a peered upstream always crosses a gateway: "none" there becomes
//     "remote", with a warning, as in Consul.
//
// It is a pure function of its arguments.
func PlanUpstream(v *mesh.View, inst mesh.Instance, up api.Upstream) Plan {
	local := v.Local()
	p := Plan{
		Service:       inst.Service,
		Proxy:         inst.Name,
		Upstream:      up.DestinationName,
		LocalBindPort: up.LocalBindPort,
		Warnings:      []string{},
	}
	layers := modes.ForUpstream(up, inst.Proxy, v.ServiceDefaultsFor(inst.Service, inst.Namespace, firstNonEmpty(inst.Partition, v.Partition)), v.ProxyDefaults)
	if err := layers.Validate(); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	if err := modes.CheckUpstream(up); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	self := inst.Service + " sidecar"

	// An upstream without a namespace is in the proxy's, and one without a
	// partition in the proxy's, as the agent fills them in
	// (agent/proxycfg/state.go); a peer's namespace is the one at the peer.
	start := chainTarget{service: up.DestinationName, namespace: firstNonEmpty(up.DestinationNamespace, inst.Namespace),
		partition: firstNonEmpty(up.DestinationPartition, inst.Partition, local.Partition), peer: up.DestinationPeer}
	if start.peer == "" {
		start.datacenter = firstNonEmpty(up.Datacenter, v.Datacenter)
	}
	primary, resolver, notes, problem := resolveTarget(v, normalTarget(v, start))
	p.Resolver = notes
	if problem != "" {
		p.Warnings = append(p.Warnings, problem)
	}
	t, warnings := planTarget(v, self, layers, primary)
	p.Warnings = append(p.Warnings, warnings...)
	p.Target = t
	// Every cluster of the chain takes the primary target's resolver
	// node's policy (makeUpstreamClustersForDiscoveryChain).
	p.Balance, _ = ChainBalance(resolver)
	failover, note, warnings := failoverOf(v, primary, resolver)
	if t.Peer == "" && (mesh.Location{Datacenter: t.Datacenter, Partition: t.Partition}) == local && t.Mode != api.MeshGatewayModeDefault && t.Mode != api.MeshGatewayModeNone {
		which := ""
		if len(failover) > 0 {
			which = " for the primary target"
		}
		p.Warnings = append(p.Warnings, fmt.Sprintf("mode %q from %s is ignored%s: %s is in the local datacenter and partition", t.Mode, t.Layer, which, p.Upstream))
	}
	p.Warnings = append(p.Warnings, warnings...)
	switch len(failover) {
	case 0:
	case 1:
		p.Resolver = append(p.Resolver, note+": 1 failover target")
	default:
		p.Resolver = append(p.Resolver, fmt.Sprintf("%s: %d failover targets", note, len(failover)))
	}
	for _, f := range failover {
		resolved, _, _, problem := resolveTarget(v, f)
		if problem != "" {
			p.Warnings = append(p.Warnings, "failover: "+problem)
		}
		ft, warnings := planTarget(v, self, layers, resolved)
		ft.Balance = p.Balance
		for _, w := range warnings {
			p.Warnings = append(p.Warnings, "failover "+ft.String()+": "+w)
		}
		p.Failover = append(p.Failover, ft)
	}
	return p
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

// endpointsOf returns a target's healthy endpoints: its subset's when it
// names one.
func endpointsOf(v *mesh.View, t chainTarget) []mesh.Endpoint {
	if t.subset != "" {
		return v.SubsetEndpoints(t.service, t.subset, t.namespace, t.partition, t.datacenter)
	}
	return v.Endpoints(t.service, t.namespace, t.partition, t.datacenter)
}

// serviceSNI is the SNI of a target in this cluster.
func serviceSNI(v *mesh.View, t chainTarget) string {
	return sni.ServiceSNI(t.service, t.subset, t.namespace, t.partition, t.datacenter, v.TrustDomain)
}

// peeredSNI is the SNI a peer expects for one of its services, built with
// the peer's trust domain and the name it gave this cluster.
func peeredSNI(service, namespace, partition string, peer mesh.Peer) string {
	return sni.PeeredServiceSNI(service, namespace, partition, peer.NameAtPeer, peer.TrustDomain)
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
