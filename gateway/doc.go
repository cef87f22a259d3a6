// Package gateway is the data path of an SNI-routing TCP gateway: it accepts
// TLS connections, peeks at the ClientHello (package sni), asks a pluggable
// Router where the connection goes, dials the route's targets in order, and
// forwards the still-encrypted bytes both ways with a zero-copy Forwarder. It
// knows nothing of Consul; package routing provides the Routers with
// Consul's semantics.
//
// The Server's lifecycle follows net/http: Serve returns ErrServerClosed after
// Shutdown (stop accepting, let connections finish) or Close (end them now),
// and temporary accept errors such as EMFILE back off instead of stopping it.
package gateway
