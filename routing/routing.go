package routing

import (
	"context"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sni"
)

// Rejection reasons (gateway.Rejection.Reason), as reported to the
// gateway's Observer. A name is refused with one of these and never
// dialled.
const (
	// ReasonNoServerName: a ClientHello without a server name.
	ReasonNoServerName = "no-server-name"
	// ReasonForeignTrustDomain: a name in another trust domain that is
	// neither a peer's server name nor an imported service's SNI.
	ReasonForeignTrustDomain = "foreign-trust-domain"
	// ReasonMalformedName: a name in the local trust domain that is not one
	// of Consul's SNI forms.
	ReasonMalformedName = "malformed-name"
	// ReasonUnknownService: a local service without healthy mesh endpoints.
	ReasonUnknownService = "unknown-service"
	// ReasonUnknownSubset: a subset no service-resolver defines.
	ReasonUnknownSubset = "unknown-subset"
	// ReasonUnknownDatacenter: a datacenter or partition whose mesh
	// gateways the view does not know.
	ReasonUnknownDatacenter = "unknown-datacenter"
	// ReasonUnsupportedName: a kind of name no Router here serves
	// (prepared queries), or a gateway name for this gateway's own
	// datacenter.
	ReasonUnsupportedName = "unsupported-name"

	// ReasonNotThroughGateways: a peering control-plane name while the mesh
	// entry does not route peering through mesh gateways.
	ReasonNotThroughGateways = "peering-not-through-gateways"
	// ReasonNoPeeringServers: the local servers' gRPC TLS addresses are not
	// known.
	ReasonNoPeeringServers = "no-peering-servers"
	// ReasonNotExported: an exported-service name for a service that is not
	// exported to the peer the name carries.
	ReasonNotExported = "not-exported"
	// ReasonL7Export: an exported service whose protocol is http, http2 or
	// grpc, which Consul's gateway terminates, while the PeeringRouter is
	// told neither to terminate nor to pass it through (see
	// PeeringRouter.Terminate and PassThroughL7Exports).
	ReasonL7Export = "l7-export"

	// ReasonNotFederating: a Consul server name while the view has no
	// Federation.
	ReasonNotFederating = "wan-federation-off"
	// ReasonUnknownServer: the name of a local node the view does not list
	// as a server.
	ReasonUnknownServer = "unknown-server"
	// ReasonNoServers: any server of the local datacenter, while the view
	// lists none.
	ReasonNoServers = "no-servers"
)

// Route kinds (gateway.Route.Kind), as observers hear them. They are not
// package sni's kinds of name: a service's name of another datacenter, for
// one, routes as RouteGateway.
const (
	// RouteService: a local service's (or subset's) mesh endpoints.
	RouteService = "service"
	// RouteGateway: another datacenter's or partition's mesh gateways.
	RouteGateway = "gateway"
	// RoutePeeringServers: the local servers' peering control plane.
	RoutePeeringServers = "peering-servers"
	// RoutePeerServers: a peer's servers, for a peering this cluster dials.
	RoutePeerServers = "peer-servers"
	// RouteExportedService: a local service exported to a peer.
	RouteExportedService = "exported-service"
	// RouteImportedService: a service a peer exports to this cluster, at
	// the peer's gateways.
	RouteImportedService = "imported-service"
	// RouteWANFederation: Consul servers' WAN federation traffic.
	RouteWANFederation = "wan-federation"
)

// Router is the whole of a Consul mesh gateway's routing, as New builds
// it: Federation first, which hands what is not a Consul server's name to
// Peering, which hands what is not peering's to Mesh, in the order Consul's
// own gateway matches them. Set the fields of Peering that say what becomes
// of L7 exports before the first Route. A Router must not be copied once
// built.
type Router struct {
	Federation FederationRouter
	Peering    PeeringRouter
	Mesh       MeshRouter
}

var _ gateway.Router = (*Router)(nil)

// New returns the whole of a Consul mesh gateway's routing over src: WAN
// federation of Consul's servers, cluster peering (control plane, exported
// and imported services) and the mesh (local services, other datacenters
// and partitions), each as its Router describes. An exported service whose
// protocol is http, http2 or grpc is refused (ReasonL7Export) until
// Peering.Terminate, Peering.L7 or Peering.PassThroughL7Exports says
// otherwise.
func New(src mesh.Source) *Router {
	r := &Router{}
	r.Mesh.Source = src
	r.Peering.Source, r.Peering.Mesh = src, &r.Mesh
	r.Federation.Source, r.Federation.Next = src, &r.Peering
	return r
}

// Route implements gateway.Router.
func (r *Router) Route(ctx context.Context, hello *sni.ClientHello) (gateway.Route, error) {
	return r.Federation.Route(ctx, hello)
}
