// Package peering is where routing.PeeringRouter was before it moved to
// package routing.
//
// Deprecated: use package routing: routing.New for the whole of a Consul
// mesh gateway's routing, routing.PeeringRouter for peering and the mesh
// alone. This package goes in the next release.
package peering

import "github.com/meshgate/meshgate/routing"

// Router is routing.PeeringRouter.
//
// Deprecated: use routing.New, or routing.PeeringRouter.
type Router = routing.PeeringRouter

// Rejection reasons, as in package routing.
//
// Deprecated: use routing's.
const (
	ReasonNotThroughGateways = routing.ReasonNotThroughGateways
	ReasonNoServers          = routing.ReasonNoPeeringServers
	ReasonNotExported        = routing.ReasonNotExported
	ReasonL7Export           = routing.ReasonL7Export
)

// Route kinds, as in package routing.
//
// Deprecated: use routing's.
const (
	KindPeeringServers = routing.RoutePeeringServers
	KindPeerServers    = routing.RoutePeerServers
	KindExported       = routing.RouteExportedService
	KindImported       = routing.RouteImportedService
)
