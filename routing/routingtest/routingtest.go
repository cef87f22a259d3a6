// Package routingtest starts a meshgate mesh gateway for a test: routing as
// Consul's gateway routes the local datacenter (routing.MeshRouter) from a
// live agent's view, registered with that agent, counting what it forwards.
// meshgate's tests of sidecars dial through it, and so can a program's.
package routingtest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/routing"
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

// StartGateway serves a gateway routing from the live view of the agent
// client talks to, on loopback, registered with it as "mesh-gateway". It
// stops when the test ends.
func StartGateway(t testing.TB, client *api.Client) *Gateway {
	t.Helper()
	src, err := consulview.New(context.Background(), client, consulview.Options{})
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
	if _, err := registration.Register(context.Background(), client, registration.Gateway{Address: g.Addr, CheckInterval: time.Second}); err != nil {
		t.Fatal(err)
	}
	return g
}
