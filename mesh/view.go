package mesh

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
)

// Endpoint is one address to dial: a service's sidecar or Connect-native
// instance, or a mesh gateway.
type Endpoint struct {
	// Address is the LAN "host:port".
	Address string
	// WAN is the "host:port" reachable from other datacenters, or "".
	WAN string
	// Weight is the endpoint's load-balancing weight as Consul computes it
	// for Envoy (calculateEndpointHealthAndWeight): the instance's
	// Weights.Passing, or Weights.Warning while a check warns, at most
	// 128. Zero means 1.
	Weight int
}

// BestAddress returns the address to dial: from another datacenter (wan)
// the WAN address where there is one, else the LAN address; either one when
// the other is empty; "" when both are.
func (e Endpoint) BestAddress(wan bool) string {
	if wan && e.WAN != "" || e.Address == "" {
		return e.WAN
	}
	return e.Address
}

// Location is a datacenter and an admin partition ("default" when empty).
type Location struct {
	Datacenter string
	Partition  string
}

// String returns "dc", or "dc/partition" outside the default partition.
func (l Location) String() string {
	if l.Partition == "" || l.Partition == tenancy.Default {
		return l.Datacenter
	}
	return l.Datacenter + "/" + l.Partition
}

// ServiceKey identifies a service in a datacenter. Empty Namespace and
// Partition are stored as "default".
type ServiceKey struct {
	Name       string
	Namespace  string
	Partition  string
	Datacenter string
}

// Peer is a cluster peer as this cluster knows it.
type Peer struct {
	// Name is the local name of the peering.
	Name string
	// TrustDomain is the peer's trust domain.
	TrustDomain string
	// NameAtPeer is the name the peer gave this cluster: the peer label in the
	// SNI of services the peer exports to us.
	NameAtPeer string
	// Gateways are the peer's mesh gateway addresses.
	Gateways []string
	// ServerName and ServerAddresses are the peer's servers for the peering
	// control plane, set only on the side that dials the peer (the cluster
	// that established the peering with a token); the accepting side leaves
	// them empty.
	ServerName      string
	ServerAddresses []string
	// Roots are the peer's CA certificates, PEM (api.Peering's
	// PeerCAPems), where the source knows them: what the peer's services
	// present chains to them.
	Roots []string
	// Imports are the services the peer exports to this cluster.
	Imports []ImportedService
}

// ImportedService is a service a peer exports to this cluster, as this
// cluster's sidecars reach it: with SNI, through Gateways (the peer's mesh
// gateways, by WAN address).
type ImportedService struct {
	Name      string
	Namespace string
	Partition string
	// SNI is the server name the peer expects for the service:
	// <svc>.<ns>.<partition>.<the peer's name for us>.external.<peer td>.
	SNI string
	// Gateways are the addresses to dial, the exporting peer's mesh gateways.
	Gateways []string
	// UnhealthyGateways are the exporting peer's mesh gateways whose entry
	// for the service has a critical check (the importing side's entries
	// mirror the exporting gateway's check). Consul hands them to a mesh
	// gateway's Envoy marked unhealthy; they are not dialled, and an import
	// with these only has no gateway to dial. Metrics count them
	// (gatewaymetrics.MeshClusters).
	UnhealthyGateways []string
	// SpiffeIDs are the identities the exporting side may present for the
	// service, as the peering lists them (its PeerMeta.SpiffeID): the
	// service's own, and the exporting mesh gateway's, which serves with its
	// own certificate the exports it terminates (http, http2, grpc). Empty
	// means the service's own only.
	SpiffeIDs []string
}

// Import returns the peer's import of service name in namespace (empty
// means "default"), and whether there is one. The imports are a canonical
// View's (their namespaces set).
func (p Peer) Import(name, namespace string) (ImportedService, bool) {
	namespace = tenancy.OrDefault(namespace)
	for _, im := range p.Imports {
		if im.Name == name && im.Namespace == namespace {
			return im, true
		}
	}
	return ImportedService{}, false
}

