// Package routing holds the gateway.Routers of a Consul mesh gateway, each
// routing the SNI names of its kind as Consul's own gateway (Envoy, as
// Consul 1.22 configures it) does, over a mesh.Source:
//
//   - MeshRouter: the local datacenter's services (and subsets), and other
//     datacenters and partitions through their mesh gateways;
//   - PeeringRouter: cluster peering, its control plane and the services
//     exported to peers and imported from them; it hands every other name
//     to a MeshRouter;
//   - FederationRouter: WAN federation of Consul's servers through mesh
//     gateways; it hands every other name to a PeeringRouter.
//
// New builds the three in that chain: the whole of a Consul mesh gateway's
// routing, in Consul's order, and the front door for a program that routes
// as Consul's gateway does:
//
//	src, err := config.LoadStatic(config.StaticOptions{}, "topology.hcl")
//	srv := &gateway.Server{Router: routing.New(src)}
//
// Each Router also works alone, for a program that wants less. Every name
// a Router does not own is refused with one of the Reason constants and
// never dialled, so a gateway is no open relay; every route carries one of
// the Route kinds, for observers. Package routing/l7 terminates the peered
// exports whose protocol is http, http2 or grpc. The rules themselves
// (plans, failover chains, exported routes) are package resolve's, and
// routing is a pure function of a View: its tests read files, and only
// those named *_consul_test.go start Consul agents.
package routing
