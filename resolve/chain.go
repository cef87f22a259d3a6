package resolve

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
)

// Target is one destination of an upstream's discovery chain, as Consul's
// compiler makes it (agent/consul/discoverychain/compile.go): the service
// the upstream resolves to after redirects and default subsets (the primary
// target), or one of its failover targets. Each target has its own mode, so
// its own path: the downstream's layers decide for every target when they
// set a mode, and each target's own service-defaults otherwise.
type Target struct {
	Service   string `json:"service"`
	Subset    string `json:"subset,omitempty"`
	Namespace string `json:"namespace"`
	Partition string `json:"partition"`
	// Datacenter is where the target is; empty for a peer's.
	Datacenter string `json:"datacenter,omitempty"`
	Peer       string `json:"peer,omitempty"`
	// Mode and Layer are the target's mode decision; Route the path it
	// gives.
	Mode  api.MeshGatewayMode `json:"mode"`
	Layer modes.Layer         `json:"source"`
	Route Path                `json:"route"`
	// SNI is the server name the sidecar sends to reach the target.
	SNI string `json:"sni"`
	// Dial lists the addresses to try, in the catalog's order: the
	// target's endpoints or the gateways its route crosses first. Weights
	// holds their weights (nil when all are 1), and Balance the policy a
	// dialer spreads connections over them by: the discovery chain's, its
	// primary target's service-resolver LoadBalancer (ChainBalance), as
	// Envoy's sidecar clusters under Consul.
	Dial    []string `json:"dial"`
	Weights []int    `json:"weights,omitempty"`
	Balance Balance  `json:"balance"`
	// Hops describes the path, as Plan.Hops.
	Hops []string `json:"hops"`
	// Healthy counts the target's healthy instances the view knows of (for
	// a peer's, the routable entries of the import), whatever path reaches
	// them: Consul decides failover by the target's own health, through
	// gateways too. A view holds every service of the local datacenter;
	// another datacenter's only where a topology lists them or a live source
	// follows them (consulview.Source.Follow).
	Healthy int `json:"healthy"`
}

// String names the target as hops do: "api dc2", "v1.api dc1",
// "api peer other", with the namespace and partition where not default.
func (t Target) String() string {
	name := t.Service
	if t.Subset != "" {
		name = t.Subset + "." + name
	}
	if ns := tenancy.OrDefault(t.Namespace); ns != tenancy.Default {
		name += " (namespace " + ns + ")"
	}
	if t.Peer != "" {
		return name + " peer " + t.Peer
	}
	return name + " " + mesh.Location{Datacenter: t.Datacenter, Partition: t.Partition}.String()
}

// Chain returns the plan's targets in the order a dialer tries them: the
// primary target (its Service Upstream when the plan leaves it empty),
// then each failover target.
func (p Plan) Chain() []Target {
	primary := p.Target
	if primary.Service == "" {
		primary.Service = p.Upstream
	}
	return append([]Target{primary}, p.Failover...)
}

// chainTarget is a discovery target being resolved: Consul's
// DiscoveryTargetOpts, with every field filled in (peer targets have no
// datacenter and no subset).
type chainTarget struct {
	service, subset, namespace, partition, datacenter, peer string
}

// id is the target's identity, as Consul's target IDs: two targets with the
// same id are the same destination.
func (t chainTarget) id() string {
	if t.peer != "" {
		return strings.Join([]string{t.service, t.namespace, t.partition, "external", t.peer}, ".")
	}
	id := strings.Join([]string{t.service, t.namespace, t.partition, t.datacenter}, ".")
	if t.subset != "" {
		id = t.subset + "." + id
	}
	return id
}

// targetOpts is what a redirect, a failover entry or a sameness group
// member changes of a target (Consul's DiscoveryTargetOpts).
type targetOpts struct {
	service, subset, namespace, partition, datacenter, peer string
}

