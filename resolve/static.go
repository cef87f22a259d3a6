package resolve

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/sni"
)

// DefaultTrustDomain is the trust domain used when neither the topology nor
// the caller names one: the example of Consul's documentation.
const DefaultTrustDomain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

// StaticOptions fills in what the files leave out.
type StaticOptions struct {
	// Datacenter is the local datacenter when the topology names none;
	// empty means "dc1".
	Datacenter string
	// TrustDomain is the trust domain when the topology names none; empty
	// means DefaultTrustDomain.
	TrustDomain string
}

// Static is a Source whose view never changes: built once from files.
type Static struct {
	view *View
}

var _ Source = (*Static)(nil)

// View returns the static view.
func (s *Static) View() *View { return s.view }

// LoadStatic loads files with config.Load and builds a Static source.
func LoadStatic(opts StaticOptions, paths ...string) (*Static, error) {
	set, err := config.Load(paths...)
	if err != nil {
		return nil, err
	}
	return NewStatic(set, opts)
}

// NewStatic builds a Static source from loaded files: config entries and
// service definitions, and the topology document when there is one. A
// topology's datacenter and trust domain take precedence over opts.
// Datacenter names are lower-cased, as Consul does with an agent's
// datacenter, so that DC1 routes the SNI names Consul builds with dc1.
func NewStatic(set *config.Set, opts StaticOptions) (*Static, error) {
	v := &View{
		Datacenter:      opts.Datacenter,
		TrustDomain:     opts.TrustDomain,
		ProxyDefaults:   set.ProxyDefaults,
		ServiceDefaults: set.ServiceDefaults,
		Mesh:            set.Mesh,
		Resolvers:       set.ServiceResolvers,
		Services:        map[ServiceKey][]Endpoint{},
		Subsets:         map[ServiceKey]map[string][]Endpoint{},
		Gateways:        map[Location][]Endpoint{},
		Peers:           map[string]Peer{},
		Exports:         map[ServiceKey][]string{},
	}
	if t := set.Topology; t != nil {
		if t.Datacenter != "" {
			v.Datacenter = t.Datacenter
		}
		if t.TrustDomain != "" {
			v.TrustDomain = t.TrustDomain
		}
		v.Partition = t.Partition
	}
	if v.Datacenter == "" {
		v.Datacenter = "dc1"
	}
	v.Datacenter = strings.ToLower(v.Datacenter) // as Consul does with its agents' datacenter
	if v.TrustDomain == "" {
		v.TrustDomain = DefaultTrustDomain
	}
	v.Partition = tenancy.OrDefault(v.Partition)
	if t := set.Topology; t != nil {
		for _, s := range t.Services {
			dc := strings.ToLower(s.Datacenter)
			if dc == "" {
				dc = v.Datacenter
			}
			k := ServiceKey{s.Name, tenancy.OrDefault(s.Namespace), tenancy.OrDefault(s.Partition), dc}
			if s.Subset == "" {
				v.Services[k] = append(v.Services[k], endpoints(s.Addresses, s.WANAddresses)...)
				continue
			}
			if r := v.Resolvers[s.Name]; r == nil || !hasSubset(r, s.Subset) {
				return nil, fmt.Errorf("resolve: topology lists subset %q of service %q, but no service-resolver for %q defines it", s.Subset, s.Name, s.Name)
			}
			if v.Subsets[k] == nil {
				v.Subsets[k] = map[string][]Endpoint{}
			}
			v.Subsets[k][s.Subset] = append(v.Subsets[k][s.Subset], endpoints(s.Addresses, s.WANAddresses)...)
		}
		for _, g := range t.Gateways {
			l := Location{strings.ToLower(g.Datacenter), tenancy.OrDefault(g.Partition)}
			v.Gateways[l] = append(v.Gateways[l], endpoints(g.Addresses, g.WANAddresses)...)
		}
		for _, p := range t.Peers {
			if _, dup := v.Peers[p.Name]; dup {
				return nil, fmt.Errorf("resolve: peer %q listed twice in the topology", p.Name)
			}
			peer := Peer{Name: p.Name, TrustDomain: p.TrustDomain, NameAtPeer: p.NameAtPeer,
				Gateways: p.Gateways, ServerName: p.ServerName, ServerAddresses: p.ServerAddresses}
			for _, im := range p.Imports {
				ns, name, err := config.SplitImport(im)
				if err != nil {
					return nil, fmt.Errorf("resolve: peer %q: %w", p.Name, err)
				}
				peer.Imports = append(peer.Imports, ImportedService{Name: name, Namespace: tenancy.OrDefault(ns), Partition: tenancy.Default,
					SNI: sni.PeeredServiceSNI(name, ns, "", p.NameAtPeer, p.TrustDomain), Gateways: p.Gateways})
			}
			v.Peers[p.Name] = peer
		}
		v.Servers = t.Servers
	}
	if e := set.ExportedServices; e != nil {
		for _, svc := range e.Services {
			k := ServiceKey{svc.Name, tenancy.OrDefault(svc.Namespace), v.Partition, v.Datacenter}
			for _, c := range svc.Consumers {
				if c.Peer != "" {
					v.Exports[k] = append(v.Exports[k], c.Peer)
				}
			}
		}
	}
	for _, s := range set.Services {
		if inst, ok := InstanceOf(s.AgentServiceRegistration, s.Origin()); ok {
			v.Instances = append(v.Instances, inst)
		}
	}
	return &Static{view: v}, v.Validate()
}

