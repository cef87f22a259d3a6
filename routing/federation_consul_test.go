package routing_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventually bounds every wait on Consul; the waits poll a condition.
const fedEventually = 90 * time.Second

// fedGateway is a meshgate gateway for one datacenter, carrying WAN
// federation: registered with the consul-wan-federation meta, routing with
// a routing.FederationRouter over a live view that follows the federation states.
// It counts the connections it forwarded by route kind and server name when
// their upstream connects (Consul's server connections are pooled and stay
// open), and their bytes when they close.
type fedGateway struct {
	gateway.Counters
	t     *testing.T
	agent *consultest.Agent
	addr  string
	src   *consulview.Source
	// health is src with other datacenters' gateways probed, as meshgateway
	// runs it: what the gateway routes over.
	health *gatewayhealth.Source
	srv    *gateway.Server

	mu     sync.Mutex
	kinds  map[string]int   // connected connections by route kind
	names  map[string]int   // connected connections by server name
	bytes  map[string]int64 // bytes both ways of closed connections, by route kind
	dialed int              // upstream dials
}

// Connected counts a forwarded connection once its upstream is connected.
func (g *fedGateway) Connected(r *gateway.ConnRecord) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.kinds[r.Kind]++
	g.names[r.ServerName]++
}

// Closed counts a forwarded connection's bytes.
func (g *fedGateway) Closed(r *gateway.ConnRecord) {
	if r.Outcome != gateway.OutcomeForwarded {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bytes[r.Kind] += r.Stats.ClientToUpstream + r.Stats.UpstreamToClient
}

// kind returns how many connections of route kind k the gateway connected.
func (g *fedGateway) kind(k string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.kinds[k]
}

func (g *fedGateway) name(n string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.names[n]
}

// startFedGateway starts a gateway for agent on addr ("" for a new
// address) and registers it with the agent, unless addr is given (a
// restart after a crash: the registration is still there).
func startFedGateway(t *testing.T, agent *consultest.Agent, addr string) *fedGateway {
	t.Helper()
	g := &fedGateway{t: t, agent: agent, kinds: map[string]int{}, names: map[string]int{}, bytes: map[string]int64{}}
	src, err := consulview.New(context.Background(), agent.Client, consulview.Options{WANFederation: true, WaitForAgent: true})
	require.NoError(t, err)
	g.src = src
	g.health = gatewayhealth.New(src, gatewayhealth.Options{})
	g.srv = &gateway.Server{
		Router:         &routing.FederationRouter{Source: g.health, Next: &routing.PeeringRouter{Source: g.health}},
		Observer:       g,
		ConnectTimeout: 2 * time.Second,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			g.mu.Lock()
			g.dialed++
			g.mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, address)
		},
	}
	register := addr == ""
	ln := consultest.Listen(t, addr)
	g.addr = ln.Addr().String()
	go g.srv.Serve(ln)
	t.Cleanup(g.stop)
	if register {
		_, err = registration.Register(context.Background(), agent.Client, registration.Gateway{
			Address: g.addr, CheckInterval: time.Second, ExposeServers: true})
		require.NoError(t, err)
	}
	return g
}

// stop closes the gateway and its view, leaving it registered, as a crash
// would.
func (g *fedGateway) stop() {
	g.srv.Close()
	g.health.Close()
	g.src.Close()
}

func (g *fedGateway) dials() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dialed
}

// serverAddrs are the addresses a server of another datacenter could reach
// agent at directly.
func serverAddrs(agent *consultest.Agent) []string {
	return []string{agent.ServerRPC, agent.SerfWAN, agent.HTTPAddr, agent.GRPCTLS}
}

