package l7_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/net/http2"
)

const (
	tdLocal = "bbbbbbbb-0000-4000-8000-000000000002.consul" // the exporting cluster
	tdPeer  = "aaaaaaaa-0000-4000-8000-000000000001.consul" // cluster-a, the consumer
)

// world is a terminator for the local cluster, which exports api (http) to
// cluster-a, with its CAs and an instance of api.
type world struct {
	local, peer *sidecartest.CA
	gateway     *sidecar.Certs
	addr        string // the terminator's
	gatewayAddr string // a gateway's that hands it connections in the process
	counters    *gateway.Counters
	l7          *l7.Counters
	api         string // the instance's
	term        *l7.Terminator
	logs        *syncbuf.Buffer // the terminator's log
	served      chan error
}

func newWorld(t *testing.T, instances []string) *world {
	t.Helper()
	return newWorldWith(t, worldOptions{addrs: instances})
}

// worldOptions change a world: its instances, its view, its terminator.
type worldOptions struct {
	// addrs are api's instances' addresses; nil starts one instance per
	// handler, or one echoing instance when handlers is nil too.
	addrs    []string
	handlers []http.Handler
	// view and term, when set, change the view and the terminator before
	// anything reads them.
	view func(*mesh.View)
	term func(*l7.Terminator)
}

func newWorldWith(t *testing.T, o worldOptions) *world {
	t.Helper()
	w := &world{served: make(chan error, 1), logs: &syncbuf.Buffer{}}
	instances := o.addrs
	var err error
	w.local, err = sidecartest.NewCA(tdLocal)
	require.NoError(t, err)
	w.peer, err = sidecartest.NewCA(tdPeer)
	require.NoError(t, err)
	roots, err := w.local.Certs(sidecar.Identity{Service: "roots-only", Datacenter: "dc1"})
	require.NoError(t, err)
	leaf, err := w.local.Leaf("spiffe://" + tdLocal + "/gateway/mesh/dc/dc1")
	require.NoError(t, err)
	w.gateway = sidecar.StaticCerts(leaf, roots.Roots(), tdLocal)
	if instances == nil && o.handlers != nil {
		for _, h := range o.handlers {
			instances = append(instances, w.startInstance(t, h))
		}
	}
	if instances == nil {
		w.api = w.startAPI(t)
		instances = []string{w.api}
	}
	eps := make([]mesh.Endpoint, len(instances))
	for i, a := range instances {
		eps[i] = mesh.Endpoint{Address: a}
	}
	v := &mesh.View{Datacenter: "dc1", TrustDomain: tdLocal,
		Services:        map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: eps},
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{{Name: "api"}: {Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}},
		Exports:         map[mesh.ServiceKey][]string{{Name: "api"}: {"cluster-a"}},
		Peers:           map[string]mesh.Peer{"cluster-a": {Name: "cluster-a", TrustDomain: tdPeer, Roots: []string{w.peer.RootPEM()}}},
	}
	if o.view != nil {
		o.view(v)
	}
	src, err := config.StaticView(v)
	require.NoError(t, err)
	w.l7 = &l7.Counters{}
	w.term = &l7.Terminator{Source: src, Certs: w.gateway, Logger: slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Observer: w.l7}
	if o.term != nil {
		o.term(w.term)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	w.addr = ln.Addr().String()
	go func() { w.served <- w.term.Serve(ln) }()
	t.Cleanup(func() { w.term.Close() })
	w.counters = &gateway.Counters{}
	gw := &gateway.Server{Router: &routing.PeeringRouter{Source: src, Terminate: w.term.ServeConn}, Observer: w.counters}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	w.gatewayAddr = gln.Addr().String()
	go gw.Serve(gln)
	t.Cleanup(func() { gw.Close() })
	return w
}

