package routing_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gatewaycert"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startL7Gateway is startGateway whose router hands L7 exports to an
// l7.Terminator in the process, holding the gateway's own certificate
// from agent's xDS; configure, if set, completes the terminator.
func startL7Gateway(t *testing.T, agent *consultest.Agent, configure ...func(*l7.Terminator)) *meshGateway {
	t.Helper()
	return startGatewayWith(t, agent, "", func(r *routing.PeeringRouter) {
		certs, err := gatewaycert.Watch(context.Background(), agent.Client, gatewaycert.Options{GRPCAddr: agent.GRPC, GatewayID: "mesh-gateway"})
		require.NoError(t, err)
		t.Cleanup(certs.Close)
		term := &l7.Terminator{Source: r.Source, Certs: certs}
		for _, c := range configure {
			c(term)
		}
		t.Cleanup(func() { term.Close() })
		r.Terminate = term.ServeConn
	})
}

// l7Request is what an instance saw of one request.
type l7Request struct {
	instance, path, proto, xfcc, client string
}

// l7Instances are Connect-native instances of one service that answer
// HTTP/1.1, HTTP/2 and gRPC (health) with the service's leaf, accepting
// clients of their own cluster, and record each request.
type l7Instances struct {
	mu   sync.Mutex
	seen []l7Request
}

func (s *l7Instances) requests() []l7Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]l7Request(nil), s.seen...)
}

// start serves one instance named id of service on agent, with meta.
func (s *l7Instances) start(t *testing.T, agent *consultest.Agent, service, id string, meta map[string]string) {
	t.Helper()
	s.startWrapped(t, agent, service, id, meta, func(h http.Handler) http.Handler { return h })
}

// startWrapped is start with the instance's handler wrapped.
func (s *l7Instances) startWrapped(t *testing.T, agent *consultest.Agent, service, id string, meta map[string]string, wrap func(http.Handler) http.Handler) {
	t.Helper()
	certs := sidecartest.WatchCerts(t, agent.Client, service)
	cfg := certs.ServerTLSConfig()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	srv := &http.Server{TLSConfig: cfg, Handler: wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) > 0 {
			client = r.TLS.PeerCertificates[0].URIs[0].String()
		}
		s.mu.Lock()
		s.seen = append(s.seen, l7Request{instance: id, path: r.URL.Path, proto: r.Proto, xfcc: r.Header.Get(sidecar.XFCCHeader), client: client})
		s.mu.Unlock()
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		fmt.Fprintf(w, "%s %s", id, r.URL.Path)
	}))}
	ln := consultest.Listen(t, "")
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: port,
		Meta: meta, Connect: &api.AgentServiceConnect{Native: true}}))
}

// httpVia is an HTTP client whose connections go to addr with cfg,
// speaking proto ("http/1.1" or "h2", also named in ALPN).
func httpVia(addr string, cfg *tls.Config, proto string) *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols), DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		c := cfg.Clone()
		c.NextProtos = []string{proto}
		return (&tls.Dialer{Config: c}).DialContext(ctx, "tcp", addr)
	}}
	if proto == "h2" {
		tr.Protocols.SetHTTP2(true)
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// setEntries writes config entries to agent's cluster, in order.
func setEntries(t *testing.T, agent *consultest.Agent, entries ...api.ConfigEntry) {
	t.Helper()
	for _, e := range entries {
		_, _, err := agent.Client.ConfigEntries().Set(e, nil)
		require.NoError(t, err, "%s %s", e.GetKind(), e.GetName())
	}
}

// peerClientTLS is the TLS of web in agent's cluster reaching an export of
// its peer through serverName: web's leaf, and the peer's gateway's
// identity under the peer's roots.
func peerClientTLS(t *testing.T, agent *consultest.Agent, peer, serverName, gatewayID string) *tls.Config {
	leaf, _, err := agent.Client.Agent().ConnectCALeaf("web", nil)
	require.NoError(t, err)
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	require.NoError(t, err)
	return &tls.Config{
		ServerName:         serverName,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // the SPIFFE identity is checked instead
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, peerRoots(t, agent, peer), gatewayID)
		},
	}
}

