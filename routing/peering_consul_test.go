package routing_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventually bounds every wait on Consul; the waits poll a condition.
const eventually = 60 * time.Second

// meshGateway is a meshgate gateway serving one cluster: a routing.PeeringRouter
// over a live consulview.Source, registered with the cluster's agent. It
// records which local addresses its upstream dials came from, and which
// client addresses each server name arrived from.
type meshGateway struct {
	t        *testing.T
	agent    *consultest.Agent
	addr     string
	src      *consulview.Source
	srv      *gateway.Server
	counters *gateway.Counters
	reg      *registration.Registration

	mu     sync.Mutex
	dialed map[string]bool     // local addresses of upstream dials
	seen   map[string][]string // server name -> remote addresses
}

// startGateway starts (or, with addr set, restarts on that address) a
// gateway for agent.
func startGateway(t *testing.T, agent *consultest.Agent, addr string) *meshGateway {
	t.Helper()
	return startGatewayWith(t, agent, addr, func(*routing.PeeringRouter) {})
}

// startGatewayWith is startGateway whose router configure completes (its
// Source set).
func startGatewayWith(t *testing.T, agent *consultest.Agent, addr string, configure func(*routing.PeeringRouter)) *meshGateway {
	t.Helper()
	g := &meshGateway{t: t, agent: agent, counters: &gateway.Counters{}, dialed: map[string]bool{}, seen: map[string][]string{}}
	src, err := consulview.New(context.Background(), agent.Client, consulview.Options{})
	require.NoError(t, err)
	g.src = src
	router := &routing.PeeringRouter{Source: src}
	configure(router)
	g.srv = &gateway.Server{
		Router: gateway.RouterFunc(func(ctx context.Context, hello *sni.ClientHello) (gateway.Route, error) {
			if ci, ok := gateway.ConnInfoFrom(ctx); ok {
				g.mu.Lock()
				g.seen[hello.ServerName] = append(g.seen[hello.ServerName], ci.Remote.String())
				g.mu.Unlock()
			}
			return router.Route(ctx, hello)
		}),
		Observer:       g.counters,
		ConnectTimeout: 2 * time.Second,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, address)
			if err == nil {
				g.mu.Lock()
				g.dialed[c.LocalAddr().String()] = true
				g.mu.Unlock()
			}
			return c, err
		},
	}
	ln := consultest.Listen(t, addr)
	g.addr = ln.Addr().String()
	go g.srv.Serve(ln)
	g.reg, err = registration.Register(context.Background(), agent.Client, registration.Gateway{
		Address: g.addr, CheckInterval: time.Second})
	require.NoError(t, err)
	t.Cleanup(g.stop)
	return g
}

// stop closes the gateway but leaves it registered, as a crash would.
func (g *meshGateway) stop() {
	g.srv.Close()
	g.src.Close()
}

// remotesOf returns the client addresses that connections for serverName
// came from.
func (g *meshGateway) remotesOf(serverName string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.seen[serverName]...)
}

func (g *meshGateway) dialedFrom(addr string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dialed[addr]
}

func routeOf(r gateway.Router, name string) (gateway.Route, string) {
	got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
	var rej *gateway.Rejection
	if errors.As(err, &rej) {
		return gateway.Route{}, rej.Reason
	}
	return got, ""
}

func peerThroughGateways(t *testing.T, a *consultest.Agent) {
	t.Helper()
	_, _, err := a.Client.ConfigEntries().Set(&api.MeshConfigEntry{Peering: &api.PeeringMeshConfig{PeerThroughMeshGateways: true}}, nil)
	require.NoError(t, err)
}

// peeringToken is what a peering token tells the dialling cluster.
type peeringToken struct {
	ServerAddresses []string
	ServerName      string
}

