// Package meshtest starts the mesh around a test: a meshgate gateway for a
// real Consul agent, registered with it, that counts what it forwards, and
// Connect-native services that echo.
package meshtest

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/consultest"
	"github.com/meshgate/meshgate/internal/echo"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
)

// Gateway is a meshgate mesh gateway for one agent's datacenter. It is its
// server's Observer: the embedded Counters count every event, and Closed
// counts forwarded connections by server name.
type Gateway struct {
	gateway.Counters
	Addr string
	srv  *gateway.Server
	mu   sync.Mutex
	n    map[string]int
}

// Idle reports whether the gateway has no connection open: every
// connection it accepted is counted.
func (g *Gateway) Idle() bool { return g.srv.ActiveConns() == 0 }

// Closed counts a forwarded connection by its server name.
func (g *Gateway) Closed(r *gateway.ConnRecord) {
	if r.Outcome != gateway.OutcomeForwarded {
		return
	}
	g.mu.Lock()
	g.n[r.ServerName]++
	g.mu.Unlock()
}

// Count returns how many connections for serverName the gateway has
// forwarded and closed.
func (g *Gateway) Count(serverName string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n[serverName]
}

// StartGateway serves a gateway routing from agent's live view on
// loopback, registered with agent as "mesh-gateway". It stops when the test
// ends.
func StartGateway(t testing.TB, agent *consultest.Agent) *Gateway {
	t.Helper()
	src, err := consulview.New(context.Background(), agent.Client, consulview.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	g := &Gateway{n: map[string]int{}}
	srv := &gateway.Server{Router: &routing.MeshRouter{Source: src}, Observer: g, ConnectTimeout: 2 * time.Second}
	g.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.Addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if _, err := registration.Register(context.Background(), agent.Client, registration.Gateway{Address: g.Addr, CheckInterval: time.Second}); err != nil {
		t.Fatal(err)
	}
	return g
}

// ServeNative runs a Connect-native service registered as name on agent,
// presenting certs, that echoes what it reads.
func ServeNative(t testing.TB, agent *consultest.Agent, name string, certs *sidecar.Certs) {
	t.Helper()
	StartNative(t, agent, name, certs)
}

// Native is a Connect-native echo service registered with an agent, with a
// TTL check the test sets, counting the connections it accepts.
type Native struct {
	ID       string
	Addr     string
	agent    *consultest.Agent
	ln       net.Listener
	accepted atomic.Int64
}

// StartNative is ServeNative, returning the service to count its
// connections and set its health; it starts passing.
func StartNative(t testing.TB, agent *consultest.Agent, name string, certs *sidecar.Certs) *Native {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := &Native{agent: agent, ln: ln, Addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, func() { n.accepted.Add(1) })
	port := ln.Addr().(*net.TCPAddr).Port
	n.ID = name + "-" + strconv.Itoa(port)
	if err := agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
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
func (n *Native) SetHealth(t testing.TB, status string) {
	t.Helper()
	if err := n.agent.Client.Agent().UpdateTTL(n.ID+"-ttl", "set by the test", status); err != nil {
		t.Fatal(err)
	}
}

// Stop closes the service's listener, leaving it registered (and its check
// as it was): connections to it are refused.
func (n *Native) Stop() { n.ln.Close() }

// Echo serves ln, echoing each connection's bytes, until the test ends.
func Echo(t testing.TB, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
}

// WatchCerts watches service's certificates on agent until the test ends.
func WatchCerts(t testing.TB, agent *consultest.Agent, service string) *sidecar.Certs {
	t.Helper()
	c, err := sidecar.WatchCerts(context.Background(), agent.Client, service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Listen listens on addr, waiting while it is still taken: a gateway
// restarted on its old address may find the port held for a moment by the
// process that just let it go. An empty addr is a port picked as
// consultest picks agents' (consultest.FreeAddr), outside the ephemeral
// range where the machine has one, so that no outgoing connection takes it
// while the gateway is down.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = consultest.FreeAddr(t)
	}
	var ln net.Listener
	consultest.WaitFor(t, time.Minute, "the address "+addr+" to be free", func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}