// startAPI serves api's instance: mTLS with api's leaf, clients of the
// local cluster only, answering with what it saw.
func (w *world) startAPI(t *testing.T) string {
	t.Helper()
	return w.startInstance(t, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "%s %s client=%s xfcc=%s", r.Proto, r.URL.Path, r.TLS.PeerCertificates[0].URIs[0], r.Header.Get(sidecar.XFCCHeader))
	}))
}

// startInstance serves an instance of api with h: mTLS with api's leaf,
// clients of the local cluster only, HTTP/1.1 and HTTP/2.
func (w *world) startInstance(t *testing.T, h http.Handler) string {
	t.Helper()
	certs, err := w.local.Certs(sidecar.Identity{Service: "api", Datacenter: "dc1"})
	require.NoError(t, err)
	cfg := certs.ServerTLSConfig()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	srv := &http.Server{TLSConfig: cfg, Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// clientTLS is web of cluster-a's TLS to api's export, issued by ca.
func (w *world) clientTLS(t *testing.T, ca *sidecartest.CA, serverName string) *tls.Config {
	leaf, err := ca.Leaf(sidecar.Identity{TrustDomain: ca.TrustDomain, Datacenter: "dc1", Service: "web"}.String())
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(w.local.RootPEM()))
	return &tls.Config{ServerName: serverName, Certificates: []tls.Certificate{leaf}, RootCAs: roots, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := sidecar.VerifyPeerChain(raw, roots)
			if err == nil && (len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://"+tdLocal+"/gateway/mesh/dc/dc1") {
				err = fmt.Errorf("the server is %v, not the exporting gateway", leaf.URIs)
			}
			return err
		}}
}

var apiSNI = sni.PeeredServiceSNI("api", "", "", "cluster-a", tdLocal)

// get sends GET path over a new connection to the terminator with cfg and
// returns the status and body, or the error.
func (w *world) get(cfg *tls.Config, path string) (int, string, error) {
	return w.getVia(w.addr, cfg, path)
}

// getVia is get through addr.
func (w *world) getVia(addr string, cfg *tls.Config, path string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
		}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://api" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// The terminator completes a peer's mTLS with the gateway's own identity
// and opens its own to the instance, which sees the gateway's certificate
// and the peer's client in X-Forwarded-Client-Cert; and a peer's Envoy,
// which speaks HTTP/2 to such exports without ALPN, is understood by its
// preface.
func TestTerminatorServesAPeersRequests(t *testing.T) {
	w := newWorld(t, nil)
	code, body, err := w.get(w.clientTLS(t, w.peer, apiSNI), "/hello")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, body)
	assert.True(t, strings.HasPrefix(body, "HTTP/1.1 /hello client=spiffe://"+tdLocal+"/gateway/mesh/dc/dc1 xfcc=By=spiffe://"+tdLocal+"/gateway/mesh/dc/dc1;Hash="), body)
	assert.True(t, strings.HasSuffix(body, ";URI=spiffe://"+tdPeer+"/ns/default/dc/dc1/svc/web"), body)

	// The same through a gateway that hands the connection over in the
	// process: the gateway counts it forwarded once it closes, having
	// dialled nothing.
	code, body, err = w.getVia(w.gatewayAddr, w.clientTLS(t, w.peer, apiSNI), "/through-the-gateway")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, body)
	assert.True(t, strings.HasPrefix(body, "HTTP/1.1 /through-the-gateway client=spiffe://"+tdLocal+"/gateway/mesh/dc/dc1 "), body)
	require.Eventually(t, func() bool { return w.counters.Snapshot().Forwarded == 1 }, 10*time.Second, 5*time.Millisecond,
		"the gateway counts the connection forwarded")
	assert.Zero(t, w.counters.Snapshot().DialFailures)

	// HTTP/2 with prior knowledge: no ALPN, the preface, then SETTINGS.
	c, err := tls.Dial("tcp", w.addr, w.clientTLS(t, w.peer, apiSNI))
	require.NoError(t, err)
	defer c.Close()
	assert.Empty(t, c.ConnectionState().NegotiatedProtocol)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	f, err := fr.ReadFrame()
	require.NoError(t, err)
	assert.IsType(t, &http2.SettingsFrame{}, f, "the terminator answers HTTP/2")
}

