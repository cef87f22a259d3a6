package sidecar_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/democa"
	"github.com/meshgate/meshgate/internal/meshtest"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// world is two datacenters on loopback without Consul: a meshgate gateway
// in each over a static view, Connect-native services in dc2 with
// certificates from a throwaway CA, and web's Dialer in dc1.
type world struct {
	ca       *democa.CA
	gw1, gw2 *routeCounter
	dialer   *sidecar.Dialer
}

// routeCounter is a Router that counts the names it routes.
type routeCounter struct {
	next resolve.MeshRouter
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
	meshtest.Echo(tb, ln)
	return ln.Addr().String()
}

func startGatewayOver(tb testing.TB, v *resolve.View) *routeCounter {
	src, err := resolve.StaticView(v)
	require.NoError(tb, err)
	r := &routeCounter{next: resolve.MeshRouter{Source: src}, n: map[string]int{}}
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
	ca, err := democa.New(resolve.DefaultTrustDomain)
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

	gw2 := startGatewayOver(tb, &resolve.View{Datacenter: "dc2", TrustDomain: ca.TrustDomain,
		Services: map[resolve.ServiceKey][]resolve.Endpoint{{Name: "api"}: {{Address: apiAddr}}, {Name: "cache"}: {{Address: cacheAddr}}}})
	gw1 := startGatewayOver(tb, &resolve.View{Datacenter: "dc1", TrustDomain: ca.TrustDomain,
		Gateways: map[resolve.Location][]resolve.Endpoint{{Datacenter: "dc2"}: {{WAN: gw2.addr}}}})
	apiDirect := []resolve.Endpoint{{WAN: apiAddr}}
	if deadFirst {
		apiDirect = append([]resolve.Endpoint{{WAN: deadAddr}}, apiDirect...)
	}
	src, err := resolve.StaticView(&resolve.View{Datacenter: "dc1", TrustDomain: ca.TrustDomain,
		Services: map[resolve.ServiceKey][]resolve.Endpoint{
			{Name: "api", Datacenter: "dc2"}:   apiDirect,
			{Name: "cache", Datacenter: "dc2"}: {{WAN: cacheAddr}},
		},
		Gateways: map[resolve.Location][]resolve.Endpoint{
			{Datacenter: "dc1"}: {{Address: gw1.addr}},
			{Datacenter: "dc2"}: {{WAN: gw2.addr}},
		}})
	require.NoError(tb, err)
	return &world{ca: ca, gw1: gw1, gw2: gw2, dialer: &sidecar.Dialer{Source: src, Certs: certs("web", "dc1"),
		Instance: resolve.Instance{Service: "web", Name: "web-sidecar-proxy"}}}
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
	other, err := democa.New(w.ca.TrustDomain)
	require.NoError(t, err)
	impostor, err := other.Certs(sidecar.Identity{Datacenter: "dc2", Service: "api"})
	require.NoError(t, err)
	addr := serveTLS(t, impostor.ServerTLSConfig())
	src, err := resolve.StaticView(&resolve.View{Datacenter: "dc1", TrustDomain: w.ca.TrustDomain,
		Services: map[resolve.ServiceKey][]resolve.Endpoint{{Name: "api", Datacenter: "dc2"}: {{WAN: addr}}}})
	require.NoError(t, err)
	d := *w.dialer
	d.Source = src
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
