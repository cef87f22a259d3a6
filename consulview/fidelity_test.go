package consulview_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingServer is a TCP server that echoes and counts its connections.
type countingServer struct {
	addr     string
	port     int
	accepted atomic.Int64
}

func startCounting(t *testing.T) *countingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	s := &countingServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	go echo.Serve(ln, func() { s.accepted.Add(1) })
	return s
}

// registerProxy registers, through the agent, a sidecar for svc at the
// server's port with meta and a TTL check in the given state.
func registerProxy(t *testing.T, c *api.Client, svc, id string, port int, meta map[string]string, status string) {
	t.Helper()
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: id, Name: svc + "-sidecar-proxy", Address: "127.0.0.1", Port: port, Meta: meta,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: svc},
		Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "10m"},
	}))
	require.NoError(t, c.Agent().UpdateTTL(id+"-ttl", "set by the test", status))
}

// Over many real connections through a gateway, each SNI reaches exactly
// the instances Consul's gateway would send it to: a subset's SNI its
// subset's (filtered by Consul), the plain SNI the DefaultSubset's only, an
// OnlyPassing subset no instance in warning, and a plain service without a
// resolver its warning instance but never its critical one.
func TestConsulSubsetsAndHealth(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	td := agent.TrustDomain()
	c := agent.Client
	v1, v2, v2warn := startCounting(t), startCounting(t), startCounting(t)
	dbWarn, dbCrit := startCounting(t), startCounting(t)
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "api", Port: 1}))
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "db", Port: 1}))
	registerProxy(t, c, "api", "api-v1", v1.port, map[string]string{"version": "v1"}, api.HealthPassing)
	registerProxy(t, c, "api", "api-v2", v2.port, map[string]string{"version": "v2"}, api.HealthPassing)
	registerProxy(t, c, "api", "api-v2-warn", v2warn.port, map[string]string{"version": "v2", "canary": "yes"}, api.HealthWarning)
	registerProxy(t, c, "db", "db-warn", dbWarn.port, nil, api.HealthWarning)
	registerProxy(t, c, "db", "db-crit", dbCrit.port, nil, api.HealthCritical)
	_, _, err := c.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		DefaultSubset: "v1", ConnectTimeout: 1500 * time.Millisecond,
		Subsets: map[string]api.ServiceResolverSubset{
			"v1":     {Filter: `Service.Meta.version == "v1"`},
			"v2":     {Filter: `Service.Meta.version == "v2"`},
			"stable": {Filter: `Service.Meta.version == "v2"`, OnlyPassing: true},
		}}, nil)
	require.NoError(t, err)

	src := newConsul(t, c, consulview.Options{})
	router := &routing.MeshRouter{Source: src}
	name := func(subset, svc string) string { return sni.ServiceSNI(svc, subset, "", "", "dc1", td) }
	want := map[string][]string{
		name("", "api"):       {v1.addr},
		name("v1", "api"):     {v1.addr},
		name("v2", "api"):     {v2.addr, v2warn.addr},
		name("stable", "api"): {v2.addr},
		name("", "db"):        {dbWarn.addr},
	}
	for n, addrs := range want {
		consultest.WaitFor(t, eventually, "the route of "+n, func() bool {
			got, _ := routeReason(router, n)
			return sameSet(addrs, got)
		})
	}
	route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name("", "api")})
	require.NoError(t, err)
	assert.Equal(t, 1500*time.Millisecond, route.ConnectTimeout, "the resolver's ConnectTimeout")
	_, reason := routeReason(router, name("v9", "api"))
	assert.Equal(t, routing.ReasonUnknownSubset, reason)

	// Real connections: count where each SNI's bytes arrive.
	gw := &gateway.Server{Router: router}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go gw.Serve(ln)
	t.Cleanup(func() { gw.Close() })
	send := func(n string, count int) {
		hello := clientHello(t, n)
		for range count {
			conn, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			conn.Write(hello)
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			_, err = io.ReadFull(conn, make([]byte, len(hello)))
			require.NoError(t, err, n)
			conn.Close()
		}
	}
	send(name("", "api"), 20)
	send(name("stable", "api"), 10)
	send(name("", "db"), 10)
	assert.EqualValues(t, 20, v1.accepted.Load(), "plain api SNI: the default subset v1 only")
	assert.EqualValues(t, 10, v2.accepted.Load(), "stable (OnlyPassing): the passing v2 instance only")
	assert.Zero(t, v2warn.accepted.Load(), "the warning v2 instance is not OnlyPassing-stable, nor in the default subset")
	assert.EqualValues(t, 10, dbWarn.accepted.Load(), "warning instances take traffic, as in Consul")
	assert.Zero(t, dbCrit.accepted.Load(), "critical instances never do")

	// The resolver going away: the plain SNI reaches every healthy instance.
	_, err = c.ConfigEntries().Delete(api.ServiceResolver, "api", nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "api without a resolver to route to all its routable instances", func() bool {
		got, _ := routeReason(router, name("", "api"))
		return len(got) == 3
	})
	_, reason = routeReason(router, name("v2", "api"))
	assert.Equal(t, routing.ReasonUnknownSubset, reason)

	// Weights as Consul hands them to Envoy (calculateEndpointHealthAndWeight):
	// the Passing weight, the Warning weight while a check warns, a Warning
	// weight of 0 taking no traffic. And Envoy's panic threshold: one
	// passing instance of three, the critical two are routed too.
	weighted := func(id string, port int, w api.AgentWeights, status string) {
		t.Helper()
		require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindConnectProxy, ID: id, Name: "web-sidecar-proxy", Address: "127.0.0.1", Port: port, Weights: &w,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web"},
			Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "10m"}}))
		require.NoError(t, c.Agent().UpdateTTL(id+"-ttl", "set by the test", status))
	}
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web", Port: 1}))
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "few", Port: 1}))
	weighted("web-3", 20003, api.AgentWeights{Passing: 3, Warning: 1}, api.HealthPassing)
	weighted("web-warn-2", 20002, api.AgentWeights{Passing: 5, Warning: 2}, api.HealthWarning)
	weighted("web-warn-0", 20009, api.AgentWeights{Passing: 1, Warning: 0}, api.HealthWarning)
	registerProxy(t, c, "few", "few-ok", 20011, nil, api.HealthPassing)
	registerProxy(t, c, "few", "few-crit-1", 20012, nil, api.HealthCritical)
	registerProxy(t, c, "few", "few-crit-2", 20013, nil, api.HealthCritical)
	consultest.WaitFor(t, eventually, "web's weights and few's panic", func() bool {
		web, _ := routeReason(router, name("", "web"))
		few, _ := routeReason(router, name("", "few"))
		return len(web) == 2 && len(few) == 3
	})
	webRoute, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name("", "web")})
	require.NoError(t, err)
	weights := map[string]int{}
	for i, target := range webRoute.Targets {
		weights[target] = webRoute.Weights[i]
	}
	assert.Equal(t, map[string]int{"127.0.0.1:20003": 3, "127.0.0.1:20002": 2}, weights, "Passing 3; Warning 2 while warning; Warning 0 takes none")
	assert.Equal(t, []mesh.Endpoint{{Address: "127.0.0.1:20009", WAN: "127.0.0.1:20009"}}, src.View().UnhealthyEndpoints("web", "", "", "", ""))
	few, _ := routeReason(router, name("", "few"))
	assert.ElementsMatch(t, []string{"127.0.0.1:20011", "127.0.0.1:20012", "127.0.0.1:20013"}, few, "one of three passing: Envoy's panic threshold routes all")
	registerProxy(t, c, "few", "few-ok-2", 20014, nil, api.HealthPassing)
	consultest.WaitFor(t, eventually, "two of four passing: no panic", func() bool {
		few, _ := routeReason(router, name("", "few"))
		return sameSet(few, []string{"127.0.0.1:20011", "127.0.0.1:20014"})
	})
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// connCounter counts the connections an HTTP transport holds open.
type connCounter struct {
	open, max atomic.Int64
}

