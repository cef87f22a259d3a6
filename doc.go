// Package meshgate lets a Go program embed Consul mesh-gateway routing: read
// the SNI of a service-mesh mTLS connection and forward the still-encrypted
// bytes where Consul would, without Envoy.
//
// The module is a set of small packages, each with one job; policy sits above
// mechanism:
//
//   - sni reads a TLS ClientHello off a connection (every record, every read,
//     bounded) and builds and parses Consul's SNI names.
//   - gateway is the data path: a pluggable Router, the accept, peek, route
//     and dial loop, and a zero-copy Forwarder. It knows nothing of Consul.
//   - modes is the mesh-gateway mode (none, local, remote) and its
//     precedence, saying which layer decided.
//   - config loads the files people give Consul (config entries, service
//     definitions and meshgate's topology document in HCL, JSON or YAML)
//     into consul/api types, strictly.
//   - resolve applies Consul's semantics over one model of the mesh, a View:
//     it plans an upstream's path and failover chain, and routes a mesh
//     gateway's SNI. resolve/resolvetest asserts plans in other projects'
//     tests.
//   - peering routes cluster peering's names (the control plane and
//     exported and imported services); federation routes Consul servers'
//     names for WAN federation through mesh gateways, and with its defaults
//     is the whole of a Consul mesh gateway's routing.
//   - consulview keeps a View current from a live Consul agent.
//   - sidecar dials upstreams from a Go program as a Consul sidecar would:
//     by mode, with failover, over mTLS.
//   - proxyconfig reads a gateway's Proxy.Config options; gatewaymetrics
//     and accesslog observe a gateway as Prometheus metrics and log lines.
//
// The examples directory holds the binaries people run, docs the guides, and
// tools the measurement programs. Start with README.md.
package meshgate
