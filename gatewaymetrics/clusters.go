package gatewaymetrics

import (
	"sort"
	"time"

	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sni"
)

// MeshClusters returns the clusters Consul 1.22's mesh gateway would have
// for view v (agent/xds/clusters.go), for Envoy.Clusters: each local
// service and each subset its service-resolver defines, each other
// datacenter and partition that has mesh gateways, with WAN federation
// Consul's servers (the other datacenters' and each local one), with
// peering through mesh gateways the local servers and the peers' servers,
// each service exported to a peer, and each service imported from one.
// Endpoints are the view's (healthy ones: Consul's critical instances are
// not in it, where Envoy's membership_total counts them too); an endpoint
// whose address is in ejected (gateway.Server.Ejected) is not Healthy.
func MeshClusters(v *mesh.View, ejected map[string]time.Time) []Cluster {
	if v == nil {
		return nil
	}
	var out []Cluster
	add := func(name string, addrs []string) {
		c := Cluster{Name: name, Endpoints: len(addrs)}
		for _, a := range addrs {
			if _, out := ejected[a]; !out {
				c.Healthy++
			}
		}
		out = append(out, c)
	}
	lan := func(eps []mesh.Endpoint, wan bool) []string {
		addrs := make([]string, 0, len(eps))
		for _, e := range eps {
			addrs = append(addrs, e.BestAddress(wan))
		}
		return addrs
	}
	local := v.Local()
	td := v.TrustDomain
	for k, eps := range v.Services {
		if k.Datacenter != v.Datacenter || k.Partition != local.Partition {
			continue
		}
		plain := eps
		res := v.ResolverFor(k.Name, k.Namespace, k.Partition)
		if res != nil && res.DefaultSubset != "" {
			plain = v.SubsetEndpoints(k.Name, res.DefaultSubset, k.Namespace, k.Partition, k.Datacenter)
		}
		add(sni.ServiceSNI(k.Name, "", k.Namespace, k.Partition, k.Datacenter, td), lan(plain, false))
		if res != nil {
			for subset := range res.Subsets {
				add(sni.ServiceSNI(k.Name, subset, k.Namespace, k.Partition, k.Datacenter, td),
					lan(v.SubsetEndpoints(k.Name, subset, k.Namespace, k.Partition, k.Datacenter), false))
			}
		}
		if len(v.Exports[k]) > 0 {
			add(exportedPrefix+sni.ServiceSNI(k.Name, "", k.Namespace, k.Partition, k.Datacenter, td), lan(eps, false))
		}
	}
	for l, eps := range v.Gateways {
		if l == local {
			continue
		}
		add(sni.GatewaySNI(l.Datacenter, l.Partition, td), lan(eps, l.Datacenter != v.Datacenter))
	}
	if f := v.Federation; f != nil {
		domain := f.Domain
		if domain == "" {
			domain = sni.DefaultDomain
		}
		for l, eps := range v.Gateways {
			if l.Datacenter != v.Datacenter && (l.Partition == "" || l.Partition == sni.DefaultPartition) {
				add(sni.ServerSNI(l.Datacenter, "", domain), lan(eps, true))
			}
		}
		for _, s := range f.Servers {
			add(sni.ServerSNI(v.Datacenter, s.Node, domain), []string{s.Address})
		}
	}
	if v.PeerThroughMeshGateways() {
		if len(v.Servers) > 0 {
			add(sni.PeeringServerSNI(v.Datacenter, td), v.Servers)
		}
		for _, p := range v.Peers {
			if p.ServerName != "" && len(p.ServerAddresses) > 0 {
				add(p.ServerName, p.ServerAddresses)
			}
		}
	}
	for _, p := range v.Peers {
		for _, im := range p.Imports {
			if im.SNI != "" {
				add(im.SNI, im.Gateways)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