// Instance is a proxy whose upstreams can be planned: a connect-proxy
// registration, or the sidecar_service of a service definition.
type Instance struct {
	// Service is the downstream service the proxy fronts.
	Service string
	// Name is the proxy's own service name, such as "web-sidecar-proxy".
	Name      string
	Namespace string
	Partition string
	// Proxy is the proxy configuration: upstreams and the instance's
	// mesh_gateway.
	Proxy *api.AgentServiceConnectProxyConfig
	// Origin says where the instance came from ("file:line", or the node in
	// Consul), for messages.
	Origin string
	// Address and Port are the proxy's own: where a sidecar's public
	// listener takes the mesh's connections for Service. An empty Address
	// means every address; Port 0 means none is known (the agent gives a
	// sidecar_service without a port one from its range when it registers
	// it).
	Address string
	Port    int
}

// View is one consistent picture of the mesh, as a Consul mesh gateway or
// sidecar would see it: the local cluster's identity, the config entries that
// decide modes, and where services, gateways and peers are.
type View struct {
	Datacenter  string
	Partition   string
	TrustDomain string

	ProxyDefaults *api.ProxyConfigEntry
	// ServiceDefaults holds the service-defaults entries by service name,
	// namespace and partition (see ServiceDefaultsFor).
	ServiceDefaults map[EntryKey]*api.ServiceConfigEntry
	Mesh            *api.MeshConfigEntry
	// Resolvers holds the service-resolver entries by service name,
	// namespace and partition (see ResolverFor): a local service's subsets,
	// DefaultSubset and ConnectTimeout for the router; DefaultSubset,
	// Redirect and Failover for the planner.
	Resolvers map[EntryKey]*api.ServiceResolverConfigEntry
	// Routers and Splitters hold the service-router and service-splitter
	// entries by service name, namespace and partition: the L7 part of a
	// discovery chain, which a gateway that terminates a peer's http, http2
	// or grpc export applies (resolve.RouteHTTP).
	Routers   map[EntryKey]*api.ServiceRouterConfigEntry
	Splitters map[EntryKey]*api.ServiceSplitterConfigEntry
	// SamenessGroups holds the sameness-group entries by name, for
	// failover (a Consul Enterprise feature; a CE source has none).
	SamenessGroups map[string]*api.SamenessGroupConfigEntry

	// Services holds each service's healthy mesh endpoints.
	Services map[ServiceKey][]Endpoint
	// Subsets holds, for a service with a service-resolver, the healthy mesh
	// endpoints of each of its subsets by subset name: those the subset's
	// Filter selects (passing ones only where the subset says OnlyPassing).
	Subsets map[ServiceKey]map[string][]Endpoint
	// UnhealthyServices and UnhealthySubsets hold the mesh endpoints that
	// Consul hands a mesh gateway's Envoy marked unhealthy (a critical
	// check, a zero weight, a check that is not passing in an OnlyPassing
	// subset), beside the healthy ones above: a gateway routes to them only
	// in panic, as Envoy does when fewer than half of a cluster's
	// endpoints are healthy (see routing). Nothing else reads them.
	UnhealthyServices map[ServiceKey][]Endpoint
	UnhealthySubsets  map[ServiceKey]map[string][]Endpoint
	// Gateways holds the mesh gateways of each datacenter and partition.
	Gateways map[Location][]Endpoint
	// UnhealthyGateways holds, by datacenter and partition, the mesh
	// gateways the catalog lists with a critical check (those in
	// maintenance excepted: they were taken out on purpose). They are not
	// routed; a source that probes gateways (package gatewayhealth) routes
	// those that answer, such as a gateway that has just started, before
	// the agent's first check of it.
	UnhealthyGateways map[Location][]Endpoint
	// Peers holds the cluster peers by local name.
	Peers map[string]Peer
	// Exports holds, for each local service exported to peers, the local
	// names of the peers that may consume it (Consul's resolved
	// exported-services).
	Exports map[ServiceKey][]string
	// Servers are the local Consul servers' gRPC TLS addresses (read
	// replicas excluded): where peers' control-plane traffic goes when the
	// mesh entry routes peering through mesh gateways.
	Servers []string
	// Instances are the proxies whose upstreams can be planned.
	Instances []Instance
	// Federation is WAN federation through mesh gateways, when this
	// gateway takes part in it (Consul's consul-wan-federation meta on its
	// registration, or a topology's wan_federation block); nil otherwise.
	// The other datacenters' gateways it routes servers' names to are
	// Gateways.
	Federation *Federation
}

