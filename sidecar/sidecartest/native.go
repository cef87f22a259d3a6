package sidecartest

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/sidecar"
)

// TB is the part of testing.TB these functions use: a test, a benchmark,
// or a program's stand-in that stops what they start when it ends. (The
// package does not import testing, so that a program using only CA does
// not link it.)
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// ServeNative runs a Connect-native service registered as name with the
// agent client talks to, presenting certs, that echoes what it reads.
func ServeNative(t TB, client *api.Client, name string, certs *sidecar.Certs) {
	t.Helper()
	StartNative(t, client, name, certs)
}

// Native is a Connect-native echo service registered with an agent, with a
// TTL check the test sets, counting the connections it accepts.
type Native struct {
	ID       string
	Addr     string
	client   *api.Client
	ln       net.Listener
	accepted atomic.Int64
}

// StartNative is ServeNative, returning the service to count its
// connections and set its health; it starts passing. It stops when the
// test ends.
func StartNative(t TB, client *api.Client, name string, certs *sidecar.Certs) *Native {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := &Native{client: client, ln: ln, Addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, func() { n.accepted.Add(1) })
	port := ln.Addr().(*net.TCPAddr).Port
	n.ID = name + "-" + strconv.Itoa(port)
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: n.ID, Name: name, Address: "127.0.0.1", Port: port, Connect: &api.AgentServiceConnect{Native: true},
		TaggedAddresses: map[string]api.ServiceAddress{"wan": {Address: "127.0.0.1", Port: port}},
		Check:           &api.AgentServiceCheck{CheckID: n.ID + "-ttl", TTL: "1h"}}); err != nil {
		t.Fatal(err)
	}
	n.SetHealth(t, api.HealthPassing)
	return n
}

// Accepted counts the connections the service accepted.
func (n *Native) Accepted() int { return int(n.accepted.Load()) }

// SetHealth sets the service's TTL check: api.HealthPassing, HealthWarning
// or HealthCritical.
func (n *Native) SetHealth(t TB, status string) {
	t.Helper()
	if err := n.client.Agent().UpdateTTL(n.ID+"-ttl", "set by the test", status); err != nil {
		t.Fatal(err)
	}
}

// Stop closes the service's listener, leaving it registered (and its check
// as it was): connections to it are refused.
func (n *Native) Stop() { n.ln.Close() }

// WatchCerts watches service's certificates on the agent client talks to
// (sidecar.WatchCerts) until the test ends.
func WatchCerts(t TB, client *api.Client, service string) *sidecar.Certs {
	t.Helper()
	c, err := sidecar.WatchCerts(context.Background(), client, service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