// merged is Consul's MergeDiscoveryTargetOpts: later non-empty values win.
func merged(opts ...targetOpts) targetOpts {
	var out targetOpts
	for _, o := range opts {
		for _, f := range []struct {
			dst *string
			v   string
		}{{&out.service, o.service}, {&out.subset, o.subset},
			{&out.namespace, o.namespace}, {&out.partition, o.partition}, {&out.datacenter, o.datacenter}, {&out.peer, o.peer}} {
			if f.v != "" {
				*f.dst = f.v
			}
		}
	}
	return out
}

// rewrite is Consul's compiler.rewriteTarget then newTarget: another
// service drops the subset, a namespace is taken only when given (or with
// a peer), the peer is always the options' own, and a target with no peer
// defaults to the view's datacenter while a peer's has none.
func rewrite(v *mesh.View, t chainTarget, o targetOpts) chainTarget {
	if o.service != "" && o.service != t.service {
		t.service, t.subset = o.service, ""
	}
	if o.subset != "" {
		t.subset = o.subset
	}
	if o.partition != "" {
		t.partition = o.partition
	}
	if o.namespace != "" || o.peer != "" {
		t.namespace = o.namespace
	}
	if o.datacenter != "" {
		t.datacenter = o.datacenter
	}
	t.peer = o.peer
	return normalTarget(v, t)
}

func normalTarget(v *mesh.View, t chainTarget) chainTarget {
	t.namespace = tenancy.OrDefault(t.namespace)
	if t.peer != "" {
		// A peer's services are named in its own datacenter and partition,
		// which the SNI the peer gives carries; subsets do not cross.
		t.datacenter, t.subset = "", ""
		t.partition = v.Local().Partition
		return t
	}
	t.partition = tenancy.OrDefault(t.partition)
	if t.datacenter == "" {
		t.datacenter = v.Datacenter
	}
	return t
}

// maxRedirects bounds how many service-resolver redirects are followed.
const maxRedirects = 16

// resolveTarget applies the service-resolvers to t as Consul's
// getResolverNode does before it builds a node: each Redirect (but one to
// a sameness group, which is a failover) moves the target, and the
// DefaultSubset of the service finally reached names the subset. It
// returns the target, its resolver (nil when the service has none), notes
// on which resolvers decided, and a warning for a chain Consul would refuse
// to compile.
func resolveTarget(v *mesh.View, t chainTarget) (chainTarget, *api.ServiceResolverConfigEntry, []string, string) {
	var notes []string
	seen := map[string]bool{}
	var order []string
	for range maxRedirects {
		if seen[t.id()] {
			order = append(order, t.id())
			return t, nil, notes, "circular service-resolver redirect: " + strings.Join(order, " -> ") + " (Consul refuses to compile this chain)"
		}
		seen[t.id()] = true
		order = append(order, t.id())
		r := resolverOf(v, t)
		if r == nil {
			return t, nil, notes, ""
		}
		if rd := r.Redirect; rd != nil && rd.SamenessGroup == "" {
			next := rewrite(v, t, targetOpts{rd.Service, rd.ServiceSubset, rd.Namespace, rd.Partition, rd.Datacenter, rd.Peer})
			if next.id() != t.id() {
				notes = append(notes, fmt.Sprintf("service-resolver %q redirects to %s", t.service, describeRedirect(rd)))
				t = next
				continue
			}
		}
		if t.subset == "" && r.DefaultSubset != "" {
			t.subset = r.DefaultSubset
			notes = append(notes, fmt.Sprintf("service-resolver %q: default subset %q", t.service, r.DefaultSubset))
			continue
		}
		if t.subset != "" && !definesSubset(r, t.subset) {
			return t, r, notes, fmt.Sprintf("service %q does not have a subset named %q (Consul refuses to compile this chain)", t.service, t.subset)
		}
		return t, r, notes, ""
	}
	return t, nil, notes, fmt.Sprintf("more than %d service-resolver redirects: %s", maxRedirects, strings.Join(order, " -> "))
}

