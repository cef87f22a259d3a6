// Package sidecartest gives tests of Go services in the mesh what they
// need around package sidecar: a throwaway Connect CA whose certificates
// are sidecar.Certs (no agent needed), and, with a real Consul agent,
// Connect-native echo services registered with it and certificates watched
// for the length of a test.
//
// meshgate's own tests use it, and so can a program's: the functions that
// need an agent take its *api.Client, and stop what they start when the
// test ends.
package sidecartest