// What the terminator refuses, each with its reason and without reaching
// the instance: a name it does not export, a client of another CA; and
// what it answers when the instance is not there.
func TestTerminatorRefusals(t *testing.T) {
	w := newWorld(t, nil)
	for _, tc := range []struct {
		what   string
		client *tls.Config
		logged string // the reason the terminator logs
	}{
		{"billing is not exported", w.clientTLS(t, w.peer, sni.PeeredServiceSNI("billing", "", "", "cluster-a", tdLocal)),
			`server name \"billing.default.default.cluster-a.external.` + tdLocal + `\" is not a service exported to a peer`},
		{"api is not exported to cluster-c", w.clientTLS(t, w.peer, sni.PeeredServiceSNI("api", "", "", "cluster-c", tdLocal)),
			`server name \"api.default.default.cluster-c.external.` + tdLocal + `\" is not a service exported to a peer`},
		{"a client of the local CA is not cluster-a's", w.clientTLS(t, w.local, apiSNI),
			`a client of peer \"cluster-a\": sidecar: the client's certificate does not chain to the mesh's roots`},
	} {
		_, _, err := w.get(tc.client, "/")
		assert.Error(t, err, tc.what)
		// The server logs after the client has seen its handshake fail.
		assert.Eventually(t, func() bool { return strings.Contains(w.logs.String(), tc.logged) }, 10*time.Second, 5*time.Millisecond,
			"%s: want %s in the log:\n%s", tc.what, tc.logged, w.logs.String())
	}
	// The same world serves a good client: the refusals were for their
	// reasons.
	code, _, err := w.get(w.clientTLS(t, w.peer, apiSNI), "/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)

	// An instance that is gone: 503, as Envoy's router says it, naming
	// the address.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := gone.Addr().String()
	gone.Close()
	w2 := newWorld(t, []string{addr})
	code, body, err := w2.get(w2.clientTLS(t, w2.peer, apiSNI), "/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: ")
	assert.Contains(t, body, addr)
	assert.Equal(t, 1, w2.l7.Snapshot().Refused[l7.ReasonConnectFailure])
}

// swapSource is a mesh.Source whose view a test replaces.
type swapSource struct{ v atomic.Pointer[mesh.View] }

func (s *swapSource) View() *mesh.View { return s.v.Load() }

// A connection open when its service stops being exported to the peer
// serves no more requests.
func TestTerminatorStopsServingAnExportThatEnded(t *testing.T) {
	w := newWorld(t, nil)
	src := &swapSource{}
	src.v.Store(w.term.Source.View())
	w.term.Source = src // before any request reads it
	cfg := w.clientTLS(t, w.peer, apiSNI)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", w.addr)
	}}}
	defer client.CloseIdleConnections()
	get := func() (int, string) {
		resp, err := client.Get("https://api/")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, _ := get()
	require.Equal(t, http.StatusOK, code)
	unexported := *src.View()
	unexported.Exports = map[mesh.ServiceKey][]string{}
	src.v.Store(&unexported)
	code, body := get() // on the same, kept-alive connection
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, `service "api" is no longer exported to peer "cluster-a"`)
}

// Close ends Serve and every connection, and leaves no goroutine behind.
func TestTerminatorCloses(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the world's cleanups
	w := newWorld(t, nil)
	cfg := w.clientTLS(t, w.peer, apiSNI)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", w.addr)
	}}}
	resp, err := client.Get("https://api/kept-alive")
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.NoError(t, w.term.Close())
	select {
	case err := <-w.served:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	_, err = client.Get("https://api/after-close")
	assert.Error(t, err)
	client.CloseIdleConnections()
}