// dialledOnly checks, from the kernel's socket tables, that agent's process
// holds no connection it opened to anything but allowed (its own ports and
// its gateways), and none to other's ports: no server dialled the other
// datacenter's directly.
func dialledOnly(t *testing.T, agent, other *consultest.Agent, allowed ...string) {
	t.Helper()
	got, err := agent.DialedTCP()
	require.NoError(t, err)
	ok := map[string]bool{}
	for _, a := range append(serverAddrs(agent), allowed...) {
		ok[a] = true
	}
	forbidden := map[string]bool{}
	for _, a := range serverAddrs(other) {
		forbidden[a] = true
	}
	var seen []string
	for _, ap := range got {
		a := ap.String()
		seen = append(seen, a)
		assert.False(t, forbidden[a], "%s's server holds a connection straight to %s's %s", agent.Datacenter, other.Datacenter, a)
		assert.True(t, ok[a], "%s's server holds a connection to %s, neither its own port nor its gateway", agent.Datacenter, a)
	}
	t.Logf("%s's server has dialled, and holds open: %v", agent.Datacenter, seen)
}

// wanMembers returns the alive members of agent's WAN pool, by name.
func wanMembers(agent *consultest.Agent) map[string]bool {
	members, err := agent.Client.Agent().Members(true)
	out := map[string]bool{}
	if err != nil {
		return out
	}
	for _, m := range members {
		if m.Status == 1 { // serf's StatusAlive
			out[m.Name] = true
		}
	}
	return out
}

