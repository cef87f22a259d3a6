package consulview_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const eventually = 30 * time.Second

// echoServer is a real TCP server standing in for a sidecar: it echoes.
func echoServer(t *testing.T) (host string, port int) {
	t.Helper()
	return "127.0.0.1", startCounting(t).port
}

// registerWithSidecar registers svc and its connect-proxy at port; ttl adds a
// TTL check to the proxy (initially passing).
func registerWithSidecar(t *testing.T, c *api.Client, svc string, port int, ttl bool, upstreams ...api.Upstream) {
	t.Helper()
	require.NoError(t, c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: svc, Port: port}))
	reg := &api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, Name: svc + "-sidecar-proxy", Address: "127.0.0.1", Port: port,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: svc, Upstreams: upstreams},
	}
	if ttl {
		reg.Check = &api.AgentServiceCheck{CheckID: svc + "-ttl", TTL: "10m"}
	}
	require.NoError(t, c.Agent().ServiceRegister(reg))
	if ttl {
		require.NoError(t, c.Agent().UpdateTTL(svc+"-ttl", "", api.HealthPassing))
	}
}

func routeReason(r gateway.Router, name string) ([]string, string) {
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
	var rej *gateway.Rejection
	if errors.As(err, &rej) {
		return nil, rej.Reason
	}
	return got.Targets, ""
}

func newConsul(t testing.TB, c *api.Client, opts consulview.Options) *consulview.Source {
	t.Helper()
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 500 * time.Millisecond
	}
	if opts.DatacenterRefresh == 0 {
		opts.DatacenterRefresh = 200 * time.Millisecond
	}
	src, err := consulview.New(context.Background(), c, opts)
	require.NoError(t, err)
	t.Cleanup(src.Close)
	return src
}

// A service with a sidecar routes to the sidecar; a failing health check or a
// deregistration takes it out; and a real connection goes through a gateway
// routed from the live view.
func TestConsulSidecarRouting(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	td := agent.TrustDomain()
	host, port := echoServer(t)
	registerWithSidecar(t, agent.Client, "web", port, true)

	src := newConsul(t, agent.Client, consulview.Options{})
	v := src.View()
	assert.Equal(t, "dc1", v.Datacenter)
	assert.Equal(t, td, v.TrustDomain)
	// An agent without ACLs allows everything.
	ok, err := consulview.TokenAuthorizer(agent.Config("")).Allowed(context.Background(), "peering", "read", "")
	require.NoError(t, err)
	assert.True(t, ok)
	router := &routing.MeshRouter{Source: src}
	name := sni.ServiceSNI("web", "", "", "", "dc1", td)
	want := net.JoinHostPort(host, strconv.Itoa(port))
	consultest.WaitFor(t, eventually, "web to route", func() bool { got, _ := routeReason(router, name); return len(got) == 1 && got[0] == want })

	// A real connection through a gateway that routes from the live view.
	gw := &gateway.Server{Router: router}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go gw.Serve(ln)
	defer gw.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	hello := clientHello(t, name)
	conn.Write(hello)
	buf := make([]byte, len(hello))
	_, err = io.ReadFull(conn, buf)
	require.NoError(t, err)
	assert.Equal(t, hello, buf, "echoed by the registered sidecar's address")
	conn.Close()

	require.NoError(t, agent.Client.Agent().UpdateTTL("web-ttl", "failing on purpose", api.HealthCritical))
	consultest.WaitFor(t, eventually, "an unhealthy sidecar to leave the healthy endpoints", func() bool {
		v := src.View()
		return len(v.Endpoints("web", "", "", "")) == 0 && len(v.UnhealthyEndpoints("web", "", "", "", "")) == 1
	})
	got, r := routeReason(router, name)
	assert.Equal(t, []string{want}, got, "none healthy: routed all the same, as Envoy's panic threshold does under Consul")
	assert.Empty(t, r)
	require.NoError(t, agent.Client.Agent().UpdateTTL("web-ttl", "", api.HealthPassing))
	consultest.WaitFor(t, eventually, "a healthy sidecar to return", func() bool { return len(src.View().Endpoints("web", "", "", "")) == 1 })

	require.NoError(t, agent.Client.Agent().ServiceDeregister("web-sidecar-proxy"))
	consultest.WaitFor(t, eventually, "a deregistered sidecar to leave the routes", func() bool { _, r := routeReason(router, name); return r == routing.ReasonUnknownService })
	assert.NoError(t, src.Stale())
}

