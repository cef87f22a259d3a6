package gatewaymetrics_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var _ l7.Observer = (*gatewaymetrics.L7)(nil)

const (
	l7Local = "bbbbbbbb-0000-4000-8000-000000000002.consul" // the exporting cluster
	l7Peer  = "aaaaaaaa-0000-4000-8000-000000000001.consul" // cluster-a, its consumer
)

// swapSource is a mesh.Source whose view a test replaces.
type swapSource struct{ v atomic.Pointer[mesh.View] }

func (s *swapSource) View() *mesh.View { return s.v.Load() }

func (s *swapSource) set(t *testing.T, v *mesh.View) {
	st, err := config.StaticView(v)
	require.NoError(t, err)
	s.v.Store(st.View())
}

// Real requests of a peer through a real terminator of an http export,
// whose service-router retries 503s, to two instances of which one always
// answers 503, show in the terminator's metrics as exactly what the
// instances saw: each failing answer retried, one ejection after five in
// a row, the refusals by reason (a CONNECT, an upgrade other than
// websocket, a client of a CA the gateway does not trust); and the
// ejected instance leaving the catalog is ejected no more. With Envoy on,
// the exported cluster's retry and ejection statistics carry the labels
// the gateway's other series of that cluster carry.
func TestL7MetricsEqualTheRequests(t *testing.T) {
	local, err := sidecartest.NewCA(l7Local)
	require.NoError(t, err)
	peer, err := sidecartest.NewCA(l7Peer)
	require.NoError(t, err)
	stranger, err := sidecartest.NewCA("cccccccc-0000-4000-8000-000000000003.consul")
	require.NoError(t, err)
	roots, err := local.Certs(sidecar.Identity{Service: "roots-only", Datacenter: "dc1"})
	require.NoError(t, err)
	leaf, err := local.Leaf("spiffe://" + l7Local + "/gateway/mesh/dc/dc1")
	require.NoError(t, err)
	certs := sidecar.StaticCerts(leaf, roots.Roots(), l7Local)

	instance := func(h http.Handler) string {
		c, err := local.Certs(sidecar.Identity{Service: "api", Datacenter: "dc1"})
		require.NoError(t, err)
		srv := &http.Server{TLSConfig: c.ServerTLSConfig(), Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go srv.ServeTLS(ln, "", "")
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	var failed, served atomic.Int64
	failing := instance(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		failed.Add(1)
		rw.WriteHeader(http.StatusServiceUnavailable)
	}))
	healthy := instance(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprint(rw, "healthy")
	}))
	view := func(instances ...string) *mesh.View {
		eps := make([]mesh.Endpoint, len(instances))
		for i, a := range instances {
			eps[i] = mesh.Endpoint{Address: a}
		}
		return &mesh.View{Datacenter: "dc1", TrustDomain: l7Local,
			Services:        map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: eps},
			ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{{Name: "api"}: {Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}},
			Routers: map[mesh.EntryKey]*api.ServiceRouterConfigEntry{{Name: "api"}: {Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
				{Destination: &api.ServiceRouteDestination{NumRetries: 2, RetryOnStatusCodes: []uint32{503}}}}}},
			Exports: map[mesh.ServiceKey][]string{{Name: "api"}: {"cluster-a"}},
			Peers:   map[string]mesh.Peer{"cluster-a": {Name: "cluster-a", TrustDomain: l7Peer, Roots: []string{peer.RootPEM()}}},
		}
	}
	src := &swapSource{}
	src.set(t, view(failing, healthy))

	envoy := &gatewaymetrics.Envoy{Service: "gw", Datacenter: "dc1"}
	m := gatewaymetrics.NewL7(gatewaymetrics.Options{Envoy: envoy})
	// The gateway's own metrics, for the labels of the exported cluster.
	envoy.Clusters = func() []gatewaymetrics.Cluster { return gatewaymetrics.MeshClusters(src.View(), nil) }
	gm := gatewaymetrics.NewWith(gatewaymetrics.Options{Envoy: envoy})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, gm)
	admin := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer admin.Close()

	term := &l7.Terminator{Source: src, Certs: certs, Observer: m, Logger: slog.New(slog.DiscardHandler),
		Outlier: l7.OutlierDetection{BaseEjectionTime: time.Hour}} // out for the whole test
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go term.Serve(ln)
	defer term.Close()

	exportSNI := sni.PeeredServiceSNI("api", "", "", "cluster-a", l7Local)
	clientTLS := func(ca *sidecartest.CA) *tls.Config {
		leaf, err := ca.Leaf(sidecar.Identity{TrustDomain: ca.TrustDomain, Datacenter: "dc1", Service: "web"}.String())
		require.NoError(t, err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(local.RootPEM()))
		return &tls.Config{ServerName: exportSNI, Certificates: []tls.Certificate{leaf}, NextProtos: []string{"http/1.1"},
			InsecureSkipVerify: true, // the gateway's certificate names it by URI: checked below
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				_, err := sidecar.VerifyPeerChain(raw, pool)
				return err
			}}
	}
	cfg := clientTLS(peer)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", ln.Addr().String())
		}}}
	defer client.CloseIdleConnections()
	get := func(path string) int {
		resp, err := client.Get("https://api" + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	raw := func(cfg *tls.Config, request string) (int, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, request); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	for i := range 20 {
		require.Equal(t, http.StatusOK, get(fmt.Sprintf("/%d", i)))
	}
	require.Equal(t, int64(20), served.Load())
	require.Equal(t, int64(5), failed.Load(), "five 503 in a row eject the failing instance")
	code, err := raw(cfg, "CONNECT billing.internal:443 HTTP/1.1\r\nHost: billing.internal:443\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, code)
	code, err = raw(cfg, "GET / HTTP/1.1\r\nHost: api\r\nConnection: upgrade\r\nUpgrade: tls/1.3\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, http.StatusForbidden, code)
	_, err = raw(clientTLS(stranger), "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
	require.Error(t, err, "a client of a CA the gateway does not trust")

	target := sni.ServiceSNI("api", "", "", "", "dc1", l7Local)
	var f map[string]*dto.MetricFamily
	require.Eventually(t, func() bool { // the handshake's refusal is counted as the connection ends
		f = scrape(t, admin.URL)
		v, _ := sum(f, "meshgate_l7_refused_total", map[string]string{"reason": l7.ReasonHandshake})
		return v == 1
	}, 30*time.Second, 20*time.Millisecond)
	refused := map[string]float64{}
	for _, s := range f["meshgate_l7_refused_total"].GetMetric() {
		refused[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
	}
	assert.Equal(t, map[string]float64{l7.ReasonConnect: 1, l7.ReasonUpgrade: 1, l7.ReasonHandshake: 1}, refused)
	assert.Equal(t, 5.0, value(t, f, "meshgate_l7_retries_total", map[string]string{"sni": target, "target": failing}),
		"each answer of the failing instance retried")
	_, n := sum(f, "meshgate_l7_retries_total", map[string]string{"target": healthy})
	assert.Zero(t, n, "the healthy instance's answers are never retried")
	assert.Equal(t, 1.0, value(t, f, "meshgate_l7_ejections_total", map[string]string{"sni": target, "target": failing}))
	assert.Equal(t, 1.0, value(t, f, "meshgate_l7_ejected_instances", map[string]string{"sni": target}))

	// Envoy's statistics of the exported cluster, labelled as the
	// gateway's own series of that cluster are.
	exported := map[string]string{"envoy_cluster_name": "exported~api"}
	membership := labelsOf(t, f, "envoy_cluster_membership_total", exported)
	for name, want := range map[string]float64{
		"envoy_cluster_upstream_rq_retry":                          5,
		"envoy_cluster_outlier_detection_ejections_enforced_total": 1,
		"envoy_cluster_outlier_detection_ejections_active":         1,
	} {
		assert.Equal(t, membership, labelsOf(t, f, name, exported), name)
		v, _ := sum(f, name, exported)
		assert.Equal(t, want, v, name)
	}
	assert.Equal(t, "gw", membership["local_cluster"])
	assert.Equal(t, "api", membership["consul_destination_service"])

	// The failing instance leaves the catalog while ejected: it is
	// counted out at the next request, as Envoy counts a removed host.
	src.set(t, view(healthy))
	require.Equal(t, http.StatusOK, get("/after"))
	f = scrape(t, admin.URL)
	assert.Equal(t, 0.0, value(t, f, "meshgate_l7_ejected_instances", map[string]string{"sni": target}))
	assert.Equal(t, 1.0, value(t, f, "meshgate_l7_ejections_total", map[string]string{"sni": target, "target": failing}))
	v, _ := sum(f, "envoy_cluster_outlier_detection_ejections_active", exported)
	assert.Zero(t, v)
	v, _ = sum(f, "envoy_cluster_outlier_detection_ejections_enforced_total", exported)
	assert.Equal(t, 1.0, v)
}

// labelsOf returns the labels of the one series of the family whose labels
// include match.
func labelsOf(t *testing.T, f map[string]*dto.MetricFamily, name string, match map[string]string) map[string]string {
	t.Helper()
	var found []map[string]string
	for _, m := range f[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range match {
			ok = ok && got[k] == v
		}
		if ok {
			found = append(found, got)
		}
	}
	names := make([]string, 0, len(f))
	for n := range f {
		names = append(names, n)
	}
	sort.Strings(names)
	require.Len(t, found, 1, "%s%v among %s", name, match, strings.Join(names, " "))
	return found[0]
}
