// Package sidecar is the sidecar side of the mesh-gateway modes, for Go
// programs: it carries out resolve's plan for an upstream. WatchCerts keeps a
// service's Connect leaf certificate and the CA roots current from the local
// agent; Dialer.Dial plans the upstream (mode, deciding layer, SNI and
// addresses: direct, through the local datacenter's mesh gateway, or
// through the destination's), dials the addresses in order and originates
// mTLS, accepting only the destination's SPIFFE identity.
//
// A Connect-native Go service dials its upstreams with a Dialer and serves
// with Certs.AuthorizingServerTLSConfig, which lets in only the clients
// Consul's intentions allow (the local agent decides at each handshake), or
// with Certs.ServerTLSConfig, which checks the client's chain only.
package sidecar
