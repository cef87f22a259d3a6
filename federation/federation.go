// Package federation is where routing.FederationRouter was before it moved
// to package routing.
//
// Deprecated: use package routing: routing.New for the whole of a Consul
// mesh gateway's routing, routing.FederationRouter for WAN federation
// alone. This package goes in the next release.
package federation

import "github.com/meshgate/meshgate/routing"

// Router is routing.FederationRouter.
//
// Deprecated: use routing.New, or routing.FederationRouter.
type Router = routing.FederationRouter

// KindServers is routing.RouteWANFederation.
//
// Deprecated: use routing.RouteWANFederation.
const KindServers = routing.RouteWANFederation

// Rejection reasons, as in package routing.
//
// Deprecated: use routing's.
const (
	ReasonNotFederating = routing.ReasonNotFederating
	ReasonUnknownServer = routing.ReasonUnknownServer
	ReasonNoServers     = routing.ReasonNoServers
)