// EntryKey names the config entry of one service (its service-defaults or
// service-resolver): Consul keeps one per service name, namespace and
// partition. Keys are stored with empty Namespace and Partition as
// "default" (KeyOf makes them so; Canonical stores them so), as Consul CE
// has only those.
type EntryKey struct {
	Name      string
	Namespace string
	Partition string
}

// KeyOf returns the key of service name in namespace and partition, an
// empty one being "default": the key the View's entry maps hold.
func KeyOf(name, namespace, partition string) EntryKey {
	return EntryKey{name, tenancy.OrDefault(namespace), tenancy.OrDefault(partition)}
}

// ServiceKeyOf returns the key of service name in namespace and partition
// (an empty one being "default") and datacenter: the key the View's
// Services, Subsets and Exports hold. It is the one place where a
// ServiceKey's "" becomes "default"; sources build their keys with it.
func ServiceKeyOf(name, namespace, partition, datacenter string) ServiceKey {
	return ServiceKey{name, tenancy.OrDefault(namespace), tenancy.OrDefault(partition), datacenter}
}

// LocationOf returns the location of datacenter and partition (an empty
// one being "default"): the key the View's Gateways hold.
func LocationOf(datacenter, partition string) Location {
	return Location{datacenter, tenancy.OrDefault(partition)}
}

// String names the entry as messages do: the name, then the namespace
// and partition where they are not "default".
func (k EntryKey) String() string {
	s := strconv.Quote(k.Name)
	if ns := tenancy.OrDefault(k.Namespace); ns != tenancy.Default {
		s += " in namespace " + strconv.Quote(ns)
	}
	if ap := tenancy.OrDefault(k.Partition); ap != tenancy.Default {
		s += " in partition " + strconv.Quote(ap)
	}
	return s
}

// ServiceDefaultsFor returns the service-defaults entry of service name in
// namespace and partition (empty means "default"), or nil: each namespace
// and partition has its own, as in Consul.
func (v *View) ServiceDefaultsFor(name, namespace, partition string) *api.ServiceConfigEntry {
	return v.ServiceDefaults[KeyOf(name, namespace, partition)]
}

// ResolverFor returns the service-resolver entry of service name in
// namespace and partition (empty means "default"), or nil.
func (v *View) ResolverFor(name, namespace, partition string) *api.ServiceResolverConfigEntry {
	return v.Resolvers[KeyOf(name, namespace, partition)]
}

// DefinesSubset reports whether the service-resolver of service name in
// namespace and partition (empty means "default") defines subset.
func (v *View) DefinesSubset(name, subset, namespace, partition string) bool {
	r := v.ResolverFor(name, namespace, partition)
	if r == nil {
		return false
	}
	_, ok := r.Subsets[subset]
	return ok
}

// Federation is what a mesh gateway needs to carry WAN federation between
// Consul's servers (connect { enable_mesh_gateway_wan_federation = true }):
// the local servers, and the DNS domain their names end in.
type Federation struct {
	// Domain is the DNS domain of the servers' names (the agents' "domain"
	// option); empty means sni.DefaultDomain, "consul".
	Domain string
	// Servers are the local datacenter's Consul servers.
	Servers []ConsulServer
}

// ConsulServer is one Consul server of the local datacenter, as WAN federation
// reaches it.
type ConsulServer struct {
	// Node is the server's node name: <node>.server.<dc>.<domain> names it.
	Node string
	// Address is its server RPC address, "host:port" (the agent's
	// ports.server, 8300 by default), where the other datacenters' RPC and
	// WAN gossip arrive.
	Address string
}

