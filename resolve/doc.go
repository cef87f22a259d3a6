// Package resolve applies Consul's rules on top of sni, modes and the mesh
// model: where an upstream's connections go (PlanUpstream and friends, with
// the failover chain Consul's discovery chain compiles), where a peer's
// connections to an exported service go (RouteExported), and which HTTP
// route and split a request takes (RouteHTTP).
//
// It works on a mesh.View, one immutable picture of the mesh, which a
// mesh.Source provides: config.Static from files or from a View built in
// Go, consulview.Source from a live agent. Planning is a pure function of a
// View: this package imports neither the gateway nor the file loaders, and
// its tests need no Consul agent. Package routing turns the same rules into
// a gateway's Routers.
package resolve
