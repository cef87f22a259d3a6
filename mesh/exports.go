package mesh

import (
	"slices"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
)

// wildcard is Consul's WildcardSpecifier.
const wildcard = "*"

// ResolveExports returns what an exported-services entry exports to peers,
// as Consul resolves it, for a source to fill View.Exports with (ResolvedExportedServices in its state store): for
// each service (Partition set to partition, Datacenter empty) the names of
// the peers that consume it, sorted, each once. A Name of "*" exports every
// service of its namespace that services lists (Consul lists the typical
// services of its catalog: no proxies or gateways), and a Namespace of "*"
// every namespace; the "consul" service is never exported. A consumer's
// SamenessGroup stands for the group's peer members (groups holds the
// sameness-group entries); consumers that are partitions are not peers and
// are left out. nil e gives nil.
func ResolveExports(e *api.ExportedServicesConfigEntry, partition string, services []ServiceKey, groups map[string]*api.SamenessGroupConfigEntry) map[ServiceKey][]string {
	if e == nil {
		return nil
	}
	partition = tenancy.OrDefault(partition)
	out := map[ServiceKey][]string{}
	add := func(name, namespace string, peers []string) {
		if name == "consul" || len(peers) == 0 {
			return
		}
		k := ServiceKeyOf(name, namespace, partition, "")
		for _, p := range peers {
			if !slices.Contains(out[k], p) {
				out[k] = append(out[k], p)
			}
		}
	}
	for _, svc := range e.Services {
		var peers []string
		for _, c := range svc.Consumers {
			switch {
			case c.Peer != "":
				peers = append(peers, c.Peer)
			case c.SamenessGroup != "":
				if g := groups[c.SamenessGroup]; g != nil {
					for _, m := range g.Members {
						if m.Peer != "" {
							peers = append(peers, m.Peer)
						}
					}
				}
			}
		}
		if svc.Name != wildcard && svc.Namespace != wildcard {
			add(svc.Name, svc.Namespace, peers)
			continue
		}
		for _, s := range services {
			if tenancy.OrDefault(s.Partition) != partition {
				continue
			}
			if (svc.Name == wildcard || svc.Name == s.Name) &&
				(svc.Namespace == wildcard || tenancy.OrDefault(svc.Namespace) == tenancy.OrDefault(s.Namespace)) {
				add(s.Name, s.Namespace, peers)
			}
		}
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out
}
