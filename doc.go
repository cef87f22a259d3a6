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
//   - mesh is the one model of the mesh, a View, and Source, what provides
//     the current one.
//   - modes is the mesh-gateway mode (none, local, remote) and its
//     precedence, saying which layer decided.
//   - resolve applies Consul's rules over a View: it plans an upstream's
//     path and failover chain, a peer's route to an export, an HTTP
//     request's route. resolve/resolvetest asserts plans in other projects'
//     tests.
//   - config loads the files people give Consul (config entries, service
//     definitions and meshgate's topology document in HCL, JSON or YAML)
//     strictly, and is the Source of files.
//   - routing holds the gateway Routers: routing.New is the whole of a
//     Consul mesh gateway's routing (WAN federation, cluster peering, the
//     mesh), and each of its three Routers works alone; routing/l7
//     terminates a peer's HTTP exports.
//   - consulview keeps a View current from a live Consul agent;
//     registration registers a gateway with it; gatewaycert reads a
//     gateway's own certificate from it.
//   - sidecar dials upstreams from a Go program as a Consul sidecar would:
//     by mode, with failover, over mTLS.
//   - proxyconfig reads a gateway's Proxy.Config options; liveconfig
//     applies them while the gateway runs; gatewaymetrics and accesslog
//     observe a gateway as Prometheus metrics and log lines.
//   - gatewayhealth probes the gateways of other datacenters and peers and
//     leaves out of the View those that stopped answering; handover
//     replaces a running gateway's binary without closing its listeners.
//
// The examples directory holds the binaries people run, docs the guides, and
// tools the measurement programs. docs/design.md draws the layout and the
// imports it allows; layout_test.go fails when an import crosses it. Start
// with README.md.
package meshgate