// establishPeering peers a ("cluster-b" there) with b ("cluster-a"
// there), b generating the token, and waits until both sides are ACTIVE.
func establishPeering(t *testing.T, a, b *consultest.Agent) peeringToken {
	t.Helper()
	tok, _, err := b.Client.Peerings().GenerateToken(context.Background(), api.PeeringGenerateTokenRequest{PeerName: "cluster-a"}, nil)
	require.NoError(t, err)
	raw, err := base64.StdEncoding.DecodeString(tok.PeeringToken)
	require.NoError(t, err)
	var token peeringToken
	require.NoError(t, json.Unmarshal(raw, &token))
	start := time.Now()
	_, _, err = a.Client.Peerings().Establish(context.Background(), api.PeeringEstablishRequest{PeerName: "cluster-b", PeeringToken: tok.PeeringToken}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the peering to be ACTIVE on both sides", func() bool {
		return peeringState(t, a, "cluster-b") == api.PeeringStateActive && peeringState(t, b, "cluster-a") == api.PeeringStateActive
	})
	t.Logf("peering ACTIVE on both sides %v after Establish", time.Since(start).Round(time.Millisecond))
	return token
}

func peeringState(t *testing.T, a *consultest.Agent, name string) api.PeeringState {
	p, _, err := a.Client.Peerings().Read(context.Background(), name, nil)
	if err != nil || p == nil {
		return ""
	}
	return p.State
}

// connectService serves mTLS for a Connect-native service on agent: its leaf
// certificate from the agent, client certificates verified against
// clientRoots (the peer's CA, as the service would get it from Consul), and
// an echo.
func connectService(t *testing.T, agent *consultest.Agent, name string, clientRoots func() *x509.CertPool) (port int, accepted *int64Counter) {
	t.Helper()
	leaf, _, err := agent.Client.Agent().ConnectCALeaf(name, nil)
	require.NoError(t, err)
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	require.NoError(t, err)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, clientRoots(), "")
		},
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted = &int64Counter{}
	go echo.Serve(ln, accepted.add)
	port = ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Name: name, Address: "127.0.0.1", Port: port, Connect: &api.AgentServiceConnect{Native: true}}))
	return port, accepted
}

type int64Counter struct {
	mu sync.Mutex
	n  int64
}

func (c *int64Counter) add() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *int64Counter) get() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// verifyChain verifies a peer's certificate chain against roots and, when
// spiffeID is set, that the leaf carries exactly that URI SAN.
func verifyChain(raw [][]byte, roots *x509.CertPool, spiffeID string) error {
	if len(raw) == 0 {
		return errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return err
	}
	if spiffeID == "" {
		return nil
	}
	for _, u := range certs[0].URIs {
		if u.String() == spiffeID {
			return nil
		}
	}
	return fmt.Errorf("certificate is for %v, not %s", certs[0].URIs, spiffeID)
}

// peerRoots returns the CA roots agent holds for its peer.
func peerRoots(t *testing.T, agent *consultest.Agent, peer string) *x509.CertPool {
	p, _, err := agent.Client.Peerings().Read(context.Background(), peer, nil)
	if err != nil || p == nil {
		t.Errorf("reading peering %q: %v", peer, err)
		return x509.NewCertPool()
	}
	pool := x509.NewCertPool()
	for _, pemText := range p.PeerCAPems {
		pool.AppendCertsFromPEM([]byte(pemText))
	}
	return pool
}

// dialPeered opens mTLS through addr with serverName, as a sidecar of
// service "web" in agent's cluster, expecting the server to be spiffeID
// under roots, and checks an echo both ways.
func dialPeered(agent *consultest.Agent, addr, serverName, spiffeID string, roots *x509.CertPool) error {
	leaf, _, err := agent.Client.Agent().ConnectCALeaf("web", nil)
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return err
	}
	d := tls.Dialer{Config: &tls.Config{
		ServerName:         serverName,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // the SPIFFE identity is checked below instead of a DNS name
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, roots, spiffeID)
		},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte(strings.Repeat("through the gateways ", 4096))
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo differs")
	}
	return nil
}

