package sidecar_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// world is two datacenters on loopback without Consul: a meshgate gateway
// in each over a static view, Connect-native services in dc2 with
// certificates from a throwaway CA, and web's Dialer in dc1.
type world struct {
	ca       *sidecartest.CA
	gw1, gw2 *routeCounter
	dialer   *sidecar.Dialer
}

// routeCounter is a Router that counts the names it routes.
type routeCounter struct {
	next routing.MeshRouter
	addr string
	mu   sync.Mutex
	n    map[string]int
}

func (r *routeCounter) Route(ctx context.Context, h *sni.ClientHello) (gateway.Route, error) {
	r.mu.Lock()
	r.n[h.ServerName]++
	r.mu.Unlock()
	return r.next.Route(ctx, h)
}

func (r *routeCounter) count(name string) int { r.mu.Lock(); defer r.mu.Unlock(); return r.n[name] }

func serveTLS(tb testing.TB, cfg *tls.Config) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	return ln.Addr().String()
}

func startGatewayOver(tb testing.TB, v *mesh.View) *routeCounter {
	src, err := config.StaticView(v)
	require.NoError(tb, err)
	r := &routeCounter{next: routing.MeshRouter{Source: src}, n: map[string]int{}}
	srv := &gateway.Server{Router: r}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	r.addr = ln.Addr().String()
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return r
}

// newWorld builds the world; with deadFirst, api's first direct address in
// dc2 is one nothing listens on.
func newWorld(tb testing.TB, deadFirst bool) *world {
	ca, err := sidecartest.NewCA(config.DefaultTrustDomain)
	require.NoError(tb, err)
	certs := func(svc, dc string) *sidecar.Certs {
		c, err := ca.Certs(sidecar.Identity{Datacenter: dc, Service: svc})
		require.NoError(tb, err)
		return c
	}
	apiAddr := serveTLS(tb, certs("api", "dc2").ServerTLSConfig())
	// cache presents api's certificate.
	cacheAddr := serveTLS(tb, certs("api", "dc2").ServerTLSConfig())
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	deadAddr := dead.Addr().String()
	dead.Close()

	gw2 := startGatewayOver(tb, &mesh.View{Datacenter: "dc2", TrustDomain: ca.TrustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: apiAddr}}, {Name: "cache"}: {{Address: cacheAddr}}}})
	gw1 := startGatewayOver(tb, &mesh.View{Datacenter: "dc1", TrustDomain: ca.TrustDomain,
		Gateways: map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2"}: {{WAN: gw2.addr}}}})
	apiDirect := []mesh.Endpoint{{WAN: apiAddr}}
	if deadFirst {
		apiDirect = append([]mesh.Endpoint{{WAN: deadAddr}}, apiDirect...)
	}
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: ca.TrustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api", Datacenter: "dc2"}:   apiDirect,
			{Name: "cache", Datacenter: "dc2"}: {{WAN: cacheAddr}},
		},
		Gateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: "dc1"}: {{Address: gw1.addr}},
			{Datacenter: "dc2"}: {{WAN: gw2.addr}},
		}})
	require.NoError(tb, err)
	return &world{ca: ca, gw1: gw1, gw2: gw2, dialer: &sidecar.Dialer{Source: src, Certs: certs("web", "dc1"),
		Instance: mesh.Instance{Service: "web", Name: "web-sidecar-proxy"}}}
}

func upstream(name string, mode api.MeshGatewayMode) api.Upstream {
	return api.Upstream{DestinationName: name, Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: mode}}
}

// Without Consul: each mode crosses exactly its gateways with the bytes
// intact, a dead first address is passed over (mode none), and a destination with
// another service's certificate is refused.
func TestDialerCarriesOutEachMode(t *testing.T) {
	w := newWorld(t, true)
	apiSNI := sni.ServiceSNI("api", "", "", "", "dc2", w.ca.TrustDomain)
	for _, tc := range []struct {
		mode       api.MeshGatewayMode
		via1, via2 int
	}{{api.MeshGatewayModeNone, 0, 0}, {api.MeshGatewayModeLocal, 1, 1}, {api.MeshGatewayModeRemote, 0, 1}} {
		before1, before2 := w.gw1.count(apiSNI), w.gw2.count(apiSNI)
		c, plan, err := w.dialer.Dial(context.Background(), upstream("api", tc.mode))
		require.NoError(t, err, tc.mode)
		echoes(t, c)
		c.Close()
		assert.Equal(t, tc.via1, w.gw1.count(apiSNI)-before1, "%s: through dc1's gateway", tc.mode)
		assert.Equal(t, tc.via2, w.gw2.count(apiSNI)-before2, "%s: through dc2's gateway", tc.mode)
		assert.Equal(t, apiSNI, plan.SNI)
	}

	for _, mode := range []api.MeshGatewayMode{api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote} {
		_, _, err := w.dialer.Dial(context.Background(), upstream("cache", mode))
		assert.True(t, errors.Is(err, sidecar.ErrWrongIdentity), "%s: %v", mode, err)
	}

	// A certificate from another CA, for the right identity, is refused too.
	other, err := sidecartest.NewCA(w.ca.TrustDomain)
	require.NoError(t, err)
	impostor, err := other.Certs(sidecar.Identity{Datacenter: "dc2", Service: "api"})
	require.NoError(t, err)
	addr := serveTLS(t, impostor.ServerTLSConfig())
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: w.ca.TrustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api", Datacenter: "dc2"}: {{WAN: addr}}}})
	require.NoError(t, err)
	d := &sidecar.Dialer{Source: src, Certs: w.dialer.Certs, Instance: w.dialer.Instance}
	_, _, err = d.Dial(context.Background(), upstream("api", api.MeshGatewayModeNone))
	assert.ErrorContains(t, err, "does not chain to the mesh's roots")
}

