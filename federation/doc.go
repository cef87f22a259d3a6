// Package federation routes a mesh gateway's share of WAN federation
// through mesh gateways: Consul's servers of different datacenters reaching
// each other only through the datacenters' mesh gateways (servers with
// connect { enable_mesh_gateway_wan_federation = true }, secondaries
// bootstrapping through primary_gateways), for RPC, WAN gossip and
// replication alike. The gateway does what Consul's own does when it is
// registered with the consul-wan-federation meta ("consul connect envoy
// -gateway=mesh -register -expose-servers"); Consul 1.22's
// agent/xds/listeners.go makeMeshGatewayListener, clusters.go
// clustersFromSnapshotMeshGateway and endpoints.go
// endpointsFromSnapshotMeshGateway build the same routes for Envoy:
//
//   - <node>.server.<local dc>.<domain>: that local server's RPC address
//     (its service address, else its node's, at the "consul" service's
//     port), one filter chain per server in Consul;
//   - server.<local dc>.<domain>: every local server (Consul's catch-all
//     cluster "so that remote datacenters can dial ANY server", reached
//     through its sni_cluster filter);
//   - <anything>.server.<dc>.<domain> of another datacenter (Consul's
//     "*.server.<dc>.<domain>" filter chain), and server.<dc>.<domain>
//     itself: that datacenter's mesh gateways, by WAN address; they are
//     known from the federation states before the WAN gossip pool forms.
//
// Consul's servers always dial with a node name (tlsutil's
// wrapALPNTLSClient refuses to dial without one), from their own
// datacenter's gateways, except a secondary bootstrapping through
// primary_gateways, which dials the primary's gateways directly.
//
// The servers encrypt end to end with their own TLS and ALPN, and the
// gateway reads only the name. A server name is refused, with a reason and
// without any dial, while the view says the gateway takes no part in
// federation (View.Federation is nil), and for a node the view does not
// list or a datacenter whose gateways it does not know: a gateway is no
// open relay for servers either.
//
// A Router with a nil Next hands every other name to a peering.Router, which
// hands what is not peering's to a resolve.MeshRouter: together they route
// what Consul's own mesh gateway routes, in Consul's order.
//
// The data comes from a resolve.Source: resolve.Static reads a topology's
// wan_federation block and its gateways; consulview.Source, with
// Options.WANFederation, follows the local "consul" service and the
// federation states (/v1/internal/federation-states/mesh-gateways), which
// name every datacenter's gateways before the WAN gossip pool has formed.
package federation
