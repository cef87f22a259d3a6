// Package peering routes a mesh gateway's share of Consul cluster peering, as
// Consul's own mesh gateway (Envoy, as Consul 1.22 configures it) does, over
// the same resolve.View as the rest of the mesh:
//
//   - control plane, accepting side: while the mesh config entry says
//     Peering { PeerThroughMeshGateways = true }, the name
//     server.<local dc>.peering.<local trust domain> goes to the local Consul
//     servers' gRPC TLS addresses (View.Servers);
//   - control plane, dialing side: under the same entry, each peering this
//     cluster dials sends its peer's server name (View.Peers[...].ServerName)
//     to the peer's server addresses, which are the peer's mesh gateways when
//     the peer routes peering through them too;
//   - exported services: <svc>.<ns>.<partition>.<peer>.external.<local td>
//     goes to the service's healthy local mesh endpoints, only if the service
//     is exported to that peer (View.Exports); the bytes pass through, never
//     decrypted. An export whose protocol is http, http2 or grpc, which
//     Consul's gateway terminates, goes to an l7.Terminator (package
//     peering/l7) when Router.Terminate (or Router.L7) names one, passes
//     through as TCP with Router.PassThroughL7Exports, and is refused
//     otherwise;
//   - imported services: the exact SNI of each service a peer exports to this
//     cluster (View.Peers[...].Imports) goes to that peer's gateways, which is
//     how sidecars in "local" mode reach peered upstreams.
//
// Every other name goes to the mesh router of package resolve. A name in a
// peer's trust domain is routed only when it equals one learned from Consul
// (or from a static topology), never by pattern, so a gateway is no open
// relay for peers either; every refusal names its reason.
//
// The data comes from a resolve.Source: resolve.Static reads peers, imports,
// servers and the exported-services entry from files; consulview.Source follows
// the mesh entry, the peerings, the exported services, the imported services
// and the local servers on a live agent.
package peering
