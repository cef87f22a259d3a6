package config

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
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

// Static is a mesh.Source whose view never changes: built once from files
// or from a View built in Go.
type Static struct {
	view *mesh.View
}

var _ mesh.Source = (*Static)(nil)

// View returns the static view.
func (s *Static) View() *mesh.View { return s.view }

// LoadStatic loads files with Load and builds a Static source.
func LoadStatic(opts StaticOptions, paths ...string) (*Static, error) {
	set, err := Load(paths...)
	if err != nil {
		return nil, err
	}
	return NewStatic(set, opts)
}

// NewStatic builds a Static source from loaded files: config entries and
// service definitions, and the topology document when there is one. A
// topology's datacenter and trust domain take precedence over opts. The
// topology is already a View (config decodes it into one); NewStatic adds
// the config entries and instances and hands it to StaticView, so files and
// Views built in Go go through the same defaults and checks.
func NewStatic(set *Set, opts StaticOptions) (*Static, error) {
	v := &mesh.View{}
	if set.Topology != nil {
		*v = *set.Topology
	}
	v.Datacenter = firstNonEmpty(v.Datacenter, opts.Datacenter)
	v.TrustDomain = firstNonEmpty(v.TrustDomain, opts.TrustDomain)
	v.ProxyDefaults, v.ServiceDefaults, v.Mesh = set.ProxyDefaults, set.ServiceDefaults, set.Mesh
	v.Resolvers, v.SamenessGroups = set.ServiceResolvers, set.SamenessGroups
	v.Routers, v.Splitters = set.ServiceRouters, set.ServiceSplitters
	v.Exports = map[mesh.ServiceKey][]string{}
	if v.Datacenter == "" {
		v.Datacenter = "dc1"
	}
	if v.TrustDomain == "" {
		v.TrustDomain = DefaultTrustDomain
	}
	if len(set.ExportedServices) > 0 {
		services := localServices(v, set)
		for partition, e := range set.ExportedServices {
			for k, peers := range resolve.ResolveExports(e, partition, services, set.SamenessGroups) {
				v.Exports[k] = append(v.Exports[k], peers...)
			}
		}
	}
	for _, s := range set.Services {
		if inst, ok := InstanceOf(s.AgentServiceRegistration, s.Origin()); ok {
			v.Instances = append(v.Instances, inst)
		}
	}
	return StaticView(v)
}

// localServices lists the typical services of the local datacenter that
// the files know (a topology's rows, service definitions that are not
// proxies or gateways), as Consul lists its catalog's to expand a
// wildcard export.
func localServices(v *mesh.View, set *Set) []mesh.ServiceKey {
	var out []mesh.ServiceKey
	local := func(k mesh.ServiceKey) {
		if k.Datacenter == "" || strings.EqualFold(k.Datacenter, v.Datacenter) {
			out = append(out, k)
		}
	}
	for k := range v.Services {
		local(k)
	}
	for k := range v.UnhealthyServices {
		local(k)
	}
	for k := range v.Subsets {
		local(k)
	}
	for _, s := range set.Services {
		if r := s.AgentServiceRegistration; r.Kind == "" && r.Name != "" {
			out = append(out, mesh.ServiceKey{Name: r.Name, Namespace: r.Namespace, Partition: r.Partition})
		}
	}
	return out
}

// InstanceOf returns the proxy instance a service registration defines: the
// registration itself when it is a connect-proxy, or its sidecar_service.
func InstanceOf(reg *api.AgentServiceRegistration, origin string) (mesh.Instance, bool) {
	switch {
	case reg.Kind == api.ServiceKindConnectProxy && reg.Proxy != nil:
		return mesh.Instance{Service: reg.Proxy.DestinationServiceName, Name: reg.Name,
			Namespace: reg.Namespace, Partition: reg.Partition, Proxy: reg.Proxy, Origin: origin,
			Address: reg.Address, Port: reg.Port}, true
	case reg.Connect != nil && reg.Connect.SidecarService != nil:
		sc := reg.Connect.SidecarService
		name := sc.Name
		if name == "" {
			name = reg.Name + "-sidecar-proxy"
		}
		proxy := api.AgentServiceConnectProxyConfig{}
		if sc.Proxy != nil {
			proxy = *sc.Proxy
		}
		// The defaults the agent gives a sidecar_service
		// (agent/sidecar_service.go): the parent's address, and the parent
		// on 127.0.0.1 at its port as the local application.
		address := sc.Address
		if address == "" {
			address = reg.Address
		}
		if proxy.LocalServiceSocketPath == "" && reg.SocketPath == "" {
			if proxy.LocalServiceAddress == "" {
				proxy.LocalServiceAddress = "127.0.0.1"
			}
			if proxy.LocalServicePort < 1 {
				proxy.LocalServicePort = reg.Port
			}
		}
		return mesh.Instance{Service: reg.Name, Name: name, Namespace: reg.Namespace, Partition: reg.Partition, Proxy: &proxy, Origin: origin,
			Address: address, Port: sc.Port}, true
	}
	return mesh.Instance{}, false
}