// clientHello returns a real ClientHello from crypto/tls for name.
func clientHello(t *testing.T, name string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h sni.ClientHello
	raw, err := sni.Reader{}.Read(context.Background(), b, nil, &h)
	require.NoError(t, err)
	require.Equal(t, name, h.ServerName)
	return raw
}

// Two WAN-joined datacenters: dc2's mesh gateway is found from dc1, an SNI
// for dc2 goes to it, and upstreams in local and remote mode plan through the
// right gateways; changing proxy-defaults changes the plan without a restart.
func TestConsulTwoDatacenters(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	td := dc1.TrustDomain()
	for _, g := range []struct {
		a        *consultest.Agent
		lan, wan string
	}{{dc1, "127.0.1.5:8443", "127.0.1.105:8443"}, {dc2, "127.0.2.5:8443", "127.0.2.105:8443"}} {
		lanHost, lanPort, _ := net.SplitHostPort(g.lan)
		wanHost, wanPort, _ := net.SplitHostPort(g.wan)
		lp, _ := strconv.Atoi(lanPort)
		wp, _ := strconv.Atoi(wanPort)
		require.NoError(t, g.a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindMeshGateway, Name: "mesh-gateway", Address: lanHost, Port: lp,
			TaggedAddresses: map[string]api.ServiceAddress{"lan": {Address: lanHost, Port: lp}, "wan": {Address: wanHost, Port: wp}},
		}))
	}
	_, port := echoServer(t)
	registerWithSidecar(t, dc1.Client, "web", port, false,
		api.Upstream{DestinationName: "api", Datacenter: "dc2", LocalBindPort: 9191, MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}},
		api.Upstream{DestinationName: "db", Datacenter: "dc2", LocalBindPort: 9192, MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}},
		api.Upstream{DestinationName: "cache", Datacenter: "dc2", LocalBindPort: 9193})

	src := newConsul(t, dc1.Client, consulview.Options{})
	router := &routing.MeshRouter{Source: src}
	consultest.WaitFor(t, eventually, "dc2's gateway to be found from dc1", func() bool {
		got, _ := routeReason(router, sni.ServiceSNI("api", "", "", "", "dc2", td))
		return len(got) == 1 && got[0] == "127.0.2.105:8443"
	})
	got, _ := routeReason(router, sni.GatewaySNI("dc2", "", td))
	assert.Equal(t, []string{"127.0.2.105:8443"}, got)

	// A gateway registered under another name, on a node with a WAN
	// address and none of its own: found by kind, dialled at the node's WAN
	// address with its port, as Consul's gateways do.
	_, err := dc2.Client.Catalog().Register(&api.CatalogRegistration{Node: "gw-node", Address: "127.0.2.2",
		TaggedAddresses: map[string]string{"wan": "127.0.2.200"},
		Service:         &api.AgentService{Kind: api.ServiceKindMeshGateway, Service: "gw-east", Port: 9443}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "dc2's gateway named gw-east to be found", func() bool {
		got, _ := routeReason(router, sni.GatewaySNI("dc2", "", td))
		return sameSet(got, []string{"127.0.2.105:8443", "127.0.2.200:9443"})
	})
	_, err = dc2.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: "gw-node"}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "gw-east to go", func() bool {
		got, _ := routeReason(router, sni.GatewaySNI("dc2", "", td))
		return sameSet(got, []string{"127.0.2.105:8443"})
	})

	// Two more in dc2: one whose check is critical (as a gateway's until
	// the agent first checks it), one in maintenance. The first is kept in
	// UnhealthyGateways, for a prober; the second in neither list.
	for _, id := range []string{"gw-critical", "gw-maintenance"} {
		port := 9000 + len(id)
		require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindMeshGateway, ID: id, Name: "mesh-gateway", Address: "127.0.2.6", Port: port,
			TaggedAddresses: map[string]api.ServiceAddress{"wan": {Address: "127.0.2.106", Port: port}},
			Check:           &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "1h", Status: api.HealthPassing},
		}))
	}
	require.NoError(t, dc2.Client.Agent().UpdateTTL("gw-critical-ttl", "down", api.HealthCritical))
	require.NoError(t, dc2.Client.Agent().EnableServiceMaintenance("gw-maintenance", "on purpose"))
	dc2Loc := mesh.Location{Datacenter: "dc2", Partition: "default"}
	consultest.WaitFor(t, eventually, "the critical gateway apart, the one in maintenance in neither list", func() bool {
		v := src.View()
		return len(v.UnhealthyGateways[dc2Loc]) == 1 && v.UnhealthyGateways[dc2Loc][0].WAN == "127.0.2.106:9011" &&
			len(v.GatewaysIn(dc2Loc)) == 1 && v.GatewaysIn(dc2Loc)[0].WAN == "127.0.2.105:8443"
	})
	for _, id := range []string{"gw-critical", "gw-maintenance"} {
		require.NoError(t, dc2.Client.Agent().ServiceDeregister(id))
	}
	consultest.WaitFor(t, eventually, "the two to go", func() bool { return len(src.View().UnhealthyGateways[dc2Loc]) == 0 })

	instances, err := consulview.AgentInstances(dc1.Client)
	require.NoError(t, err)
	require.Len(t, instances, 1)
	plan := func() map[string]resolve.Plan {
		out := map[string]resolve.Plan{}
		for _, p := range resolve.PlanInstance(src.View(), instances[0]) {
			out[p.Upstream] = p
		}
		return out
	}
	plans := plan()
	assert.Equal(t, []string{"127.0.1.5:8443"}, plans["api"].Dial, "local: dc1's gateway, LAN")
	assert.Equal(t, []string{"web sidecar", "gateway dc1", "gateway dc2", "api dc2"}, plans["api"].Hops)
	assert.Equal(t, []string{"127.0.2.105:8443"}, plans["db"].Dial, "remote: dc2's gateway, WAN")
	assert.Equal(t, resolve.PathDirect, plans["cache"].Route)

	_, _, err = dc1.Client.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeRemote}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "proxy-defaults to change the plan", func() bool { return plan()["cache"].Route == resolve.PathRemoteGateway })
	assert.Equal(t, "proxy-defaults", string(plan()["cache"].Layer))

	_, _, err = dc1.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web",
		MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "service-defaults to change the plan", func() bool { return plan()["cache"].Layer == "service-defaults" })
	assert.Equal(t, resolve.PathLocalGateway, plan()["cache"].Route)

	// dc2 stops answering. A view of dc1 started now starts anyway (its
	// gateway may be the only way to dc2, as with WAN federation through
	// mesh gateways), says which watch fails, and finds dc2's gateway once
	// dc2 answers again.
	dc2.Stop()
	consultest.WaitFor(t, eventually, "dc1's queries of dc2 to fail", func() bool {
		_, _, err := dc1.Client.Catalog().Services(&api.QueryOptions{Datacenter: "dc2"})
		return err != nil
	})
	later := newConsul(t, dc1.Client, consulview.Options{})
	stale := later.Stale()
	require.Error(t, stale, "the start says what it could not read")
	assert.Contains(t, stale.Error(), "dc2")
	_, reason := routeReason(&routing.MeshRouter{Source: later}, sni.GatewaySNI("dc2", "", td))
	assert.Equal(t, routing.ReasonUnknownDatacenter, reason)
	got, _ = routeReason(&routing.MeshRouter{Source: later}, sni.ServiceSNI("web", "", "", "", "dc1", td))
	assert.Len(t, got, 1, "dc1's own routes are there")
	dc2.Restart()
	consultest.WaitFor(t, eventually, "dc2's gateway to be found once dc2 answers", func() bool {
		got, _ := routeReason(&routing.MeshRouter{Source: later}, sni.GatewaySNI("dc2", "", td))
		return sameSet(got, []string{"127.0.2.105:8443"})
	})
	consultest.WaitFor(t, eventually, "the view to be current", func() bool { return later.Stale() == nil })
}

