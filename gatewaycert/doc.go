// Package gatewaycert gives a mesh gateway its own certificate, read from
// the local Consul agent's xDS server, the one place the agent hands it
// out.
//
// Consul issues a mesh gateway a leaf certificate of its own, with the
// identity spiffe://<trust domain>/gateway/mesh/dc/<dc>, once the gateway
// serves an export to a cluster peer. The agent's HTTP API does not issue
// it (/v1/agent/connect/ca/leaf makes service certificates only); the agent
// puts it inline in the TLS context of the listener it gives the gateway
// over its ADS stream, on the filter chains of exports whose protocol is
// http, http2 or grpc, which the gateway terminates (package routing/l7).
// Watch opens that stream as the gateway's proxy, asks for listeners only,
// and keeps the certificate current in a sidecar.Certs, with the CA roots
// from the agent's HTTP API.
//
// It lives apart from package sidecar so that a program that only dials
// upstreams links no gRPC and no Envoy protos.
package gatewaycert
