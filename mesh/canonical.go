package mesh

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/sni"
)

// Canonical returns the canonical copy of v, the one every source
// publishes (config's from files and from Views built in Go; consulview
// builds its Views canonical as it reads the agent), so that lookups
// compare keys as they are and never default by hand. In it:
//
//   - empty namespaces and partitions are "default", and empty service
//     datacenters are the local one;
//
//   - datacenter names are lower-case, as Consul makes an agent's, so that
//     DC1 routes the SNI names Consul builds with dc1;
//
//   - a peer's import without an SNI gets the name the peer expects,
//     <svc>.<ns>.<partition>.<NameAtPeer>.external.<TrustDomain>, and one
//     without Gateways the peer's gateways (unless it has
//     UnhealthyGateways: its gateways are all critical);
//
//   - a Federation's Domain is lower-case without a trailing dot, and
//     sni.DefaultDomain when empty.
//
//   - config entries are stored under KeyOf their names, namespaces and
//     partitions.
//
// It refuses a subset that no service-resolver in Resolvers defines, and
// returns the result's Validate error if it is not usable.
func Canonical(v *View) (*View, error) {
	n := *v
	n.Datacenter = strings.ToLower(n.Datacenter)
	n.Partition = tenancy.OrDefault(n.Partition)
	key := func(k ServiceKey) ServiceKey {
		if k.Datacenter == "" {
			k.Datacenter = n.Datacenter
		}
		return ServiceKeyOf(k.Name, k.Namespace, k.Partition, strings.ToLower(k.Datacenter))
	}
	rekeyServices := func(m map[ServiceKey][]Endpoint) map[ServiceKey][]Endpoint {
		out := make(map[ServiceKey][]Endpoint, len(m))
		for k, eps := range m {
			k = key(k)
			out[k] = append(out[k], eps...)
		}
		return out
	}
	n.Services, n.UnhealthyServices = rekeyServices(v.Services), rekeyServices(v.UnhealthyServices)
	n.Resolvers = rekey(v.Resolvers)
	rekeySubsets := func(m map[ServiceKey]map[string][]Endpoint) (map[ServiceKey]map[string][]Endpoint, error) {
		out := make(map[ServiceKey]map[string][]Endpoint, len(m))
		for k, subsets := range m {
			for name, eps := range subsets {
				k := key(k)
				if !n.DefinesSubset(k.Name, name, k.Namespace, k.Partition) {
					return nil, fmt.Errorf("mesh: subset %q of service %q has endpoints, but no service-resolver for %s defines it", name, k.Name, KeyOf(k.Name, k.Namespace, k.Partition))
				}
				if out[k] == nil {
					out[k] = map[string][]Endpoint{}
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
	n.Gateways = make(map[Location][]Endpoint, len(v.Gateways))
	for l, eps := range v.Gateways {
		l = LocationOf(strings.ToLower(l.Datacenter), l.Partition)
		n.Gateways[l] = append(n.Gateways[l], eps...)
	}
	n.Exports = make(map[ServiceKey][]string, len(v.Exports))
	for k, peers := range v.Exports {
		k = key(k)
		n.Exports[k] = append(n.Exports[k], peers...)
	}
	n.Peers = make(map[string]Peer, len(v.Peers))
	for name, p := range v.Peers {
		imports := make([]ImportedService, len(p.Imports))
		for i, im := range p.Imports {
			if im.SNI == "" {
				im.SNI = sni.PeeredServiceSNI(im.Name, im.Namespace, im.Partition, p.NameAtPeer, p.TrustDomain)
			}
			im.Namespace, im.Partition = tenancy.OrDefault(im.Namespace), tenancy.OrDefault(im.Partition)
			if len(im.Gateways) == 0 && len(im.UnhealthyGateways) == 0 {
				im.Gateways = p.Gateways
			}
			imports[i] = im
		}
		p.Imports = imports
		n.Peers[name] = p
	}
	if f := v.Federation; f != nil {
		nf := Federation{Domain: strings.ToLower(strings.TrimSuffix(f.Domain, ".")), Servers: append([]ConsulServer(nil), f.Servers...)}
		if nf.Domain == "" {
			nf.Domain = sni.DefaultDomain
		}
		n.Federation = &nf
	}
	return &n, n.Validate()
}

// rekey stores config entries under KeyOf their keys, as View's lookups
// expect.
func rekey[T any](m map[EntryKey]T) map[EntryKey]T {
	out := make(map[EntryKey]T, len(m))
	for k, e := range m {
		out[KeyOf(k.Name, k.Namespace, k.Partition)] = e
	}
	return out
}