func (cc *connCounter) client(t testing.TB, addr string) *api.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}
	d := &net.Dialer{}
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, a)
		if err != nil {
			return nil, err
		}
		n := cc.open.Add(1)
		for m := cc.max.Load(); n > m && !cc.max.CompareAndSwap(m, n); m = cc.max.Load() {
		}
		return &countedConn{Conn: c, cc: cc}, nil
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.Transport = tr
	client, err := api.NewClient(cfg)
	require.NoError(t, err)
	return client
}

type countedConn struct {
	net.Conn
	cc   *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.cc.open.Add(-1) })
	return c.Conn.Close()
}

// registerCatalog registers service svc and a connect-proxy for it on a
// node of its own (through the catalog, as many-node clusters look), with
// no checks.
func registerCatalog(t *testing.T, c *api.Client, node, svc string, port int) {
	t.Helper()
	_, err := c.Catalog().Register(&api.CatalogRegistration{Node: node, Address: "127.0.0.1",
		Service: &api.AgentService{ID: svc, Service: svc, Port: port}}, nil)
	require.NoError(t, err)
	_, err = c.Catalog().Register(&api.CatalogRegistration{Node: node, Address: "127.0.0.1",
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: svc + "-sidecar-proxy", Service: svc + "-sidecar-proxy", Port: port,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: svc}}}, nil)
	require.NoError(t, err)
}