// StaticView makes a mesh.Source of a View built in Go, in one step. It routes
// exactly as the same topology loaded from files, because NewStatic ends
// here too. It works on a copy of v in which:
//   - empty namespaces and partitions are "default", and empty service
//     datacenters are the local one;
//   - datacenter names are lower-case, as Consul makes an agent's, so that
//     DC1 routes the SNI names Consul builds with dc1;
//   - a peer's import without an SNI gets the name the peer expects,
//     <svc>.<ns>.<partition>.<NameAtPeer>.external.<TrustDomain>, and one
//     without Gateways the peer's gateways;
//   - a Federation's Domain is lower-case without a trailing dot, and
//     sni.DefaultDomain when empty.
//
// It refuses a subset that no service-resolver in Resolvers defines, and
// returns v.Validate's error if the result is not usable.
func StaticView(v *mesh.View) (*Static, error) {
	n := *v
	n.Datacenter = strings.ToLower(n.Datacenter)
	n.Partition = tenancy.OrDefault(n.Partition)
	key := func(k mesh.ServiceKey) mesh.ServiceKey {
		k.Namespace, k.Partition = tenancy.OrDefault(k.Namespace), tenancy.OrDefault(k.Partition)
		if k.Datacenter == "" {
			k.Datacenter = n.Datacenter
		}
		k.Datacenter = strings.ToLower(k.Datacenter)
		return k
	}
	rekeyServices := func(m map[mesh.ServiceKey][]mesh.Endpoint) map[mesh.ServiceKey][]mesh.Endpoint {
		out := make(map[mesh.ServiceKey][]mesh.Endpoint, len(m))
		for k, eps := range m {
			k = key(k)
			out[k] = append(out[k], eps...)
		}
		return out
	}
	n.Services, n.UnhealthyServices = rekeyServices(v.Services), rekeyServices(v.UnhealthyServices)
	n.Resolvers = rekey(v.Resolvers)
	rekeySubsets := func(m map[mesh.ServiceKey]map[string][]mesh.Endpoint) (map[mesh.ServiceKey]map[string][]mesh.Endpoint, error) {
		out := make(map[mesh.ServiceKey]map[string][]mesh.Endpoint, len(m))
		for k, subsets := range m {
			for name, eps := range subsets {
				k := key(k)
				if !n.DefinesSubset(k.Name, name, k.Namespace, k.Partition) {
					return nil, fmt.Errorf("config: subset %q of service %q has endpoints, but no service-resolver for %s defines it", name, k.Name, mesh.KeyOf(k.Name, k.Namespace, k.Partition))
				}
				if out[k] == nil {
					out[k] = map[string][]mesh.Endpoint{}
				}
				out[k][name] = append(out[k][name], eps...)
			}
		}
		return out, nil
	}
	var err error
	if n.Subsets, err = rekeySubsets(v.Subsets); err != nil {
		return nil, err
	}
	if n.UnhealthySubsets, err = rekeySubsets(v.UnhealthySubsets); err != nil {
		return nil, err
	}
	n.ServiceDefaults = rekey(v.ServiceDefaults)
	n.Routers = rekey(v.Routers)
	n.Splitters = rekey(v.Splitters)
	n.SamenessGroups = make(map[string]*api.SamenessGroupConfigEntry, len(v.SamenessGroups))
	for name, g := range v.SamenessGroups {
		n.SamenessGroups[name] = g
	}
	n.Gateways = make(map[mesh.Location][]mesh.Endpoint, len(v.Gateways))
	for l, eps := range v.Gateways {
		l.Datacenter, l.Partition = strings.ToLower(l.Datacenter), tenancy.OrDefault(l.Partition)
		n.Gateways[l] = append(n.Gateways[l], eps...)
	}
	n.Exports = make(map[mesh.ServiceKey][]string, len(v.Exports))
	for k, peers := range v.Exports {
		k = key(k)
		n.Exports[k] = append(n.Exports[k], peers...)
	}
	n.Peers = make(map[string]mesh.Peer, len(v.Peers))
	for name, p := range v.Peers {
		imports := make([]mesh.ImportedService, len(p.Imports))
		for i, im := range p.Imports {
			if im.SNI == "" {
				im.SNI = sni.PeeredServiceSNI(im.Name, im.Namespace, im.Partition, p.NameAtPeer, p.TrustDomain)
			}
			im.Namespace, im.Partition = tenancy.OrDefault(im.Namespace), tenancy.OrDefault(im.Partition)
			if len(im.Gateways) == 0 {
				im.Gateways = p.Gateways
			}
			imports[i] = im
		}
		p.Imports = imports
		n.Peers[name] = p
	}
	if f := v.Federation; f != nil {
		nf := mesh.Federation{Domain: strings.ToLower(strings.TrimSuffix(f.Domain, ".")), Servers: append([]mesh.ConsulServer(nil), f.Servers...)}
		if nf.Domain == "" {
			nf.Domain = sni.DefaultDomain
		}
		n.Federation = &nf
	}
	return &Static{view: &n}, n.Validate()
}

// rekey stores config entries under their keys with empty namespaces and
// partitions made "default", as View's lookups expect.
func rekey[T any](m map[mesh.EntryKey]T) map[mesh.EntryKey]T {
	out := make(map[mesh.EntryKey]T, len(m))
	for k, e := range m {
		out[mesh.KeyOf(k.Name, k.Namespace, k.Partition)] = e
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
