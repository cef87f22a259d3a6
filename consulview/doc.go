// Package consulview keeps a mesh.View current from a live Consul agent
// through the consul/api client: config entries, services and their mesh
// endpoints, every datacenter's mesh gateways, the local Consul servers,
// peerings, exported and imported services: a consulview.Source is the
// mesh.Source of a live agent. Planning (package resolve) and routing
// (package routing) over a View, and the static source from files (package
// config), need no agent; registering a gateway is package registration's.
//
//	src, err := consulview.New(ctx, client, consulview.Options{Logger: log})
//	router := &routing.MeshRouter{Source: src}
package consulview