func hasSubset(r *api.ServiceResolverConfigEntry, name string) bool {
	_, ok := r.Subsets[name]
	return ok
}

// endpoints pairs LAN addresses with the WAN addresses at the same index;
// WAN addresses beyond the LAN list stand alone.
func endpoints(lan, wan []string) []Endpoint {
	out := make([]Endpoint, 0, max(len(lan), len(wan)))
	for i := range max(len(lan), len(wan)) {
		var e Endpoint
		if i < len(lan) {
			e.Address = lan[i]
		}
		if i < len(wan) {
			e.WAN = wan[i]
		}
		out = append(out, e)
	}
	return out
}

// InstanceOf returns the proxy instance a service registration defines: the
// registration itself when it is a connect-proxy, or its sidecar_service.
func InstanceOf(reg *api.AgentServiceRegistration, origin string) (Instance, bool) {
	switch {
	case reg.Kind == api.ServiceKindConnectProxy && reg.Proxy != nil:
		return Instance{Service: reg.Proxy.DestinationServiceName, Name: reg.Name,
			Namespace: reg.Namespace, Partition: reg.Partition, Proxy: reg.Proxy, Origin: origin}, true
	case reg.Connect != nil && reg.Connect.SidecarService != nil:
		sc := reg.Connect.SidecarService
		name := sc.Name
		if name == "" {
			name = reg.Name + "-sidecar-proxy"
		}
		proxy := sc.Proxy
		if proxy == nil {
			proxy = &api.AgentServiceConnectProxyConfig{}
		}
		return Instance{Service: reg.Name, Name: name, Namespace: reg.Namespace, Partition: reg.Partition, Proxy: proxy, Origin: origin}, true
	}
	return Instance{}, false
}

// StaticView makes a Source of a View built in Go, in one step. It routes
// exactly as the same topology loaded from files: it works on a copy of v
// whose empty namespaces and partitions are "default", whose empty service
// datacenters are the local one, and whose datacenter names are lower-case,
// and it returns v.Validate's error if the result is not usable.
func StaticView(v *View) (*Static, error) {
	n := *v
	n.Datacenter = strings.ToLower(n.Datacenter)
	n.Partition = tenancy.OrDefault(n.Partition)
	n.Services = make(map[ServiceKey][]Endpoint, len(v.Services))
	for k, eps := range v.Services {
		k.Namespace, k.Partition = tenancy.OrDefault(k.Namespace), tenancy.OrDefault(k.Partition)
		if k.Datacenter == "" {
			k.Datacenter = n.Datacenter
		}
		k.Datacenter = strings.ToLower(k.Datacenter)
		n.Services[k] = append(n.Services[k], eps...)
	}
	n.Subsets = make(map[ServiceKey]map[string][]Endpoint, len(v.Subsets))
	for k, subsets := range v.Subsets {
		k.Namespace, k.Partition = tenancy.OrDefault(k.Namespace), tenancy.OrDefault(k.Partition)
		if k.Datacenter == "" {
			k.Datacenter = n.Datacenter
		}
		k.Datacenter = strings.ToLower(k.Datacenter)
		if n.Subsets[k] == nil {
			n.Subsets[k] = map[string][]Endpoint{}
		}
		for name, eps := range subsets {
			n.Subsets[k][name] = append(n.Subsets[k][name], eps...)
		}
	}
	n.Gateways = make(map[Location][]Endpoint, len(v.Gateways))
	for l, eps := range v.Gateways {
		l.Datacenter, l.Partition = strings.ToLower(l.Datacenter), tenancy.OrDefault(l.Partition)
		n.Gateways[l] = append(n.Gateways[l], eps...)
	}
	n.Exports = make(map[ServiceKey][]string, len(v.Exports))
	for k, peers := range v.Exports {
		k.Namespace, k.Partition = tenancy.OrDefault(k.Namespace), tenancy.OrDefault(k.Partition)
		if k.Datacenter == "" {
			k.Datacenter = n.Datacenter
		}
		n.Exports[k] = append(n.Exports[k], peers...)
	}
	if n.Peers == nil {
		n.Peers = map[string]Peer{}
	}
	return &Static{view: &n}, n.Validate()
}
