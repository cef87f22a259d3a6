package config

import (
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
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
			for k, peers := range mesh.ResolveExports(e, partition, services, set.SamenessGroups) {
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

// StaticView makes a mesh.Source of a View built in Go, in one step: the
// canonical copy of v that mesh.Canonical makes (and its error, if v is not
// usable). It routes exactly as the same topology loaded from files,
// because NewStatic ends here too.
func StaticView(v *mesh.View) (*Static, error) {
	c, err := mesh.Canonical(v)
	if c == nil {
		return nil, err
	}
	return &Static{view: c}, err
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
