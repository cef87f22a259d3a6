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
// Endpoints counts what Consul hands Envoy for the cluster, the endpoints
// it marks unhealthy included (View.UnhealthyServices, UnhealthySubsets,
// UnhealthyGateways, an import's ImportedService.UnhealthyGateways: a
// critical check, a zero weight, a check not passing in an OnlyPassing
// subset), as Envoy's membership_total counts them;
// Healthy leaves those out, and an endpoint whose address is in ejected
// (gateway.Server.Ejected). An address in both lists (a critical gateway
// a prober such as gatewayhealth found serving, and routes) counts once,
// as healthy.
func MeshClusters(v *mesh.View, ejected map[string]time.Time) []Cluster {
	if v == nil {
		return nil
	}
	var out []Cluster
	add := func(name string, addrs, unhealthy []string) {
		c := Cluster{Name: name, Endpoints: len(addrs)}
		routed := make(map[string]bool, len(addrs))
		for _, a := range addrs {
			routed[a] = true
			if _, out := ejected[a]; !out {
				c.Healthy++
			}
		}
		for _, a := range unhealthy {
			if !routed[a] {
				c.Endpoints++
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
	// A service all of whose instances are critical has a cluster too, of
	// unhealthy endpoints only.
	keys := make(map[mesh.ServiceKey]bool, len(v.Services)+len(v.UnhealthyServices))
	for k := range v.Services {
		keys[k] = true
	}
	for k := range v.UnhealthyServices {
		keys[k] = true
	}
	for k := range keys {
		if k.Datacenter != v.Datacenter || k.Partition != local.Partition {
			continue
		}
		eps, bad := v.Services[k], v.UnhealthyServices[k]
		plain, plainBad := eps, bad
		res := v.ResolverFor(k.Name, k.Namespace, k.Partition)
		if res != nil && res.DefaultSubset != "" {
			plain = v.SubsetEndpoints(k.Name, res.DefaultSubset, k.Namespace, k.Partition, k.Datacenter)
			plainBad = v.UnhealthyEndpoints(k.Name, res.DefaultSubset, k.Namespace, k.Partition, k.Datacenter)
		}
		add(sni.ServiceSNI(k.Name, "", k.Namespace, k.Partition, k.Datacenter, td), lan(plain, false), lan(plainBad, false))
		if res != nil {
			for subset := range res.Subsets {
				add(sni.ServiceSNI(k.Name, subset, k.Namespace, k.Partition, k.Datacenter, td),
					lan(v.SubsetEndpoints(k.Name, subset, k.Namespace, k.Partition, k.Datacenter), false),
					lan(v.UnhealthyEndpoints(k.Name, subset, k.Namespace, k.Partition, k.Datacenter), false))
			}
		}
		if len(v.Exports[k]) > 0 {
			add(exportedPrefix+sni.ServiceSNI(k.Name, "", k.Namespace, k.Partition, k.Datacenter, td), lan(eps, false), lan(bad, false))
		}
	}
	// Consul hands Envoy every gateway of another location, those with a
	// critical check marked unhealthy.
	locations := make(map[mesh.Location]bool, len(v.Gateways)+len(v.UnhealthyGateways))
	for l := range v.Gateways {
		locations[l] = true
	}
	for l := range v.UnhealthyGateways {
		locations[l] = true
	}
	for l := range locations {
		if l == local {
			continue
		}
		wan := l.Datacenter != v.Datacenter
		add(sni.GatewaySNI(l.Datacenter, l.Partition, td), lan(v.Gateways[l], wan), lan(v.UnhealthyGateways[l], wan))
	}
	if f := v.Federation; f != nil {
		domain := f.Domain
		if domain == "" {
			domain = sni.DefaultDomain
		}
		for l := range locations {
			if l.Datacenter != v.Datacenter && (l.Partition == "" || l.Partition == sni.DefaultPartition) {
				add(sni.ServerSNI(l.Datacenter, "", domain), lan(v.Gateways[l], true), lan(v.UnhealthyGateways[l], true))
			}
		}
		for _, s := range f.Servers {
			add(sni.ServerSNI(v.Datacenter, s.Node, domain), []string{s.Address}, nil)
		}
	}
	if v.PeerThroughMeshGateways() {
		if len(v.Servers) > 0 {
			add(sni.PeeringServerSNI(v.Datacenter, td), v.Servers, nil)
		}
		for _, p := range v.Peers {
			if p.ServerName != "" && len(p.ServerAddresses) > 0 {
				add(p.ServerName, p.ServerAddresses, nil)
			}
		}
	}
	for _, p := range v.Peers {
		for _, im := range p.Imports {
			if im.SNI != "" {
				add(im.SNI, im.Gateways, im.UnhealthyGateways)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