// resolverOf returns the service-resolver that applies to t: its
// service's, or for a service without one a redirect to the sameness group
// that is the default for failover, as Consul materializes it. A peer's
// services are resolved by the peer.
func resolverOf(v *mesh.View, t chainTarget) *api.ServiceResolverConfigEntry {
	if t.peer != "" {
		return nil
	}
	if r := v.ResolverFor(t.service, t.namespace, t.partition); r != nil {
		return r
	}
	if t.partition != v.Local().Partition {
		return nil
	}
	for _, g := range v.SamenessGroups {
		if g.DefaultForFailover {
			return &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: t.service,
				Redirect: &api.ServiceResolverRedirect{SamenessGroup: g.Name}}
		}
	}
	return nil
}

// failoverOf returns the failover targets of the primary target t, whose
// resolver is r, as getResolverNode makes them (before each is resolved in
// turn): the Failover entry for t's subset, else for "*"; its Datacenters,
// its Targets, its sameness group, or its one other service, subset or
// namespace; a redirect to a sameness group too. A target that is t itself
// is left out. It also returns a note and warnings.
func failoverOf(v *mesh.View, t chainTarget, r *api.ServiceResolverConfigEntry) ([]chainTarget, string, []string) {
	if r == nil {
		return nil, "", nil
	}
	var out []chainTarget
	var warnings []string
	add := func(c chainTarget) {
		if c.id() != t.id() { // never fail over to itself
			out = append(out, c)
		}
	}
	sameness := func(opts targetOpts, group string) {
		g := v.SamenessGroups[group]
		if g == nil {
			warnings = append(warnings, fmt.Sprintf("sameness group %q is not defined: no failover targets from it (Consul refuses to compile this chain)", group))
			return
		}
		for _, m := range g.Members {
			add(rewrite(v, t, merged(opts, targetOpts{partition: m.Partition, peer: m.Peer})))
		}
	}
	samenessOpts := targetOpts{service: r.Name, namespace: tenancy.OrDefault(r.Namespace), partition: tenancy.OrDefault(r.Partition)}
	if rd := r.Redirect; rd != nil && rd.SamenessGroup != "" {
		sameness(merged(samenessOpts, targetOpts{rd.Service, rd.ServiceSubset, rd.Namespace, rd.Partition, rd.Datacenter, rd.Peer}), rd.SamenessGroup)
		return out, fmt.Sprintf("service-resolver %q: redirect to sameness group %q", r.Name, rd.SamenessGroup), warnings
	}
	key := t.subset
	f, ok := r.Failover[key]
	if !ok {
		key = "*"
		if f, ok = r.Failover[key]; !ok {
			return nil, "", nil
		}
	}
	if p := f.Policy; p != nil && p.Mode == "order-by-locality" {
		warnings = append(warnings, fmt.Sprintf("failover policy %q is not applied: the targets are in the order written", p.Mode))
	}
	fo := targetOpts{service: f.Service, subset: f.ServiceSubset, namespace: f.Namespace}
	switch {
	case len(f.Datacenters) > 0:
		for _, dc := range f.Datacenters {
			o := fo
			o.datacenter = dc
			add(rewrite(v, t, o))
		}
	case len(f.Targets) > 0:
		for _, ft := range f.Targets {
			add(rewrite(v, t, targetOpts{ft.Service, ft.ServiceSubset, ft.Namespace, ft.Partition, ft.Datacenter, ft.Peer}))
		}
	case f.SamenessGroup != "":
		sameness(merged(samenessOpts, fo), f.SamenessGroup)
	default:
		add(rewrite(v, t, fo))
	}
	return out, fmt.Sprintf("service-resolver %q: Failover[%q]", r.Name, key), warnings
}

