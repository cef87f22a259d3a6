package sidecar_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// instances starts n TLS echo servers with api's identity in dc2 and
// returns their addresses and accept counters.
func instances(t *testing.T, ca *sidecartest.CA, n int) ([]string, []*atomic.Int64) {
	t.Helper()
	certs, err := ca.Certs(sidecar.Identity{Datacenter: "dc2", Service: "api"})
	require.NoError(t, err)
	addrs, counts := make([]string, n), make([]*atomic.Int64, n)
	for i := range n {
		counts[i] = &atomic.Int64{}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addrs[i] = ln.Addr().String()
		cl := &countingListener{Listener: tls.NewListener(ln, certs.ServerTLSConfig()), n: counts[i]}
		t.Cleanup(func() { cl.Close() })
		go echo.Serve(cl, nil)
	}
	return addrs, counts
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// spreadDialer is web's Dialer over api's instances in dc2 (dialled
// directly, mode none), with their weights and api's resolver.
func spreadDialer(t *testing.T, ca *sidecartest.CA, addrs []string, weights []int, resolver *api.ServiceResolverConfigEntry) *sidecar.Dialer {
	t.Helper()
	eps := make([]mesh.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = mesh.Endpoint{WAN: a}
		if i < len(weights) {
			eps[i].Weight = weights[i]
		}
	}
	v := &mesh.View{Datacenter: "dc1", TrustDomain: ca.TrustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api", Datacenter: "dc2"}: eps}}
	if resolver != nil {
		v.Resolvers = map[mesh.EntryKey]*api.ServiceResolverConfigEntry{mesh.KeyOf("api", "", ""): resolver}
	}
	src, err := config.StaticView(v)
	require.NoError(t, err)
	certs, err := ca.Certs(sidecar.Identity{Datacenter: "dc1", Service: "web"})
	require.NoError(t, err)
	d := &sidecar.Dialer{Source: src, Certs: certs, Instance: mesh.Instance{Service: "web", Name: "web-sidecar-proxy"}}
	t.Cleanup(func() { d.Close() })
	return d
}

// dialN dials api n times, closing each connection once it echoes, or
// keeping it open when hold is set, and returns where they landed.
func dialN(t *testing.T, d *sidecar.Dialer, n int, counts []*atomic.Int64, hold bool) []int64 {
	t.Helper()
	before := make([]int64, len(counts))
	for i, c := range counts {
		before[i] = c.Load()
	}
	for range n {
		c, plan, err := d.Dial(context.Background(), upstream("api", api.MeshGatewayModeNone))
		require.NoError(t, err)
		_, err = c.Write([]byte("ping"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, 4))
		require.NoError(t, err)
		if hold {
			t.Cleanup(func() { c.Close() })
		} else {
			c.Close()
		}
		assert.Equal(t, 0, plan.Served)
	}
	got := make([]int64, len(counts))
	for i, c := range counts {
		got[i] = c.Load() - before[i]
	}
	return got
}

// A target's connections spread over its instances as Envoy's sidecar
// spreads them under Consul: round robin by default (exactly 100 of 300
// each), by weight (3:1: exactly 300 and 100 of 400), least_request on the
// connections the Dialer holds open (60 held: 20 ± 4 each), random (100
// ± 41 of 300 each: five standard deviations of the binomial), and a
// Dialer.Balance over the plan's.
func TestDialerSpreadsOverInstances(t *testing.T) {
	ca, err := sidecartest.NewCA(config.DefaultTrustDomain)
	require.NoError(t, err)
	addrs, counts := instances(t, ca, 3)

	d := spreadDialer(t, ca, addrs, nil, nil)
	plan := d.Plan(upstream("api", api.MeshGatewayModeNone))
	assert.Equal(t, resolve.Balance{Policy: resolve.PolicyRoundRobin, From: "default"}, plan.Balance)
	assert.Equal(t, []int64{100, 100, 100}, dialN(t, d, 300, counts, false))

	d = spreadDialer(t, ca, addrs[:2], []int{3, 1}, nil)
	assert.Equal(t, []int64{300, 100}, dialN(t, d, 400, counts[:2], false))

	lr := &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", LoadBalancer: &api.LoadBalancer{Policy: "least_request"}}
	d = spreadDialer(t, ca, addrs, nil, lr)
	assert.Equal(t, "least_request", d.Plan(upstream("api", api.MeshGatewayModeNone)).Balance.Policy)
	for i, n := range dialN(t, d, 60, counts, true) {
		assert.InDelta(t, 20, n, 4, "instance %d", i)
	}

	rnd := &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", LoadBalancer: &api.LoadBalancer{Policy: "random"}}
	d = spreadDialer(t, ca, addrs, nil, rnd)
	assert.Equal(t, "random", d.Plan(upstream("api", api.MeshGatewayModeNone)).Balance.Policy)
	for i, n := range dialN(t, d, 300, counts, false) {
		assert.InDelta(t, 100, n, 41, "random: instance %d", i)
	}

	d = spreadDialer(t, ca, addrs, nil, lr)
	d.Balance = resolve.Balance{Policy: resolve.PolicyRoundRobin}
	assert.Equal(t, []int64{10, 10, 10}, dialN(t, d, 30, counts, false), "Dialer.Balance over the plan's")
}
