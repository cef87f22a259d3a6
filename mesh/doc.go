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
// A source publishes a canonical View (Canonical; consulview builds its
// keys with KeyOf, ServiceKeyOf and LocationOf): every key's namespace
// and partition set, "default" where Consul leaves them empty, so lookups
// compare keys as they are. The View's methods take Consul's defaults in
// their arguments: an empty namespace or partition is "default", an empty
// datacenter the local one.
package mesh