// With the agent stopped, existing and new connections keep being routed
// from the last view and the source says it is stale; once the agent is back,
// changes made after its return are picked up.
func TestConsulAgentOutage(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	td := agent.TrustDomain()
	_, port := echoServer(t)
	registerWithSidecar(t, agent.Client, "web", port, false)
	var staleEvents []error
	events := make(chan error, 16)
	src := newConsul(t, agent.Client, consulview.Options{OnStale: func(err error) { events <- err }})
	router := &routing.MeshRouter{Source: src}
	webName := sni.ServiceSNI("web", "", "", "", "dc1", td)
	consultest.WaitFor(t, eventually, "web to route", func() bool { _, r := routeReason(router, webName); return r == "" })

	gw := &gateway.Server{Router: router}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go gw.Serve(ln)
	defer gw.Close()
	roundTrip := func(c net.Conn, msg []byte) error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(c, buf)
		return err
	}
	hello := clientHello(t, webName)
	open, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer open.Close()
	require.NoError(t, roundTrip(open, hello))

	agent.Stop()
	consultest.WaitFor(t, eventually, "the source to notice the outage", func() bool { return src.Stale() != nil })
	staleEvents = append(staleEvents, <-events)
	require.Error(t, staleEvents[0])
	during := src.Stats()
	assert.Positive(t, during.Errors, "failed queries are counted")
	assert.Positive(t, during.Failing, "failing watches are counted")
	assert.False(t, during.LastUpdate.IsZero())
	assert.NoError(t, roundTrip(open, []byte("existing connection")), "established connections are untouched")
	fresh, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	assert.NoError(t, roundTrip(fresh, hello), "new connections route from the last good view")
	fresh.Close()

	agent.Restart()
	consultest.WaitFor(t, eventually, "the source to catch up", func() bool { return src.Stale() == nil })
	_, port2 := echoServer(t)
	registerWithSidecar(t, agent.Client, "db", port2, false)
	dbName := sni.ServiceSNI("db", "", "", "", "dc1", td)
	consultest.WaitFor(t, eventually, "a service registered after the return to route", func() bool { _, r := routeReason(router, dbName); return r == "" })
	after := src.Stats()
	assert.Zero(t, after.Failing)
	assert.True(t, after.LastUpdate.After(during.LastUpdate), "a newer view was published")
	assert.GreaterOrEqual(t, after.Errors, during.Errors)
}