// Two clusters peer through meshgate gateways only, and a service exported
// by one is reached from the other through them, in local and remote mode.
func TestTwoClustersPeerThroughMeshgate(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	b := consultest.Start(t, consultest.Options{})
	tdA, tdB := a.TrustDomain(), b.TrustDomain()
	require.NotEqual(t, tdA, tdB, "two clusters, two trust domains")
	peerThroughGateways(t, a)
	peerThroughGateways(t, b)
	gwA := startGateway(t, a, "")
	gwB := startGateway(t, b, "")
	bServers := sni.PeeringServerSNI("dc1", tdB)

	// B's gateway routes B's server name to B's gRPC TLS port.
	consultest.WaitFor(t, eventually, "B's gateway to know B's servers", func() bool {
		r, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, bServers)
		return reason == "" && len(r.Targets) == 1 && r.Targets[0] == b.GRPCTLS
	})

	// B generates a token for A: its server addresses are B's gateway only.
	token := establishPeering(t, a, b)
	assert.Equal(t, []string{gwB.addr}, token.ServerAddresses, "the token names only B's meshgate gateway")
	assert.Equal(t, bServers, token.ServerName)

	// Every control-plane connection that reached B's gateway came from A's
	// gateway: none from A's servers directly, which Consul falls back to
	// when its local gateway does not route the peer's server name.
	remotes := gwB.remotesOf(bServers)
	require.NotEmpty(t, remotes, "A's servers reached B's through B's gateway")
	for _, r := range remotes {
		assert.True(t, gwA.dialedFrom(r), "connection to B's servers from %s did not come through A's gateway", r)
	}
	assert.NotEmpty(t, gwA.remotesOf(bServers), "A's servers dialled A's gateway")
	snapA := gwA.counters.Snapshot()
	assert.Zero(t, snapA.Rejected[routing.ReasonNotThroughGateways]+snapA.Rejected[routing.ReasonForeignTrustDomain],
		"A's gateway refused none of A's servers' connections: %v", snapA.Rejected)

	// The data plane: B exports a Connect-native api to A.
	apiPort, apiAccepted := connectService(t, b, "api", func() *x509.CertPool { return peerRoots(t, b, "cluster-a") })
	_, _, err := b.Client.ConfigEntries().Set(&api.ExportedServicesConfigEntry{Name: "default",
		Services: []api.ExportedService{{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}}}}, nil)
	require.NoError(t, err)
	apiSNI := sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)
	apiID := "spiffe://" + tdB + "/ns/default/dc/dc1/svc/api"
	var imported mesh.ImportedService
	consultest.WaitFor(t, eventually, "A's gateway to learn api imported from B, with B's gateway as address", func() bool {
		var ok bool
		imported, ok = gwA.src.View().Peers["cluster-b"].Import("api", "")
		return ok && imported.SNI == apiSNI && len(imported.Gateways) == 1 && imported.Gateways[0] == gwB.addr
	})
	assert.Equal(t, []string{apiID, "spiffe://" + tdB + "/gateway/mesh/dc/dc1"}, imported.SpiffeIDs,
		"the identities B lists for api: its own and its gateway's, which would serve an L7 export")
	// A sidecar of web in A with api from B as an upstream is planned with
	// the SNI and addresses learned from A's agent, in each mode.
	web := mesh.Instance{Service: "web", Name: "web-sidecar-proxy", Proxy: &api.AgentServiceConnectProxyConfig{}}
	consultest.WaitFor(t, eventually, "A's view to hold A's own gateway, once its check passes", func() bool {
		v := gwA.src.View()
		return len(v.GatewaysIn(v.Local())) == 1
	})
	for mode, want := range map[api.MeshGatewayMode]string{api.MeshGatewayModeRemote: gwB.addr, api.MeshGatewayModeLocal: gwA.addr} {
		plan := resolve.PlanUpstream(gwA.src.View(), web, api.Upstream{DestinationName: "api", DestinationPeer: "cluster-b",
			MeshGateway: api.MeshGatewayConfig{Mode: mode}})
		assert.Equal(t, apiSNI, plan.SNI, mode)
		assert.Equal(t, []string{want}, plan.Dial, mode)
		assert.Empty(t, plan.Warnings, mode)
	}
	checkDataPath := func(what string) {
		t.Helper()
		before := apiAccepted.get()
		// local mode: A's gateway, then B's gateway, then api.
		consultest.WaitFor(t, eventually, what+": api through A's gateway (local mode)", func() bool {
			return dialPeered(a, gwA.addr, imported.SNI, apiID, peerRoots(t, a, "cluster-b")) == nil
		})
		// remote mode: B's gateway, as the imported entry's WAN address says.
		require.NoError(t, dialPeered(a, imported.Gateways[0], imported.SNI, apiID, peerRoots(t, a, "cluster-b")), what+": remote mode")
		assert.GreaterOrEqual(t, apiAccepted.get()-before, int64(2))
	}
	checkDataPath("first")

	// A Go sidecar in A (sidecar.Dialer) carries the plan out in each mode:
	// the peer's roots and trust domain from A's live view (no Client to
	// read them otherwise), bytes both ways, and A's gateway crossed in
	// local mode only.
	d := &sidecar.Dialer{Source: gwA.src, Certs: sidecartest.WatchCerts(t, a.Client, "web"), Instance: web}
	for _, m := range []struct {
		mode api.MeshGatewayMode
		viaA int
	}{{api.MeshGatewayModeLocal, 1}, {api.MeshGatewayModeRemote, 0}} {
		beforeA, beforeB := len(gwA.remotesOf(apiSNI)), len(gwB.remotesOf(apiSNI))
		c, plan, err := d.Dial(context.Background(), api.Upstream{DestinationName: "api", DestinationPeer: "cluster-b", MeshGateway: api.MeshGatewayConfig{Mode: m.mode}})
		require.NoError(t, err, m.mode)
		msg := []byte("through " + string(m.mode))
		_, err = c.Write(msg)
		require.NoError(t, err)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		c.Close()
		assert.Equal(t, msg, got)
		assert.Equal(t, m.viaA, len(gwA.remotesOf(apiSNI))-beforeA, "%s: connections through A's gateway", m.mode)
		assert.Equal(t, 1, len(gwB.remotesOf(apiSNI))-beforeB, "%s: connections through B's gateway", m.mode)
		t.Logf("peered %s: %v", m.mode, plan.Hops)
	}
	// Failover to the peer: A has an api of its own, whose resolver fails
	// over to B's exported api. Healthy, A's api serves; critical, the
	// connection goes to B's api through both gateways; passing, back.
	localAPI := sidecartest.StartNative(t, a.Client, "api", sidecartest.WatchCerts(t, a.Client, "api"))
	_, _, err = a.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Targets: []api.ServiceResolverFailoverTarget{{Peer: "cluster-b"}}}}}, nil)
	require.NoError(t, err)
	toAPI := api.Upstream{DestinationName: "api", MeshGateway: api.MeshGatewayConfig{Mode: api.MeshGatewayModeLocal}}
	servedBy := func(want int) resolve.Plan {
		var plan resolve.Plan
		consultest.WaitFor(t, eventually, fmt.Sprintf("a connection served by chain target %d", want), func() bool {
			c, p, err := d.Dial(context.Background(), toAPI)
			if err != nil {
				return false
			}
			c.Close()
			plan = p
			return p.Served == want && len(p.Chain()) == 2 // the resolver is in the view
		})
		return plan
	}
	plan := servedBy(0)
	assert.Equal(t, []string{"api dc1 direct", "api peer cluster-b local-gateway"}, chainNames(plan))
	localAPI.SetHealth(t, api.HealthCritical)
	servedBy(1)
	beforeLocal, beforePeer, beforeB := localAPI.Accepted(), apiAccepted.get(), len(gwB.remotesOf(apiSNI))
	c, plan, err := d.Dial(context.Background(), toAPI)
	require.NoError(t, err)
	c.Close()
	assert.Equal(t, 1, plan.Served)
	assert.Equal(t, []string{"api dc1: no healthy instances"}, plan.PassedOver)
	consultest.WaitFor(t, eventually, "B's api to count the failed-over connection", func() bool { return apiAccepted.get() > beforePeer })
	assert.Equal(t, 0, localAPI.Accepted()-beforeLocal, "none at A's critical api")
	assert.Equal(t, 1, len(gwB.remotesOf(apiSNI))-beforeB, "through B's gateway")
	localAPI.SetHealth(t, api.HealthPassing)
	servedBy(0)

	assert.NotEmpty(t, gwA.remotesOf(apiSNI), "local mode went through A's gateway")
	for _, r := range gwB.remotesOf(apiSNI)[:1] {
		assert.True(t, gwA.dialedFrom(r), "the first api connection reached B's gateway from A's gateway")
	}
	wrongID := "spiffe://" + tdB + "/ns/default/dc/dc1/svc/billing"
	assert.Error(t, dialPeered(a, gwA.addr, imported.SNI, wrongID, peerRoots(t, a, "cluster-b")), "the client checks the server's SPIFFE identity")

	// A service B does not export to A is refused by B's gateway, without a dial.
	_, billingAccepted := connectService(t, b, "billing", func() *x509.CertPool { return peerRoots(t, b, "cluster-a") })
	consultest.WaitFor(t, eventually, "B's gateway to know billing", func() bool {
		return len(gwB.src.View().Endpoints("billing", "", "", "")) == 1
	})
	before := gwB.counters.Snapshot()
	billingSNI := sni.PeeredServiceSNI("billing", "", "", "cluster-a", tdB)
	assert.Error(t, dialPeered(a, gwB.addr, billingSNI, wrongID, peerRoots(t, a, "cluster-b")))
	after := gwB.counters.Snapshot()
	assert.Equal(t, before.Rejected[routing.ReasonNotExported]+1, after.Rejected[routing.ReasonNotExported])
	assert.Equal(t, before.DialFailures, after.DialFailures)
	assert.Equal(t, before.Forwarded, after.Forwarded)
	assert.Zero(t, billingAccepted.get())

	// api made http: Consul's gateway would terminate it, meshgate's refuses
	// it, without a dial, until it is tcp again.
	_, _, err = b.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "B's gateway to see api's protocol", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, apiSNI)
		return reason == routing.ReasonL7Export
	})
	before = gwB.counters.Snapshot()
	assert.Error(t, dialPeered(a, gwB.addr, apiSNI, apiID, peerRoots(t, a, "cluster-b")))
	after = gwB.counters.Snapshot()
	assert.Equal(t, before.Rejected[routing.ReasonL7Export]+1, after.Rejected[routing.ReasonL7Export])
	assert.Equal(t, before.Forwarded, after.Forwarded)
	_, err = b.Client.ConfigEntries().Delete(api.ServiceDefaults, "api", nil)
	require.NoError(t, err)
	checkDataPath("after api's protocol is tcp again")

	// B's api fails over to api-backup in B; api's instance goes critical.
	// Consul's exporting gateway never fails an export over (and keeps no
	// panic threshold on it): A's connection is refused by B's gateway,
	// without a dial, and api-backup sees none. Passing again, it serves.
	backup := sidecartest.StartNative(t, b.Client, "api-backup", sidecartest.WatchCerts(t, b.Client, "api-backup"))
	_, _, err = b.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Service: "api-backup"}}}, nil)
	require.NoError(t, err)
	require.NoError(t, b.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "api", Address: "127.0.0.1", Port: apiPort,
		Connect: &api.AgentServiceConnect{Native: true}, Check: &api.AgentServiceCheck{CheckID: "api-ttl", TTL: "10m", Status: api.HealthCritical}}))
	consultest.WaitFor(t, eventually, "B's gateway to refuse api, critical, rather than fail over to api-backup", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, apiSNI)
		return reason == routing.ReasonUnknownService && len(gwB.src.View().Endpoints("api-backup", "", "", "")) == 1
	})
	before = gwB.counters.Snapshot()
	assert.Error(t, dialPeered(a, gwB.addr, apiSNI, apiID, peerRoots(t, a, "cluster-b")), "refused as Consul's gateway refuses it")
	after = gwB.counters.Snapshot()
	assert.Equal(t, before.Rejected[routing.ReasonUnknownService]+1, after.Rejected[routing.ReasonUnknownService])
	assert.Equal(t, before.DialFailures, after.DialFailures)
	assert.Zero(t, backup.Accepted(), "never failed over to api-backup")
	require.NoError(t, b.Client.Agent().UpdateTTL("api-ttl", "", api.HealthPassing))
	checkDataPath("after api passes again")
	assert.Zero(t, backup.Accepted())

	// A second gateway of B that does not serve, its check critical: A's
	// import of api lists it apart, as Consul hands a critical gateway to
	// Envoy marked unhealthy, and A's gateway never dials it. Deregistered,
	// it leaves the import.
	dead := consultest.Listen(t, "")
	deadAddr := dead.Addr().String()
	dead.Close()
	deregDead, err := registration.Register(context.Background(), b.Client, registration.Gateway{ID: "mesh-gateway-dead",
		Address: deadAddr, CheckInterval: time.Second})
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "A's import of api to hold B's critical gateway apart", func() bool {
		im, ok := gwA.src.View().Peers["cluster-b"].Import("api", "")
		return ok && im.SNI == apiSNI && slices.Equal(im.Gateways, []string{gwB.addr}) && slices.Equal(im.UnhealthyGateways, []string{deadAddr})
	})
	r, reason := routeOf(&routing.PeeringRouter{Source: gwA.src}, apiSNI)
	assert.Empty(t, reason)
	assert.Equal(t, []string{gwB.addr}, r.Targets, "A's gateway dials B's serving gateway only")
	require.NoError(t, deregDead.Deregister(context.Background()))
	consultest.WaitFor(t, eventually, "B's deregistered gateway to leave A's import of api", func() bool {
		im, ok := gwA.src.View().Peers["cluster-b"].Import("api", "")
		return ok && slices.Equal(im.Gateways, []string{gwB.addr}) && len(im.UnhealthyGateways) == 0
	})

	// B's gateway restarts on its address, then B's agent restarts: the
	// peering and the data path come back.
	addrB := gwB.addr
	gwB.stop()
	gwB = startGateway(t, b, addrB)
	checkDataPath("after B's gateway restarted")
	b.Stop()
	b.Restart()
	consultest.WaitFor(t, eventually, "the peering to be ACTIVE again after B's agent restarted", func() bool {
		return peeringState(t, a, "cluster-b") == api.PeeringStateActive && peeringState(t, b, "cluster-a") == api.PeeringStateActive
	})
	checkDataPath("after B's agent restarted")

	// Deleting the export removes the routes on both sides.
	_, err = b.Client.ConfigEntries().Delete(api.ExportedServices, "default", nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "B's gateway to stop routing api to A", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, apiSNI)
		return reason == routing.ReasonNotExported
	})
	consultest.WaitFor(t, eventually, "A's gateway to forget api", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwA.src}, apiSNI)
		return reason == routing.ReasonForeignTrustDomain
	})

	// Deleting the peering removes the control-plane route on A's side.
	_, err = a.Client.Peerings().Delete(context.Background(), "cluster-b", nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "A's gateway to stop routing B's servers", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwA.src}, bServers)
		return reason == routing.ReasonForeignTrustDomain
	})
}

// Without the mesh entry, the gateway does not route the local servers.
func TestControlPlaneFollowsTheMeshEntry(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	src, err := consulview.New(context.Background(), a.Client, consulview.Options{})
	require.NoError(t, err)
	defer src.Close()
	r := &routing.PeeringRouter{Source: src}
	name := sni.PeeringServerSNI("dc1", a.TrustDomain())
	_, reason := routeOf(r, name)
	assert.Equal(t, routing.ReasonNotThroughGateways, reason)
	peerThroughGateways(t, a)
	consultest.WaitFor(t, eventually, "the servers to route once the mesh entry says so", func() bool {
		got, reason := routeOf(r, name)
		return reason == "" && len(got.Targets) == 1 && got.Targets[0] == a.GRPCTLS
	})
	_, err = a.Client.ConfigEntries().Delete(api.MeshConfig, api.MeshConfigMesh, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "the servers to stop routing once the entry is gone", func() bool {
		_, reason := routeOf(r, name)
		return reason == routing.ReasonNotThroughGateways
	})
}

// chainNames names each target of plan's chain with its route.
func chainNames(plan resolve.Plan) []string {
	var out []string
	for _, t := range plan.Chain() {
		out = append(out, t.String()+" "+string(t.Route))
	}
	return out
}