// planTarget plans the path to one resolved target: its mode (the
// downstream's layers, else the target's own service-defaults), its route,
// SNI, addresses, hops and health.
func planTarget(v *mesh.View, self string, layers modes.Layers, t chainTarget) (Target, []string) {
	d := modes.Decide(layers.WithDestination(v.ServiceDefaultsFor(t.service, t.namespace, t.partition)))
	out := Target{Service: t.service, Subset: t.subset, Namespace: t.namespace, Partition: t.partition,
		Datacenter: t.datacenter, Peer: t.peer, Mode: d.Mode, Layer: d.Layer, Dial: []string{}}
	if t.peer != "" {
		return out, planPeered(v, &out, d, self)
	}
	local := v.Local()
	dest := mesh.Location{Datacenter: t.datacenter, Partition: t.partition}
	destHop := t.service + " " + dest.String()
	out.SNI = serviceSNI(v, t)
	eps := endpointsOf(v, t)
	out.Healthy = len(eps)
	crossDC := dest.Datacenter != local.Datacenter
	switch {
	case dest == local:
		out.Route = PathDirect
		out.Dial, out.Weights = mesh.Weighted(eps, false)
		out.Hops = []string{self, destHop}
	case d.Effective() == api.MeshGatewayModeLocal:
		out.Route = PathLocalGateway
		out.Dial, out.Weights = mesh.Weighted(v.GatewaysIn(local), false)
		out.Hops = []string{self, "gateway " + local.String(), "gateway " + dest.String(), destHop}
	case d.Effective() == api.MeshGatewayModeRemote:
		out.Route = PathRemoteGateway
		out.Dial, out.Weights = mesh.Weighted(v.GatewaysIn(dest), crossDC)
		out.Hops = []string{self, "gateway " + dest.String(), destHop}
	default:
		out.Route = PathDirect
		out.Dial, out.Weights = mesh.Weighted(eps, crossDC)
		out.Hops = []string{self, destHop}
	}
	var warnings []string
	if len(out.Dial) == 0 {
		warnings = append(warnings, "no addresses known for "+out.Hops[1])
	}
	return out, warnings
}

// planPeered plans the path to a peer's service: always through a gateway,
// "none" being treated as "remote", as in Consul.
func planPeered(v *mesh.View, t *Target, d modes.Decision, self string) []string {
	var warnings []string
	peer, known := v.Peers[t.Peer]
	gateways := peer.Gateways
	im, imported := peer.Import(t.Service, t.Namespace)
	if imported && len(im.Gateways) > 0 {
		gateways = im.Gateways
	}
	if imported {
		t.Healthy = len(gateways)
		if len(im.Gateways) == 0 && len(im.UnhealthyGateways) > 0 {
			t.Healthy = 0 // the import's every gateway is critical
		}
	}
	destHop := t.Service + " peer " + t.Peer
	peerHop := "gateway peer " + t.Peer
	switch d.Mode {
	case api.MeshGatewayModeNone:
		warnings = append(warnings, fmt.Sprintf("mode \"none\" from %s is treated as \"remote\": peered upstreams always cross a mesh gateway", d.Layer))
		fallthrough
	case api.MeshGatewayModeDefault, api.MeshGatewayModeRemote:
		t.Route = PathRemoteGateway
		t.Dial = append(t.Dial, gateways...)
		t.Hops = []string{self, peerHop, destHop}
	case api.MeshGatewayModeLocal:
		t.Route = PathLocalGateway
		t.Dial, t.Weights = mesh.Weighted(v.GatewaysIn(v.Local()), false)
		t.Hops = []string{self, "gateway " + v.Local().String(), peerHop, destHop}
	default:
		t.Route = PathRemoteGateway
		t.Hops = []string{self, peerHop, destHop}
	}
	switch {
	case imported && im.SNI != "":
		t.SNI = im.SNI
	case !known:
		warnings = append(warnings, fmt.Sprintf("peer %q is unknown: its trust domain, and so the SNI, and its gateways are not known", t.Peer))
	case peer.TrustDomain == "" || peer.NameAtPeer == "":
		warnings = append(warnings, fmt.Sprintf("peer %q lacks trust_domain or name_at_peer: the SNI is not known", t.Peer))
	default:
		t.SNI = peeredSNI(t.Service, t.Namespace, t.Partition, peer)
	}
	if len(t.Dial) == 0 && known {
		warnings = append(warnings, "no addresses known for "+t.Hops[1])
	}
	return warnings
}