// documentedToken is the policy Consul's docs give a mesh gateway.
const documentedToken = `
service "mesh-gateway" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
`

// With ACLs (default deny), the token Consul documents for a mesh gateway
// is enough to start, register and follow the mesh, with no agent endpoint
// asked; peering, which needs peering:read, is followed only when used or
// allowed, and a denial there degrades instead of failing. Every
// permission error names the endpoint and the rule to add, never the token.
// The agent is a production one: only TLS ports, HTTPS with client
// certificates (the Source and the Authorizer speak it).
func TestConsulACL(t *testing.T) {
	ctx := context.Background()
	agent := consultest.Start(t, consultest.Options{ACL: true, TLS: consultest.NewTLS(t), TLSOnly: true})
	documented := agent.Token(t, "documented", documentedToken)
	client := agent.ClientWithToken(documented)
	auth := consulview.TokenAuthorizer(agent.Config(documented))

	src := newConsul(t, client, consulview.Options{Authorizer: auth})
	assert.Equal(t, "dc1", src.View().Datacenter, "the datacenter from the catalog, without agent:read")
	assert.Empty(t, src.Degraded())
	assert.Zero(t, src.Stats().Failing)
	reg, err := registration.Register(ctx, client, registration.Gateway{Address: "127.0.0.1:18443"})
	require.NoError(t, err)
	require.NoError(t, reg.Deregister(ctx))
	assert.NotContains(t, agent.Log(), "/v1/peerings", "the Authorizer asked; nothing was denied")
	assert.NotContains(t, agent.Log(), "/v1/agent/self")

	// Without an Authorizer, the peerings are read once, denied, and left
	// alone: the mesh does not use peering.
	src = newConsul(t, client, consulview.Options{})
	assert.Empty(t, src.Degraded())
	assert.Equal(t, 1, strings.Count(agent.Log(), "/v1/peerings"), "one denied request:\n%s", agent.Log())

	// Peering asked for: a degradation, named (the Authorizer knows it
	// would be denied: no request), and everything else routes.
	src = newConsul(t, client, consulview.Options{Peering: consulview.PeeringOn, Authorizer: auth})
	degraded := src.Degraded()
	require.Len(t, degraded, 1)
	require.ErrorIs(t, degraded[0], consulview.ErrPermissionDenied)
	assert.ErrorContains(t, degraded[0], `GET /v1/peerings (listing peerings): add peering = "read" to the token's policy`)
	assert.NotContains(t, degraded[0].Error(), documented, "a token is never in an error")
	assert.Equal(t, 1, src.Stats().Denied)
	assert.Equal(t, "dc1", src.View().Datacenter)

	// The mesh entry sends peering through mesh gateways: PeeringAuto
	// follows it, and the denial is a degradation.
	_, _, err = agent.Client.ConfigEntries().Set(&api.MeshConfigEntry{Peering: &api.PeeringMeshConfig{PeerThroughMeshGateways: true}}, nil)
	require.NoError(t, err)
	src = newConsul(t, client, consulview.Options{Authorizer: auth})
	require.Len(t, src.Degraded(), 1)
	assert.ErrorContains(t, src.Degraded()[0], `peering = "read"`)
	assert.Equal(t, 1, strings.Count(agent.Log(), "/v1/peerings"), "still the one denied request")

	// With peering:read, peering is followed and nothing is degraded.
	withPeering := agent.Token(t, "with-peering", documentedToken+`peering = "read"`)
	src = newConsul(t, agent.ClientWithToken(withPeering), consulview.Options{Authorizer: consulview.TokenAuthorizer(agent.Config(withPeering))})
	assert.Empty(t, src.Degraded())
	ok, err := consulview.TokenAuthorizer(agent.Config(withPeering)).Allowed(ctx, "mesh", "write", "")
	require.NoError(t, err)
	assert.False(t, ok)

	// Each rule of the documented token removed in turn: the error names
	// the endpoint and the rule.
	for rule, want := range map[string]string{
		// Answers filtered by ACLs: both rules named.
		`service_prefix "" { policy = "read" }`: `service_prefix "" { policy = "read" }`,
		`node_prefix "" { policy = "read" }`:    `node_prefix "" { policy = "read" }`,
	} {
		token := agent.Token(t, "without-"+strconv.Itoa(len(rule)), strings.Replace(documentedToken, rule, "", 1))
		_, err := consulview.New(ctx, agent.ClientWithToken(token), consulview.Options{})
		require.ErrorIs(t, err, consulview.ErrPermissionDenied, rule)
		assert.ErrorContains(t, err, "GET /v1/health/service/consul", rule)
		assert.ErrorContains(t, err, want)
		assert.NotContains(t, err.Error(), token)
	}
	token := agent.Token(t, "without-write", strings.Replace(documentedToken, `service "mesh-gateway" { policy = "write" }`, "", 1))
	_, err = registration.Register(ctx, agent.ClientWithToken(token), registration.Gateway{Address: "127.0.0.1:18443"})
	require.ErrorIs(t, err, consulview.ErrPermissionDenied)
	assert.ErrorContains(t, err, `add service "mesh-gateway" { policy = "write" } to the token's policy`)

	// WAN federation without -domain asks the agent for the DNS domain,
	// which needs agent:read: a warning, and Consul's default.
	src = newConsul(t, client, consulview.Options{WANFederation: true})
	require.NotNil(t, src.View().Federation)
	assert.Equal(t, "consul", src.View().Federation.Domain)
}

