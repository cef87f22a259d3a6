// Package resolve applies Consul's mesh-gateway semantics on top of sni and
// modes: where an upstream's connections go (PlanUpstream and friends), and,
// on a gateway, where a connection with a given SNI goes (MeshRouter).
//
// Both work on a View, one immutable picture of the mesh: the local
// datacenter, partition and trust domain, the config entries that decide
// modes, each service's healthy mesh endpoints, the mesh gateways of each
// datacenter, and the peers. A Source provides the current View. Static
// builds one from files (config entries, service definitions and a topology
// document, see package config), StaticView from a View built in Go;
// package consulview keeps one current from a live agent. Planning and
// routing are pure functions of a View, and this package's tests need no
// Consul agent.
package resolve
