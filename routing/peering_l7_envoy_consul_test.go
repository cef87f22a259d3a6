package routing_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A peer's requests to B's http exports, through meshgate gateways on both
// sides, meet what Consul's gateway configures in Envoy (routing/l7's
// package doc and docs/peering.md list it): retries, timeouts, hash
// policies, outlier detection, the mesh entry's TLS, the header bound,
// websocket-only upgrades, CONNECT refused and the rapid-reset guard. One
// pair of clusters serves every subtest.
func TestPeersMeetEnvoysBehaviourAtL7Exports(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	b := consultest.Start(t, consultest.Options{})
	tdB := b.TrustDomain()
	peerThroughGateways(t, a)
	peerThroughGateways(t, b)
	counts := &l7.Counters{}
	gwA := startGateway(t, a, "")
	gwB := startL7Gateway(t, b, func(term *l7.Terminator) {
		term.Observer = counts
		term.RouteTimeout = 5 * time.Second // Envoy's 15 s, shortened through the same code
		term.Outlier = l7.OutlierDetection{Interval: 500 * time.Millisecond, BaseEjectionTime: 2 * time.Second}
	})
	consultest.WaitFor(t, eventually, "B's gateway to know B's servers", func() bool {
		_, reason := routeOf(&routing.PeeringRouter{Source: gwB.src}, sni.PeeringServerSNI("dc1", tdB))
		return reason == ""
	})
	establishPeering(t, a, b)

	// B's services, all http, all exported to cluster-a.
	inst := &l7Instances{}
	var retryBad, outlierBad atomic.Int64
	var outlierFailing atomic.Bool
	outlierFailing.Store(true)
	handler := func(serve func(w http.ResponseWriter, r *http.Request, next http.Handler)) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { serve(w, r, next) })
		}
	}
	services := []string{"retry", "slow", "sticky", "flaky", "api"}
	for _, s := range services {
		setEntries(t, b, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: s, Protocol: "http"})
	}
	inst.startWrapped(t, b, "retry", "retry-bad", nil, handler(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		retryBad.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	inst.start(t, b, "retry", "retry-good", nil)
	inst.startWrapped(t, b, "slow", "slow-1", nil, handler(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		<-r.Context().Done() // never answers
	}))
	for i := range 3 {
		inst.start(t, b, "sticky", fmt.Sprintf("sticky-%d", i+1), nil)
	}
	inst.startWrapped(t, b, "flaky", "flaky-bad", nil, handler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if outlierFailing.Load() {
			outlierBad.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		next.ServeHTTP(w, r)
	}))
	inst.start(t, b, "flaky", "flaky-good", nil)
	inst.startWrapped(t, b, "api", "api-1", nil, handler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		switch {
		case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(c, brw) // echo
		case r.URL.Path == "/flood":
			next.ServeHTTP(w, r) // recorded
			select {             // answer late: every reset is premature
			case <-r.Context().Done():
			case <-time.After(time.Second):
			}
		default:
			w.Header().Set("X-Saw-Upgrade", r.Header.Get("Upgrade"))
			next.ServeHTTP(w, r)
		}
	}))
	setEntries(t, b,
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "retry", Routes: []api.ServiceRoute{
			{Destination: &api.ServiceRouteDestination{NumRetries: 2, RetryOnStatusCodes: []uint32{503}}}}},
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "slow", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/configured"}},
				Destination: &api.ServiceRouteDestination{RequestTimeout: time.Second}}}},
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "sticky", LoadBalancer: &api.LoadBalancer{
			Policy: "ring_hash", HashPolicies: []api.HashPolicy{{Field: "header", FieldValue: "x-user"}}}})
	var exports []api.ExportedService
	for _, s := range services {
		exports = append(exports, api.ExportedService{Name: s, Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}})
	}
	setEntries(t, b, &api.ExportedServicesConfigEntry{Name: "default", Services: exports})

	gatewayB := "spiffe://" + tdB + "/gateway/mesh/dc/dc1"
	tlsFor := func(service string) *tls.Config {
		return peerClientTLS(t, a, "cluster-b", sni.PeeredServiceSNI(service, "", "", "cluster-a", tdB), gatewayB)
	}
	clients := map[string]*http.Client{}
	for _, s := range services {
		clients[s] = httpVia(gwA.addr, tlsFor(s), "http/1.1")
		t.Cleanup(clients[s].CloseIdleConnections)
	}
	get := func(service, path string, header http.Header) (int, string, http.Header, error) {
		req, _ := http.NewRequest("GET", "https://"+service+path, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := clients[service].Do(req)
		if err != nil {
			return 0, "", nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header, err
	}
	for _, s := range services {
		consultest.WaitFor(t, eventually, "a request to "+s+" through both gateways", func() bool {
			code, _, _, err := get(s, "/ready", nil)
			return err == nil && code != http.StatusBadGateway && code != 0
		})
	}

	t.Run("retries", func(t *testing.T) {
		// NumRetries 2 on 503 over a failing and a healthy instance: every
		// request succeeds, and each of the failing one's answers is
		// retried (until outlier detection takes it out).
		consultest.WaitFor(t, eventually, "retry's router to apply", func() bool {
			code, body, _, err := get("retry", "/", nil)
			return err == nil && code == http.StatusOK && body == "retry-good /" && retryBad.Load() > 0
		})
		for i := range 30 {
			code, body, _, err := get("retry", fmt.Sprintf("/%d", i), nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, code, body)
		}
		assert.NotZero(t, counts.Snapshot().Retried, "the failing instance is counted")
		retried := 0
		for _, n := range counts.Snapshot().Retried {
			retried += n
		}
		assert.Equal(t, retryBad.Load(), int64(retried), "each of its answers was retried")
	})

	t.Run("timeouts", func(t *testing.T) {
		for _, tc := range []struct{ path, what string }{
			{"/configured", "the route's RequestTimeout (1 s)"},
			{"/default", "Envoy's default (15 s, 5 s here)"},
		} {
			start := time.Now()
			code, body, _, err := get("slow", tc.path, nil)
			require.NoError(t, err)
			assert.Equal(t, http.StatusGatewayTimeout, code, tc.what)
			assert.Equal(t, "upstream request timeout", body, tc.what)
			t.Logf("%s: 504 after %v", tc.what, time.Since(start).Round(time.Millisecond))
		}
		assert.GreaterOrEqual(t, counts.Snapshot().Refused[l7.ReasonTimeout], 2)
	})

	t.Run("ring_hash", func(t *testing.T) {
		// 1,000 requests of 50 users: each user stays on one instance, and
		// the users spread over all three.
		consultest.WaitFor(t, eventually, "sticky's resolver to apply", func() bool {
			code, body, _, err := get("sticky", "/", http.Header{"X-User": {"probe"}})
			if err != nil || code != http.StatusOK {
				return false
			}
			for range 10 {
				_, again, _, err := get("sticky", "/", http.Header{"X-User": {"probe"}})
				if err != nil || again != body {
					return false
				}
			}
			return true
		})
		where := map[string]string{}
		used := map[string]int{}
		for i := range 1000 {
			user := fmt.Sprintf("user-%d", i%50)
			code, body, _, err := get("sticky", "/", http.Header{"X-User": {user}})
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, code)
			instance := strings.Fields(body)[0]
			if prev, ok := where[user]; ok {
				require.Equal(t, prev, instance, "%s moved", user)
			}
			where[user] = instance
			used[instance]++
		}
		t.Logf("1,000 requests of 50 users: %v", used)
		assert.Len(t, used, 3, "the users spread over every instance")
	})

	t.Run("outlier detection", func(t *testing.T) {
		// flaky-bad fails; after five failures in a row it is ejected, so
		// every request reaches flaky-good; healthy again, it is brought
		// back once its ejection (2 s here, 30 s in Envoy) is over.
		consultest.WaitFor(t, eventually, "flaky-bad to be ejected", func() bool {
			get("flaky", "/", nil)
			return counts.Snapshot().Ejected[instanceAddr(t, b, "flaky-bad")] > 0
		})
		assert.GreaterOrEqual(t, outlierBad.Load(), int64(5))
		before := outlierBad.Load()
		for range 10 {
			code, body, _, err := get("flaky", "/out", nil)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, "flaky-good /out", body)
		}
		assert.Equal(t, before, outlierBad.Load(), "not tried while out")
		outlierFailing.Store(false)
		consultest.WaitFor(t, eventually, "flaky-bad to be readmitted and serve", func() bool {
			_, body, _, err := get("flaky", "/back", nil)
			return err == nil && body == "flaky-bad /back"
		})
		assert.Positive(t, counts.Snapshot().Returned[instanceAddr(t, b, "flaky-bad")])
	})

	t.Run("header bound", func(t *testing.T) {
		code, _, _, err := get("api", "/", http.Header{"X-Big": {strings.Repeat("x", 100<<10)}})
		require.NoError(t, err)
		assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, code, "100 KiB of headers, over Envoy's 60 KiB")
		code, _, _, err = get("api", "/", http.Header{"X-Big": {strings.Repeat("x", 50<<10)}})
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, code, "50 KiB")
		assert.Positive(t, counts.Snapshot().Refused[l7.ReasonHeadersTooLarge])
	})

	raw := func(t *testing.T, proto string) (*tls.Conn, *bufio.Reader) {
		cfg := tlsFor("api")
		cfg.NextProtos = []string{proto}
		c, err := tls.Dial("tcp", gwA.addr, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(eventually))
		return c, bufio.NewReader(c)
	}

	t.Run("upgrades and CONNECT", func(t *testing.T) {
		c, br := raw(t, "http/1.1")
		io.WriteString(c, "GET /h2c HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "an h2c upgrade: served as HTTP/1.1")
		assert.Empty(t, resp.Header.Get("X-Saw-Upgrade"), "the instance sees no upgrade")

		c, br = raw(t, "http/1.1")
		io.WriteString(c, "CONNECT billing.internal:443 HTTP/1.1\r\nHost: billing.internal:443\r\n\r\n")
		resp, err = http.ReadResponse(br, nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "CONNECT")

		c, br = raw(t, "http/1.1")
		io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		resp, err = http.ReadResponse(br, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode, "a websocket upgrade still works")
		io.WriteString(c, "ping")
		echo := make([]byte, 4)
		_, err = io.ReadFull(br, echo)
		require.NoError(t, err)
		assert.Equal(t, "ping", string(echo))

		s := counts.Snapshot().Refused
		assert.Equal(t, 1, s[l7.ReasonH2CUpgrade])
		assert.Equal(t, 1, s[l7.ReasonConnect])
	})

	t.Run("rapid reset", func(t *testing.T) {
		c, br := raw(t, "h2")
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "api"}, {":path", "/flood"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		var flood bytes.Buffer
		flood.WriteString(http2.ClientPreface)
		ff := http2.NewFramer(&flood, nil)
		require.NoError(t, ff.WriteSettings())
		const streams = 20000
		for i := range uint32(streams) {
			require.NoError(t, ff.WriteHeaders(http2.HeadersFrameParam{StreamID: 2*i + 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true}))
			require.NoError(t, ff.WriteRSTStream(2*i+1, http2.ErrCodeCancel))
		}
		before := countPath(inst, "/flood")
		go c.Write(flood.Bytes())
		fr := http2.NewFramer(nil, br)
		var goAway *http2.GoAwayFrame
		for goAway == nil {
			f, err := fr.ReadFrame()
			require.NoError(t, err, "the connection ended without GOAWAY")
			goAway, _ = f.(*http2.GoAwayFrame)
		}
		assert.Equal(t, http2.ErrCodeEnhanceYourCalm, goAway.ErrCode)
		assert.Equal(t, "too_many_premature_resets", string(goAway.DebugData()))
		for {
			if _, err := fr.ReadFrame(); err != nil {
				break // and the connection closes
			}
		}
		reached := countPath(inst, "/flood") - before
		t.Logf("%d of %d reset requests reached the instance", reached, streams)
		assert.LessOrEqual(t, reached, l7.PrematureResetTotalStreams/2)
		assert.Equal(t, 1, counts.Snapshot().Refused[l7.ReasonPrematureResets])
	})

	t.Run("mesh TLS", func(t *testing.T) {
		// TLS.Incoming.TLSMinVersion TLSv1_3: a TLS 1.2 peer client is
		// refused, a TLS 1.3 one served. Then back.
		set := func(incoming *api.MeshDirectionalTLSConfig) {
			mesh := &api.MeshConfigEntry{Peering: &api.PeeringMeshConfig{PeerThroughMeshGateways: true}}
			if incoming != nil {
				mesh.TLS = &api.MeshTLSConfig{Incoming: incoming}
			}
			_, _, err := b.Client.ConfigEntries().Set(mesh, nil)
			require.NoError(t, err)
		}
		set(&api.MeshDirectionalTLSConfig{TLSMinVersion: "TLSv1_3"})
		t.Cleanup(func() { set(nil) })
		tls12 := tlsFor("api")
		tls12.MaxVersion = tls.VersionTLS12
		old := httpVia(gwA.addr, tls12, "http/1.1")
		t.Cleanup(old.CloseIdleConnections)
		consultest.WaitFor(t, eventually, "a TLS 1.2 client to be refused", func() bool {
			old.CloseIdleConnections()
			_, err := old.Get("https://api/tls12")
			return err != nil
		})
		clients["api"].CloseIdleConnections()
		code, _, _, err := get("api", "/tls13", nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, code, "a TLS 1.3 client is served")
		assert.Positive(t, counts.Snapshot().Refused[l7.ReasonHandshake])
	})
}

// countPath counts the requests for path that inst's instances saw.
func countPath(inst *l7Instances, path string) int {
	n := 0
	for _, r := range inst.requests() {
		if r.path == path {
			n++
		}
	}
	return n
}

// instanceAddr is the address of the instance registered as id.
func instanceAddr(t *testing.T, agent *consultest.Agent, id string) string {
	svc, _, err := agent.Client.Agent().Service(id, nil)
	require.NoError(t, err)
	return net.JoinHostPort(svc.Address, fmt.Sprint(svc.Port))
}