// A peer's client reaches an exported http service through meshgate
// gateways on both sides, and B's gateway terminates it as Consul's does:
// the client sees B's gateway's identity, the instance sees the gateway's
// certificate and, in X-Forwarded-Client-Cert, the peer client's identity
// (a forged header is replaced); HTTP/1.1, HTTP/2 and gRPC all get through.
func TestPeersReachAnL7ExportThroughMeshgate(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	b := consultest.Start(t, consultest.Options{})
	tdA, tdB := a.TrustDomain(), b.TrustDomain()
	peerThroughGateways(t, a)
	peerThroughGateways(t, b)
	gwA := startGateway(t, a, "")
	gwB := startL7Gateway(t, b)
	consultest.WaitFor(t, eventually, "B's gateway to know B's servers", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, sni.PeeringServerSNI("dc1", tdB))
		return reason == ""
	})
	establishPeering(t, a, b)

	_, _, err := b.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil)
	require.NoError(t, err)
	inst := &l7Instances{}
	inst.start(t, b, "api", "api-1", nil)
	_, _, err = b.Client.ConfigEntries().Set(&api.ExportedServicesConfigEntry{Name: "default",
		Services: []api.ExportedService{{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}}}}, nil)
	require.NoError(t, err)
	apiSNI := sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)
	consultest.WaitFor(t, eventually, "A's gateway to learn api imported from B", func() bool {
		_, ok := gwA.src.View().Peers["cluster-b"].Import("api", "")
		return ok
	})
	gatewayB := "spiffe://" + tdB + "/gateway/mesh/dc/dc1"
	webA := "spiffe://" + tdA + "/ns/default/dc/dc1/svc/web"
	clientTLS := peerClientTLS(t, a, "cluster-b", apiSNI, gatewayB)
	h1 := httpVia(gwA.addr, clientTLS, "http/1.1")
	get := func(c *http.Client, path string, header http.Header) (int, string, error) {
		req, _ := http.NewRequest("GET", "https://api"+path, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}

	// HTTP/1.1, once B's gateway has its certificate and routes api to the
	// terminator.
	consultest.WaitFor(t, eventually, "a request through both gateways", func() bool {
		code, _, err := get(h1, "/first", nil)
		return err == nil && code == http.StatusOK
	})
	code, body, err := get(h1, "/hello", http.Header{sidecar.XFCCHeader: {"By=spiffe://forged;URI=spiffe://forged/ns/default/dc/dc1/svc/admin"}})
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "api-1 /hello", body)
	seen := inst.requests()
	last := seen[len(seen)-1]
	assert.Equal(t, "/hello", last.path)
	assert.Equal(t, "HTTP/1.1", last.proto)
	assert.Equal(t, gatewayB, last.client, "the instance is dialled with B's gateway's certificate")
	assert.True(t, strings.HasPrefix(last.xfcc, "By="+gatewayB+";Hash="), "XFCC: %s", last.xfcc)
	assert.Contains(t, last.xfcc, ";URI="+webA, "XFCC names the peer's client")
	assert.NotContains(t, last.xfcc, "forged", "the client's own XFCC is replaced")
	assert.NotEmpty(t, gwA.remotesOf(apiSNI), "through A's gateway")
	assert.NotEmpty(t, gwB.remotesOf(apiSNI), "through B's gateway")

	// api's service-router sends /admin/ to admin, with the prefix
	// rewritten; its service-splitter halves the rest between two subsets.
	inst.start(t, b, "api", "api-2", map[string]string{"version": "v2"})
	inst.start(t, b, "admin", "admin-1", nil)
	setEntries(t, b,
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "admin", Protocol: "http"},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", Subsets: map[string]api.ServiceResolverSubset{
			"v1": {Filter: "Service.Meta.version != v2"}, "v2": {Filter: "Service.Meta.version == v2"}}},
		&api.ServiceSplitterConfigEntry{Kind: api.ServiceSplitter, Name: "api", Splits: []api.ServiceSplit{
			{Weight: 50, ServiceSubset: "v1"}, {Weight: 50, ServiceSubset: "v2"}}},
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/admin/"}},
				Destination: &api.ServiceRouteDestination{Service: "admin", PrefixRewrite: "/"}}}})
	consultest.WaitFor(t, eventually, "B's gateway to route /admin/ to admin", func() bool {
		code, body, err := get(h1, "/admin/users", nil)
		return err == nil && code == http.StatusOK && body == "admin-1 /users"
	})
	consultest.WaitFor(t, eventually, "B's gateway to split api's requests to api-2 too", func() bool {
		_, body, err := get(h1, "/split", nil)
		return err == nil && body == "api-2 /split"
	})
	before := len(inst.requests())
	const n = 200
	for i := range n {
		code, _, err := get(h1, fmt.Sprintf("/split/%d", i), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
	}
	counts := map[string]int{}
	for _, r := range inst.requests()[before:] {
		counts[r.instance]++
	}
	t.Logf("%d requests split 50/50: %v", n, counts)
	assert.Equal(t, n, counts["api-1"]+counts["api-2"], "every request reached api: %v", counts)
	// Binomial(200, 0.5): 60 to 140 is more than five standard deviations.
	assert.InDelta(t, n/2, counts["api-1"], 40, "api-1's share: %v", counts)
	assert.InDelta(t, n/2, counts["api-2"], 40, "api-2's share: %v", counts)

	// L7 intentions, enforced by orders' instance from the identity B's
	// gateway forwards: web of cluster-a may GET /public only; then not at
	// all. The default is deny.
	intentions, err := sidecar.WatchIntentions(context.Background(), b.Client, "orders")
	require.NoError(t, err)
	t.Cleanup(intentions.Close)
	inst.startWrapped(t, b, "orders", "orders-1", nil, func(h http.Handler) http.Handler {
		return intentions.Handler(h, gwB.src, false)
	})
	setEntries(t, b,
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "orders", Protocol: "http"},
		&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "orders", Sources: []*api.SourceIntention{
			{Name: "web", Peer: "cluster-a", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/public", Methods: []string{"GET"}}}}}}},
		&api.ExportedServicesConfigEntry{Name: "default", Services: []api.ExportedService{
			{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}},
			{Name: "orders", Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}}}})
	ordersSNI := sni.PeeredServiceSNI("orders", "", "", "cluster-a", tdB)
	ordersTLS := peerClientTLS(t, a, "cluster-b", ordersSNI, gatewayB)
	orders := httpVia(gwA.addr, ordersTLS, "http/1.1")
	consultest.WaitFor(t, eventually, "web of cluster-a allowed to GET /public of orders", func() bool {
		code, body, err := get(orders, "/public/menu", nil)
		return err == nil && code == http.StatusOK && body == "orders-1 /public/menu"
	})
	code, body, err = get(orders, "/private", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusForbidden, code, "web of cluster-a denied /private: %s", body)
	assert.Contains(t, body, "web of peer cluster-a via "+gatewayB)
	assert.Contains(t, body, "no permission matches GET /private: the default, deny")
	setEntries(t, b, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "orders", Sources: []*api.SourceIntention{
		{Name: "web", Peer: "cluster-a", Action: api.IntentionActionDeny}}})
	consultest.WaitFor(t, eventually, "web of cluster-a denied /public once the intention says deny", func() bool {
		code, _, err := get(orders, "/public/menu", nil)
		return err == nil && code == http.StatusForbidden
	})

	// A client of B's own cluster is not a client of peer cluster-a.
	ownB := peerClientTLS(t, b, "cluster-a", apiSNI, gatewayB)
	ownB.VerifyPeerCertificate = nil
	c, err := tls.Dial("tcp", gwB.addr, ownB)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	assert.Error(t, err, "B's gateway refuses a client outside cluster-a's trust domain")

	// HTTP/2 and gRPC, once api speaks http2 (without the router, to a
	// service that still speaks http: Consul refuses a chain of two
	// protocols).
	_, err = b.Client.ConfigEntries().Delete(api.ServiceRouter, "api", nil)
	require.NoError(t, err)
	_, _, err = b.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http2"}, nil)
	require.NoError(t, err)
	h2 := httpVia(gwA.addr, clientTLS, "h2")
	consultest.WaitFor(t, eventually, "an HTTP/2 request to reach api over HTTP/2", func() bool {
		code, _, err := get(h2, "/h2", nil)
		seen := inst.requests()
		return err == nil && code == http.StatusOK && seen[len(seen)-1].proto == "HTTP/2.0"
	})
	gc, err := grpc.NewClient("passthrough:///api", grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", gwA.addr)
		}))
	require.NoError(t, err)
	defer gc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(gc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err, "gRPC through both gateways")
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, hr.Status)
	seen = inst.requests()
	assert.Equal(t, "/grpc.health.v1.Health/Check", seen[len(seen)-1].path)
	assert.Contains(t, seen[len(seen)-1].xfcc, ";URI="+webA)
}