// BenchmarkDial is the cost of each mode on loopback: TCP connect and the
// TLS 1.3 handshake with the client certificate, through no, one or two
// meshgate gateways.
func BenchmarkDial(b *testing.B) {
	w := newWorld(b, false)
	for _, mode := range []api.MeshGatewayMode{api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote} {
		b.Run(string(mode), func(b *testing.B) {
			up := upstream("api", mode)
			for b.Loop() {
				c, _, err := w.dialer.Dial(context.Background(), up)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// failoverWorld is api in dc1 and in dc2 with a resolver failing dc1 over
// to dc2; dc1Healthy says whether the view lists dc1's instance, dc1Addr
// where it is (a live api or a dead address), dc2Healthy whether the view
// lists dc2's.
func failoverWorld(tb testing.TB, w *world, dc1Addr string, dc1Healthy, dc2Healthy bool) *sidecar.Dialer {
	services := map[mesh.ServiceKey][]mesh.Endpoint{}
	if dc1Healthy {
		services[mesh.ServiceKey{Name: "api"}] = []mesh.Endpoint{{Address: dc1Addr}}
	}
	if dc2Healthy {
		services[mesh.ServiceKey{Name: "api", Datacenter: "dc2"}] = w.dialer.Source.View().Endpoints("api", "", "", "dc2")
	}
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: w.ca.TrustDomain, Services: services,
		Resolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{mesh.KeyOf("api", "", ""): {Kind: api.ServiceResolver, Name: "api",
			Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc2"}}}}},
		Gateways: w.dialer.Source.View().Gateways})
	require.NoError(tb, err)
	return &sidecar.Dialer{Source: src, Certs: w.dialer.Certs, Instance: w.dialer.Instance, Client: w.dialer.Client, ConnectTimeout: w.dialer.ConnectTimeout}
}

// Without Consul, along a service-resolver's failover to another
// datacenter, in each mode: a healthy local target serves; one with no
// healthy instance is passed over at once; one whose dials fail is passed
// over for the next; and with no target healthy, the targets are still
// tried in order.
func TestDialerFailsOver(t *testing.T) {
	w := newWorld(t, false)
	dc1API := serveTLS(t, func() *tls.Config {
		c, err := w.ca.Certs(sidecar.Identity{Datacenter: "dc1", Service: "api"})
		require.NoError(t, err)
		return c.ServerTLSConfig()
	}())
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	apiSNI := sni.ServiceSNI("api", "", "", "", "dc2", w.ca.TrustDomain)

	for _, mode := range []api.MeshGatewayMode{api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote} {
		up := api.Upstream{DestinationName: "api", MeshGateway: api.MeshGatewayConfig{Mode: mode}}
		for _, c := range []struct {
			name                   string
			dc1Addr                string
			dc1Healthy, dc2Healthy bool
			served                 int
			passedOver             string
		}{
			{"dc1 healthy", dc1API, true, true, 0, ""},
			{"dc1 without a healthy instance", dc1API, false, true, 1, "api dc1: no healthy instances"},
			{"dc1's instance refuses connections", deadAddr, true, true, 1, "connection refused"},
			{"nothing healthy: tried in order anyway", deadAddr, false, false, 1, "api dc1: nothing to dial"},
		} {
			d := failoverWorld(t, w, c.dc1Addr, c.dc1Healthy, c.dc2Healthy)
			before := w.gw2.count(apiSNI)
			conn, plan, err := d.Dial(context.Background(), up)
			if !c.dc1Healthy && !c.dc2Healthy && mode == api.MeshGatewayModeNone {
				// Direct, a target the view lists nowhere has no address.
				assert.ErrorContains(t, err, "api dc2: nothing to dial", c.name)
				continue
			}
			require.NoError(t, err, "%s, %s", mode, c.name)
			echoes(t, conn)
			conn.Close()
			require.Len(t, plan.Chain(), 2)
			assert.Equal(t, c.served, plan.Served, "%s, %s", mode, c.name)
			if c.served == 0 {
				assert.Empty(t, plan.PassedOver)
				continue
			}
			require.Len(t, plan.PassedOver, 1, "%s, %s", mode, c.name)
			assert.Contains(t, plan.PassedOver[0], c.passedOver, "%s, %s", mode, c.name)
			viaGateway := 0
			if mode != api.MeshGatewayModeNone {
				viaGateway = 1
			}
			assert.Equal(t, viaGateway, w.gw2.count(apiSNI)-before, "%s, %s: dc2's gateway carried it", mode, c.name)
		}
	}

	// Nothing answers anywhere: the error names each target and why.
	d := failoverWorld(t, w, deadAddr, true, false)
	d.Source = mustStatic(t, &mesh.View{Datacenter: "dc1", TrustDomain: w.ca.TrustDomain,
		Services:  map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: deadAddr}}},
		Resolvers: d.Source.View().Resolvers})
	_, _, err = d.Dial(context.Background(), api.Upstream{DestinationName: "api"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "api dc1: "+deadAddr)
	assert.Contains(t, err.Error(), "api dc2: nothing to dial")
}

func mustStatic(tb testing.TB, v *mesh.View) *config.Static {
	src, err := config.StaticView(v)
	require.NoError(tb, err)
	return src
}
