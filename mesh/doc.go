// Package mesh is meshgate's one model of a Consul service mesh, as a mesh
// gateway or a sidecar sees it: View, the local cluster's identity, the
// config entries that decide modes and routes, and where services,
// gateways, peers and servers are. Every source fills the same View: a
// topology file (package config decodes it straight into one), a View built
// in Go, and the live agent (package consulview). A Source provides the
// current View. Package resolve gives it Consul's semantics (plans,
// failover chains, exported routes), and package routing routes a
// gateway's connections over it.
//
// The View's methods are lookups with Consul's defaults: an empty namespace
// or partition is "default", an empty datacenter the local one.
package mesh
