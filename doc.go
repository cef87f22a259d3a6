// Package meshgate lets a Go program embed Consul mesh-gateway routing: read
// the SNI of a service-mesh mTLS connection and forward the still-encrypted
// bytes where Consul would, without Envoy.
//
// The module is a set of small packages, each with one job; policy sits above
// mechanism:
//
//   - sni reads a TLS ClientHello off a connection (every record, every read,
//     bounded) and builds and parses Consul's SNI names.
//   - modes is the mesh-gateway mode (none, local, remote) and its
//     precedence, saying which layer decided.
//   - config loads the files people give Consul (config entries and service
//     definitions in HCL, JSON or YAML) into consul/api types, strictly.
//   - resolve applies Consul's semantics: it plans an upstream's path and
//     routes a gateway's SNI, from a static topology or a live agent.
//   - gateway is the data path: a pluggable Router, the accept, peek, route
//     and dial loop, and a zero-copy Forwarder. It knows nothing of Consul.
//
// The examples directory holds the binaries people run. See README.md.
package meshgate