// ExportedRoute is where a mesh gateway sends a peer's connection to a
// service this cluster exports: the service's discovery chain as Consul's
// gateway compiles it for exports (makeExportedUpstreamClustersForMeshGateway
// and makeExportedUpstreamEndpointsForMeshGateway in agent/xds): the
// primary target only, when it is in the gateway's datacenter and
// partition. Consul's gateway never fails an export over (its
// mapDiscoChainTargets adds failover targets only when not for a mesh
// gateway), and its export clusters disable Envoy's panic threshold, so a
// primary target without healthy endpoints refuses the peer's connection.
type ExportedRoute struct {
	// Target names the chain's primary target, after redirects and the
	// default subset, as Target.String does: "v1.api dc1".
	Target string
	// Primary lists the primary target's healthy endpoints, when it is
	// local, and Weights their weights (nil when all are 1).
	Primary []string
	Weights []int
	// Balance is the policy of the export's cluster: the primary target's
	// service-resolver's (ChainBalance).
	Balance Balance
	// ConnectTimeout is the primary target's service-resolver's; zero when
	// it sets none.
	ConnectTimeout time.Duration
	// Skipped names the primary target when it is in another datacenter,
	// partition or peer, which Consul's gateway leaves out (with a warning
	// in its log).
	Skipped []string
	// NotFailedOver names the chain's failover targets, which a peer's
	// connection never reaches through the exporting gateway.
	NotFailedOver []string
	// Local holds the primary target, when it is local, with its SNI and
	// its endpoints in Dial: what a gateway that terminates the peer's
	// connection (an L7 export) needs to open its own to it.
	Local []Target
	// Notes says what a careful operator should know (a hash-based policy
	// applied to TCP).
	Notes []string
}

// RouteExported returns the route of a peer's connection to service name
// in namespace (empty means "default") of v's local partition: redirects
// and the default subset apply as for a local upstream; failover does not.
func RouteExported(v *mesh.View, name, namespace string) ExportedRoute {
	return RouteExportedTo(v, name, "", namespace)
}

// RouteExportedTo is RouteExported for subset of service name (empty means
// the resolver's default): where an L7 export's service-router or
// service-splitter sends a request (RouteHTTP).
func RouteExportedTo(v *mesh.View, name, subset, namespace string) ExportedRoute {
	local := v.Local()
	start := normalTarget(v, chainTarget{service: name, subset: subset, namespace: namespace, partition: local.Partition, datacenter: v.Datacenter})
	primary, resolver, _, _ := resolveTarget(v, start)
	out := ExportedRoute{Target: describeTarget(primary)}
	var note string
	out.Balance, note = ChainBalance(resolver)
	if note != "" {
		out.Notes = append(out.Notes, note)
	}
	if primary.peer == "" && (mesh.Location{Datacenter: primary.datacenter, Partition: primary.partition}) == local {
		eps := endpointsOf(v, primary)
		out.Primary, out.Weights = mesh.Weighted(eps, false)
		// normalTarget set the namespace and partition.
		out.Local = append(out.Local, Target{Service: primary.service, Subset: primary.subset, Namespace: primary.namespace,
			Partition: primary.partition, Datacenter: primary.datacenter, SNI: serviceSNI(v, primary), Dial: out.Primary,
			Healthy: len(eps)})
	} else {
		out.Skipped = append(out.Skipped, out.Target)
	}
	if resolver != nil {
		out.ConnectTimeout = resolver.ConnectTimeout
	}
	failover, _, _ := failoverOf(v, primary, resolver)
	for _, f := range failover {
		resolved, _, _, _ := resolveTarget(v, f)
		out.NotFailedOver = append(out.NotFailedOver, describeTarget(resolved))
	}
	return out
}

// describeTarget names a resolved target as Target.String does.
func describeTarget(t chainTarget) string {
	return Target{Service: t.service, Subset: t.subset, Namespace: t.namespace, Partition: t.partition, Datacenter: t.datacenter, Peer: t.peer}.String()
}

// definesSubset reports whether the service-resolver r (nil when the service
// has none) defines the subset name.
func definesSubset(r *api.ServiceResolverConfigEntry, name string) bool {
	if r == nil {
		return false
	}
	_, ok := r.Subsets[name]
	return ok
}