// Addresses returns the endpoints' addresses in order, preferring WAN ones
// when wan is set, and leaving out endpoints with none.
func Addresses(eps []Endpoint, wan bool) []string {
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		if a := e.BestAddress(wan); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Local returns the view's own location.
func (v *View) Local() Location { return LocationOf(v.Datacenter, v.Partition) }

// Endpoints returns the mesh endpoints of a service; empty namespace and
// partition mean "default", empty datacenter the local one.
func (v *View) Endpoints(name, namespace, partition, datacenter string) []Endpoint {
	if datacenter == "" {
		datacenter = v.Datacenter
	}
	return v.Services[ServiceKeyOf(name, namespace, partition, datacenter)]
}

// SubsetEndpoints returns the mesh endpoints of a service's subset, with
// the same defaults as Endpoints.
func (v *View) SubsetEndpoints(name, subset, namespace, partition, datacenter string) []Endpoint {
	if datacenter == "" {
		datacenter = v.Datacenter
	}
	return v.Subsets[ServiceKeyOf(name, namespace, partition, datacenter)][subset]
}

// UnhealthyEndpoints returns the endpoints of a service, or of its subset
// when subset is not empty, that are in UnhealthyServices or
// UnhealthySubsets, with the same defaults as Endpoints.
func (v *View) UnhealthyEndpoints(name, subset, namespace, partition, datacenter string) []Endpoint {
	if datacenter == "" {
		datacenter = v.Datacenter
	}
	k := ServiceKeyOf(name, namespace, partition, datacenter)
	if subset != "" {
		return v.UnhealthySubsets[k][subset]
	}
	return v.UnhealthyServices[k]
}

// Weighted returns the endpoints' addresses as Addresses does, and their
// weights in the same order (zero counted as 1), or nil weights when they
// are all 1.
func Weighted(eps []Endpoint, wan bool) ([]string, []int) {
	addrs := make([]string, 0, len(eps))
	var weights []int
	for _, e := range eps {
		a := e.BestAddress(wan)
		if a == "" {
			continue
		}
		if e.Weight > 1 && weights == nil {
			weights = make([]int, len(addrs), len(eps))
			for j := range weights {
				weights[j] = 1
			}
		}
		addrs = append(addrs, a)
		if weights != nil {
			weights = append(weights, max(e.Weight, 1))
		}
	}
	return addrs, weights
}

// GatewaysIn returns the mesh gateways of a location.
func (v *View) GatewaysIn(l Location) []Endpoint {
	return v.Gateways[LocationOf(l.Datacenter, l.Partition)]
}

// Protocol returns the protocol of service name in namespace and partition
// as Consul's discovery chain compiler takes it: its service-defaults'
// Protocol, else proxy-defaults' Config["protocol"], else "tcp";
// lower-case.
func (v *View) Protocol(name, namespace, partition string) string {
	if sd := v.ServiceDefaultsFor(name, namespace, partition); sd != nil && sd.Protocol != "" {
		return strings.ToLower(sd.Protocol)
	}
	if pd := v.ProxyDefaults; pd != nil {
		if p, ok := pd.Config["protocol"].(string); ok && p != "" {
			return strings.ToLower(p)
		}
	}
	return "tcp"
}

// PeerThroughMeshGateways reports whether the mesh entry routes peering
// control-plane traffic through mesh gateways.
func (v *View) PeerThroughMeshGateways() bool {
	return v.Mesh != nil && v.Mesh.Peering != nil && v.Mesh.Peering.PeerThroughMeshGateways
}

// ExportedTo reports whether the local service name (in namespace; empty
// means "default") is exported to the peer this cluster calls peer.
func (v *View) ExportedTo(name, namespace, peer string) bool {
	for _, p := range v.Exports[ServiceKeyOf(name, namespace, v.Local().Partition, v.Datacenter)] {
		if p == peer {
			return true
		}
	}
	return false
}

// Datacenters lists the datacenters the view knows of, sorted.
func (v *View) Datacenters() []string {
	seen := map[string]bool{v.Datacenter: true}
	for k := range v.Services {
		seen[k.Datacenter] = true
	}
	for l := range v.Gateways {
		seen[l.Datacenter] = true
	}
	out := make([]string, 0, len(seen))
	for dc := range seen {
		if dc != "" {
			out = append(out, dc)
		}
	}
	sort.Strings(out)
	return out
}

// Validate reports a view that cannot be used: no datacenter or trust domain.
func (v *View) Validate() error {
	if v.Datacenter == "" {
		return fmt.Errorf("mesh: the view has no local datacenter")
	}
	if v.TrustDomain == "" {
		return fmt.Errorf("mesh: the view has no trust domain")
	}
	if lower := strings.ToLower(v.Datacenter); lower != v.Datacenter {
		return fmt.Errorf("mesh: datacenter %q has upper-case letters; Consul lower-cases datacenter names, so no SNI name would match it: use %q", v.Datacenter, lower)
	}
	return nil
}