// A catalog of 300 services is followed with a handful of agent
// connections on an agent that allows only 24 per client, where one
// connection per service would be refused; a service registered later
// routes, and so does a new instance registered without any check (the
// catalog changes, no check does: a sweep finds it).
func TestConsulFollowsALargeCatalogWithinTheConnectionLimit(t *testing.T) {
	const limit, services = 24, 300
	agent := consultest.Start(t, consultest.Options{ExtraConfig: fmt.Sprintf("limits { http_max_conns_per_client = %d }", limit)})
	td := agent.TrustDomain()
	for i := range services {
		registerCatalog(t, agent.Client, "node-"+strconv.Itoa(i%30), fmt.Sprintf("svc-%03d", i), 20000+i)
	}
	var cc connCounter
	src := newConsul(t, cc.client(t, agent.HTTPAddr), consulview.Options{SweepDelay: 200 * time.Millisecond})
	router := &routing.MeshRouter{Source: src}
	routes := func(svc string, n int) func() bool {
		return func() bool {
			got, _ := routeReason(router, sni.ServiceSNI(svc, "", "", "", "dc1", td))
			return len(got) == n
		}
	}
	for i := range services {
		require.True(t, routes(fmt.Sprintf("svc-%03d", i), 1)(), "svc-%03d routes from the first view", i)
	}
	registerCatalog(t, agent.Client, "node-late", "late", 30000)
	consultest.WaitFor(t, eventually, "a service registered later to route", routes("late", 1))

	// Refetches still running (a sweep for late's proxy, registered without
	// a new name) could find the new instance before its own sweep.
	consultest.WaitFor(t, eventually, "the refetches to finish", func() bool { return src.Stats().Pending == 0 })
	sweeps := src.Stats().Sweeps
	_, err := agent.Client.Catalog().Register(&api.CatalogRegistration{Node: "node-extra", Address: "127.0.0.2",
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: "svc-007-extra", Service: "svc-007-sidecar-proxy", Port: 20007,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "svc-007"}}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "a check-less new instance to route", routes("svc-007", 2))
	// What found it is a sweep, the only path for a change no name or check
	// explains (its count moves when the timer fires, which may be a moment
	// after the route).
	consultest.WaitFor(t, eventually, "the unexplained change to be swept", func() bool { return src.Stats().Sweeps > sweeps })

	assert.NoError(t, src.Stale(), "no watch was refused by the agent's per-client limit")
	assert.Equal(t, services+1, src.Stats().Services)
	assert.Less(t, cc.max.Load(), int64(limit), "agent connections held at most, for %d services", services+1)
	t.Logf("%d services followed with at most %d agent connections", services+1, cc.max.Load())
}

// However many datacenters and services there are, a Source holds at most
// 8 agent connections (on plain HTTP a blocking query holds one each): with
// three datacenters of two gateway services each and 1,000 services, the
// watches beyond the connections take turns, and every kind of change is
// still seen: a gateway of a third datacenter, a proxy-defaults entry, a
// service registered and a check going critical.
func TestConsulHoldsEightAgentConnectionsHoweverLargeTheMesh(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	dc3 := consultest.Start(t, consultest.Options{Datacenter: "dc3", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	td := dc1.TrustDomain()
	gateway := func(a *consultest.Agent, name string, port int) {
		t.Helper()
		require.NoError(t, a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindMeshGateway, ID: name, Name: name,
			Address: "127.0.0.1", Port: port, TaggedAddresses: map[string]api.ServiceAddress{"wan": {Address: "127.0.0.1", Port: port}}}))
	}
	for i, a := range []*consultest.Agent{dc1, dc2, dc3} {
		gateway(a, "mesh-gateway", 18000+10*i)
		gateway(a, "mesh-gateway-b", 18001+10*i)
	}
	const services = 1000
	registerMany(t, dc1.Client, "svc", services, true)
	var cc connCounter
	src := newConsul(t, cc.client(t, dc1.HTTPAddr), consulview.Options{})
	router := &routing.MeshRouter{Source: src}
	routes := func(name string, dc string) []string {
		got, _ := routeReason(router, sni.ServiceSNI(name, "", "", "", dc, td))
		return got
	}
	consultest.WaitFor(t, eventually, "dc3's two gateways", func() bool { return len(routes("api", "dc3")) == 2 })

	seen := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		consultest.WaitFor(t, eventually, what, cond)
		t.Logf("%s: seen after %v", what, time.Since(start).Round(10*time.Millisecond))
	}
	gateway(dc3, "mesh-gateway-c", 18022)
	seen("a third gateway of dc3 (a watch taking turns)", func() bool { return len(routes("api", "dc3")) == 3 })
	_, _, err := dc1.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)
	seen("a proxy-defaults entry (a watch taking turns)", func() bool {
		pd := src.View().ProxyDefaults
		return pd != nil && pd.MeshGateway.Mode == api.MeshGatewayModeLocal
	})
	registerMany(t, dc1.Client, "late", 1, false)
	seen("a service registered (the catalog's own connection)", func() bool { return len(routes("late-00000", "dc1")) == 1 })
	ok, resp, _, err := dc1.Client.Txn().Txn(api.TxnOps{checkOp("svc-node-0", "svc-00003", api.HealthCritical)}, nil)
	require.True(t, err == nil && ok, "%v %v", err, resp)
	seen("a check going critical (the checks' own connection)", func() bool {
		return len(src.View().Endpoints("svc-00003", "", "", "")) == 0 // still routed: none healthy, Envoy's panic threshold
	})

	assert.NoError(t, src.Stale())
	assert.LessOrEqual(t, cc.max.Load(), int64(8), "agent connections held at most")
	t.Logf("%d services, 3 datacenters, 7 gateway services: at most %d agent connections", src.Stats().Services, cc.max.Load())
}