// nodesIn asks agent for the nodes of datacenter dc, which crosses to dc's
// servers when dc is not the agent's own.
func nodesIn(agent *consultest.Agent, dc string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, _, err := agent.Client.Catalog().Nodes((&api.QueryOptions{Datacenter: dc}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	return out, nil
}

// handshake starts TLS through addr with serverName, as a Consul server
// would, and reports how it ended.
func handshake(addr, serverName string) error {
	d := tls.Dialer{Config: &tls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: []string{"consul/rpc-multi"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// echoVia dials api in dc2 from web in dc1 through d in mode, and checks an
// echo; it returns the plan.
func echoVia(d *sidecar.Dialer, mode api.MeshGatewayMode) (resolve.Plan, error) {
	c, plan, err := d.Dial(context.Background(), api.Upstream{DestinationName: "api", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: mode}})
	if err != nil {
		return plan, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("through " + string(mode))
	if _, err := c.Write(msg); err != nil {
		return plan, err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return plan, err
	}
	if string(buf) != string(msg) {
		return plan, fmt.Errorf("echo differs: %q", buf)
	}
	return plan, nil
}

// Two datacenters whose servers federate only through meshgate gateways:
// the secondary bootstraps through the primary's gateway (primary_gateways),
// neither server can reach the other's WAN address, and every byte between
// them crosses both gateways.
func TestServersFederateThroughMeshgateGateways(t *testing.T) {
	begun, last := time.Now(), time.Now()
	lap := func(what string) {
		t.Logf("%v (+%v): %s", time.Since(begun).Round(time.Millisecond), time.Since(last).Round(time.Millisecond), what)
		last = time.Now()
	}
	agentTLS := consultest.NewTLS(t)
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1", TLS: agentTLS, WANFederation: true, UnreachableWAN: true})
	gw1 := startFedGateway(t, dc1, "")
	consultest.WaitFor(t, fedEventually, "dc1's gateway to know dc1's server and to pass its check", func() bool {
		v := gw1.src.View()
		entries, _, err := dc1.Client.Health().Service("mesh-gateway", "", true, nil)
		return v.Federation != nil && len(v.Federation.Servers) == 1 && v.Federation.Servers[0].Address == dc1.ServerRPC &&
			err == nil && len(entries) == 1
	})

	lap("dc1 and its gateway ready")
	start := time.Now()
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", TLS: agentTLS,
		WANFederation: true, UnreachableWAN: true, PrimaryGateways: []string{gw1.addr}})
	t.Logf("dc2 has a leader and the Connect CA %v after its start", time.Since(start).Round(time.Millisecond))
	gw2 := startFedGateway(t, dc2, "")
	both := func(a *consultest.Agent) bool {
		m := wanMembers(a)
		return m["node-dc1.dc1"] && m["node-dc2.dc2"]
	}
	consultest.WaitFor(t, fedEventually, "members -wan to list both servers, on both sides", func() bool { return both(dc1) && both(dc2) })
	t.Logf("WAN pool formed through the gateways %v after dc2's start", time.Since(start).Round(time.Millisecond))

	lap("WAN pool formed")
	// Each datacenter answers the other's queries.
	consultest.WaitFor(t, fedEventually, "a catalog query from dc1 with ?dc=dc2 to answer", func() bool {
		nodes, err := nodesIn(dc1, "dc2")
		return err == nil && assert.ObjectsAreEqual([]string{"node-dc2"}, nodes)
	})
	consultest.WaitFor(t, fedEventually, "a catalog query from dc2 with ?dc=dc1 to answer", func() bool {
		nodes, err := nodesIn(dc2, "dc1")
		return err == nil && assert.ObjectsAreEqual([]string{"node-dc1"}, nodes)
	})

	lap("catalog queries cross both ways")
	// The connections went through the gateways, both ways: dc1's server
	// dials dc2 through its own gateway, which sends the connection to
	// dc2's gateway, which hands it to the server its name names. dc2's
	// server reaches dc1 through dc1's gateway: at first directly (its
	// bootstrap through primary_gateways, whose pooled connections it
	// keeps), later through its own gateway too (checked at the end).
	for _, c := range []struct {
		g    *fedGateway
		name string
	}{
		{gw1, "node-dc2.server.dc2.consul"}, // dc1's server going out
		{gw2, "node-dc2.server.dc2.consul"}, // ... and arriving in dc2
		{gw1, "node-dc1.server.dc1.consul"}, // dc2's server arriving in dc1
		// dc2's WAN join through primary_gateways: Consul joins the
		// placeholder node "*.dc1" (agent/retry_join.go), and its
		// ServerSNI names no node then.
		{gw1, "server.dc1.consul"},
	} {
		consultest.WaitFor(t, fedEventually, fmt.Sprintf("%s's gateway to carry a connection for %s", c.g.agent.Datacenter, c.name), func() bool {
			return c.g.name(c.name) > 0
		})
	}
	for _, g := range []*fedGateway{gw1, gw2} {
		t.Logf("%s's gateway: %d server connections so far", g.agent.Datacenter, g.kind(routing.RouteWANFederation))
	}
	// And nothing else carried them: neither server holds a connection it
	// opened to anything but its own ports and gateways (dc2's bootstrap
	// went to dc1's gateway, primary_gateways), and none to the other
	// server. Each server also advertises a WAN address nothing listens on.
	dialledOnly(t, dc1, dc2, gw1.addr)
	dialledOnly(t, dc2, dc1, gw2.addr, gw1.addr)
	// dc1's gateway knows dc2's gateways, from the federation states or the
	// catalog, and routes dc2's server names there.
	got, reason := fedRoute(gw1.srv.Router, "node-dc2.server.dc2.consul")
	require.Empty(t, reason)
	assert.Equal(t, []string{gw2.addr}, got.Targets)
	got, reason = fedRoute(gw2.srv.Router, "node-dc2.server.dc2.consul")
	require.Empty(t, reason)
	assert.Equal(t, []string{dc2.ServerRPC}, got.Targets)
	got, reason = fedRoute(gw2.srv.Router, "node-dc1.server.dc1.consul")
	require.Empty(t, reason)
	assert.Equal(t, []string{gw1.addr}, got.Targets, "dc2's gateway sends dc1's server names to dc1's gateway")

	lap("server connections checked")
	// A service connection crosses the datacenters through the same
	// gateways, in local and remote mode: web in dc1, a Connect-native api
	// in dc2 (one CA, the primary's, signs both).
	apiCerts := sidecartest.WatchCerts(t, dc2.Client, "api")
	sidecartest.ServeNative(t, dc2.Client, "api", apiCerts)
	webCerts := sidecartest.WatchCerts(t, dc1.Client, "web")
	d := &sidecar.Dialer{Source: gw1.src, Certs: webCerts,
		Instance: mesh.Instance{Service: "web", Proxy: &api.AgentServiceConnectProxyConfig{}}}
	apiSNI := "api.default.dc2.internal." + dc1.TrustDomain()
	consultest.WaitFor(t, fedEventually, "dc1's gateway to see api in dc2 behind dc2's gateway", func() bool {
		_, err := echoVia(d, api.MeshGatewayModeRemote)
		return err == nil
	})
	for _, m := range []struct {
		mode     api.MeshGatewayMode
		via1     int
		firstHop string
	}{{api.MeshGatewayModeLocal, 1, gw1.addr}, {api.MeshGatewayModeRemote, 0, gw2.addr}} {
		before1, before2 := gw1.name(apiSNI), gw2.name(apiSNI)
		plan, err := echoVia(d, m.mode)
		require.NoError(t, err, m.mode)
		assert.Equal(t, []string{m.firstHop}, plan.Dial, m.mode)
		consultest.WaitFor(t, fedEventually, string(m.mode)+": the gateways to count the connection", func() bool {
			return gw2.name(apiSNI)-before2 == 1
		})
		assert.Equal(t, m.via1, gw1.name(apiSNI)-before1, "%s: connections through dc1's gateway", m.mode)
		t.Logf("%s: %v", m.mode, plan.Hops)
	}

	lap("service connections checked")
	// A server name of a datacenter the gateway does not know is refused,
	// and nothing is dialled.
	beforeDials, beforeSnap := gw1.dials(), gw1.Snapshot()
	require.Error(t, handshake(gw1.addr, "node-dc9.server.dc9.consul"))
	consultest.WaitFor(t, fedEventually, "the refusal to be counted", func() bool {
		return gw1.Snapshot().Rejected[routing.ReasonUnknownDatacenter] == beforeSnap.Rejected[routing.ReasonUnknownDatacenter]+1
	})
	assert.Equal(t, beforeDials, gw1.dials(), "no dial for an unknown datacenter's server")

	// dc2's gateway goes away (a crash: it stays registered): dc1 can no
	// longer reach dc2, whose only way in it was. dc2 still reaches the
	// primary: Consul's GatewayLocator lets a secondary dial the primary's
	// gateways directly (from primary_gateways and the replicated
	// federation states) when its own fail, so that it can always
	// bootstrap again; those connections cross dc1's gateway, never dc1's
	// server directly. Once the gateway is back on its address, both
	// directions work again.
	addr2 := gw2.addr
	gw2.stop()
	lap("dc2's gateway stopped")
	consultest.WaitFor(t, fedEventually, "dc1's queries of dc2 to fail without dc2's gateway", func() bool {
		_, err := nodesIn(dc1, "dc2")
		return err != nil
	})
	lap("dc1 cannot reach dc2")
	viaGw1 := gw1.name("node-dc1.server.dc1.consul")
	consultest.WaitFor(t, fedEventually, "dc2's queries of dc1 to answer, through dc1's gateway", func() bool {
		nodes, err := nodesIn(dc2, "dc1")
		return err == nil && len(nodes) == 1
	})
	dialledOnly(t, dc2, dc1, gw1.addr)
	t.Logf("dc2 reached dc1 through dc1's gateway alone: %d connections for dc1's server since the stop", gw1.name("node-dc1.server.dc1.consul")-viaGw1)
	// The catalog lists dc2's gateway as critical (a check of the test's
	// own holds it there, as the agent's TCP check would until its next
	// run after the restart), so dc1's view has left it out: only a probe
	// of dc1's gateway can bring it back.
	require.NoError(t, dc2.Client.Agent().CheckRegister(&api.AgentCheckRegistration{ID: "held-critical", Name: "held critical by the test",
		ServiceID: "mesh-gateway", AgentServiceCheck: api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}}))
	dc2Loc := mesh.Location{Datacenter: "dc2", Partition: "default"}
	consultest.WaitFor(t, fedEventually, "dc1's view to list dc2's gateway as critical", func() bool {
		v := gw1.src.View()
		return len(v.GatewaysIn(dc2Loc)) == 0 && len(v.UnhealthyGateways[dc2Loc]) == 1
	})
	stopped := time.Now()
	gw2 = startFedGateway(t, dc2, addr2)
	consultest.WaitFor(t, fedEventually, "dc1's queries of dc2 to answer again", func() bool {
		nodes, err := nodesIn(dc1, "dc2")
		return err == nil && len(nodes) == 1
	})
	t.Logf("dc1 reaches dc2 again %v after dc2's gateway came back, while the catalog lists it as critical (dc1's gateway probed it)",
		time.Since(stopped).Round(time.Millisecond))
	entries, _, err := dc2.Client.Health().Service("mesh-gateway", "", true, nil)
	require.NoError(t, err)
	require.Empty(t, entries, "the catalog still lists dc2's gateway as critical")
	require.NoError(t, dc2.Client.Agent().CheckDeregister("held-critical"))
	consultest.WaitFor(t, fedEventually, "dc2's queries of dc1 to answer again", func() bool {
		nodes, err := nodesIn(dc2, "dc1")
		return err == nil && len(nodes) == 1
	})
	t.Logf("federation restored %v after dc2's gateway came back", time.Since(stopped).Round(time.Millisecond))
	consultest.WaitFor(t, fedEventually, "the restarted gateway to carry server connections", func() bool {
		return gw2.kind(routing.RouteWANFederation) > 0
	})
	consultest.WaitFor(t, fedEventually, "service traffic to cross again", func() bool {
		_, err := echoVia(d, api.MeshGatewayModeLocal)
		return err == nil
	})
	lap("restored")

	// dc1's gateway goes away: now neither datacenter reaches the other,
	// since every path, the secondary's fallback included, crosses it.
	addr1 := gw1.addr
	gw1.stop()
	consultest.WaitFor(t, fedEventually, "dc1's queries of dc2 to fail without dc1's gateway", func() bool {
		_, err := nodesIn(dc1, "dc2")
		return err != nil
	})
	consultest.WaitFor(t, fedEventually, "dc2's queries of dc1 to fail without dc1's gateway", func() bool {
		_, err := nodesIn(dc2, "dc1")
		return err != nil
	})
	lap("dc1's gateway stopped: neither way works")
	stopped = time.Now()
	gw1 = startFedGateway(t, dc1, addr1)
	for _, q := range []struct{ from, to *consultest.Agent }{{dc1, dc2}, {dc2, dc1}} {
		consultest.WaitFor(t, fedEventually, q.from.Datacenter+"'s queries of "+q.to.Datacenter+" to answer again", func() bool {
			nodes, err := nodesIn(q.from, q.to.Datacenter)
			return err == nil && len(nodes) == 1
		})
	}
	t.Logf("federation restored %v after dc1's gateway came back", time.Since(stopped).Round(time.Millisecond))
	// dc2's servers use dc2's own gateway for dc1 only once dc2's
	// federation state, naming that gateway, has gone to the primary and
	// come back by replication (a minute or two); meanwhile they dial dc1's
	// gateway directly. dc2's gateway routes that path whenever they do.
	t.Logf("dc2's server has reached dc1 through dc2's own gateway %d times so far", gw2.name("node-dc1.server.dc1.consul"))
	dialledOnly(t, dc1, dc2, gw1.addr)
	dialledOnly(t, dc2, dc1, gw2.addr, gw1.addr)
	lap("restored")
}