func TestConsulUnreachable(t *testing.T) {
	cc := api.DefaultConfig()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cc.Address = ln.Addr().String()
	ln.Close() // nothing listens there now
	client, err := api.NewClient(cc)
	require.NoError(t, err)
	_, err = consulview.New(context.Background(), client, consulview.Options{})
	require.ErrorIs(t, err, consulview.ErrAgentUnreachable)

	// A port with "403" in it is still an unreachable agent, not a denial.
	tried := false
	for _, port := range []int{24030, 34030, 40300, 40301, 40302, 40303, 44030, 54030} {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // in use: try the next
		}
		ln.Close()
		cc := api.DefaultConfig()
		cc.Address = ln.Addr().String()
		client403, err := api.NewClient(cc)
		require.NoError(t, err)
		_, err = consulview.New(context.Background(), client403, consulview.Options{})
		require.ErrorIs(t, err, consulview.ErrAgentUnreachable, "port %d", port)
		require.NotErrorIs(t, err, consulview.ErrPermissionDenied, "port %d", port)
		tried = true
		break
	}
	require.True(t, tried, "every port with 403 in it that the test tries is in use")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = consulview.New(ctx, client, consulview.Options{WaitForAgent: true})
	require.ErrorIs(t, err, context.DeadlineExceeded, "WaitForAgent retries until the context ends")
}

func TestUnmergeCentralConfig(t *testing.T) {
	v := &mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
		ProxyDefaults:   &api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: "global", MeshGateway: api.MeshGatewayConfig{Mode: "local"}},
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{}}
	merged := mesh.Instance{Service: "web", Proxy: &api.AgentServiceConnectProxyConfig{
		MeshGateway: api.MeshGatewayConfig{Mode: "local"},
		Upstreams: []api.Upstream{
			{DestinationName: "a", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: "local"}},
			{DestinationName: "b", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: "remote"}},
		}}}
	plans := resolve.PlanInstance(v, consulview.UnmergeCentralConfig(v, merged))
	assert.Equal(t, "proxy-defaults", string(plans[0].Layer), "merged copies are attributed to proxy-defaults")
	assert.Equal(t, api.MeshGatewayModeLocal, plans[0].Mode)
	assert.Equal(t, "upstream", string(plans[1].Layer), "a value that differs is the upstream's own")
	assert.Equal(t, api.MeshGatewayModeLocal, merged.Proxy.Upstreams[0].MeshGateway.Mode, "the input is not modified")
}
