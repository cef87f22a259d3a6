package l7_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// What the terminator does as Consul's gateway's Envoy does, in the
// process, without Consul: peering/l7_consul_test.go runs the same through
// two real clusters.

// client is an HTTP/1.1 (or, with h2, HTTP/2) client of the world's
// terminator, as web of cluster-a.
func (w *world) client(t *testing.T, h2 bool) *http.Client {
	cfg := w.clientTLS(t, w.peer, apiSNI)
	tr := &http.Transport{Protocols: new(http.Protocols), DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		c := cfg.Clone()
		c.NextProtos = []string{"http/1.1"}
		if h2 {
			c.NextProtos = []string{"h2"}
		}
		return (&tls.Dialer{Config: c}).DialContext(ctx, "tcp", w.addr)
	}}
	if h2 {
		tr.Protocols.SetHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	c := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// do sends req and returns the status, body and headers.
func do(t *testing.T, c *http.Client, req *http.Request) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), resp.Header
}

func newRequest(t *testing.T, method, path string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, "https://api"+path, body)
	require.NoError(t, err)
	return req
}

// named answers with its name, counting what it serves.
type named struct {
	name string
	n    atomic.Int64
}

func (h *named) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.n.Add(1)
	io.Copy(io.Discard, r.Body)
	fmt.Fprint(w, h.name)
}

// rawTLS is a TLS connection to the terminator, as web of cluster-a, with
// ALPN next.
func (w *world) rawTLS(t *testing.T, next ...string) *tls.Conn {
	cfg := w.clientTLS(t, w.peer, apiSNI)
	cfg.NextProtos = next
	c, err := tls.Dial("tcp", w.addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// Only websocket upgrades: an h2c upgrade is dropped and the request
// served as HTTP/1.1; another upgrade is refused (403); CONNECT finds no
// route (404), over HTTP/1.1 and HTTP/2; a websocket upgrade becomes a
// tunnel to the instance. Each refusal is counted.
func TestUpgradesAndConnectAreRefusedAsEnvoyRefusesThem(t *testing.T) {
	var sawUpgrade atomic.Value
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		sawUpgrade.Store(r.Header.Get("Upgrade") + "|" + r.Header.Get("Connection") + "|" + r.Header.Get("Http2-Settings"))
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			c, brw, err := http.NewResponseController(rw).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(c, brw) // echo
			return
		}
		fmt.Fprint(rw, "plain")
	})}})

	send := func(c net.Conn, request string) *http.Response {
		t.Helper()
		_, err := io.WriteString(c, request)
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		return resp
	}
	resp := send(w.rawTLS(t, "http/1.1"), "GET /h2c HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "served as HTTP/1.1")
	assert.Equal(t, "plain", string(body))
	assert.Equal(t, "||", sawUpgrade.Load(), "the instance sees no upgrade")

	resp = send(w.rawTLS(t, "http/1.1"), "GET / HTTP/1.1\r\nHost: api\r\nConnection: upgrade\r\nUpgrade: tls/1.3\r\n\r\n")
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.True(t, resp.Close, "and the connection closes")

	resp = send(w.rawTLS(t, "http/1.1"), "CONNECT billing.internal:443 HTTP/1.1\r\nHost: billing.internal:443\r\n\r\n")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	// HTTP/2 CONNECT naming another service.
	c := w.rawTLS(t, "h2")
	_, err := io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "billing.internal:443"})
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	status := ""
	for status == "" {
		f, err := fr.ReadFrame()
		require.NoError(t, err)
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == 1 {
			status = h.PseudoValue("status")
		}
	}
	assert.Equal(t, "404", status)

	// A websocket upgrade works: 101, then the bytes go both ways.
	ws := w.rawTLS(t, "http/1.1")
	br := bufio.NewReader(ws)
	_, err = io.WriteString(ws, "GET /chat HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	require.NoError(t, err)
	resp, err = http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	_, err = io.WriteString(ws, "ping")
	require.NoError(t, err)
	echo := make([]byte, 4)
	_, err = io.ReadFull(br, echo)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(echo))

	assert.Equal(t, map[string]int{l7.ReasonH2CUpgrade: 1, l7.ReasonUpgrade: 1, l7.ReasonConnect: 2}, w.l7.Snapshot().Refused)
}

// Request headers are bounded at Envoy's 60 KiB: a request over it is
// answered 431, whether the terminator's check or Go's own parser refuses
// it, and counted; one under it is served.
func TestRequestHeadersAreBoundedAsEnvoyBoundsThem(t *testing.T) {
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{&named{name: "api"}}})
	c := w.client(t, false)
	for _, tc := range []struct {
		size int
		want int
	}{{50 << 10, http.StatusOK}, {62 << 10, http.StatusRequestHeaderFieldsTooLarge}, {100 << 10, http.StatusRequestHeaderFieldsTooLarge}} {
		req := newRequest(t, "GET", "/", nil)
		req.Header.Set("X-Big", strings.Repeat("x", tc.size))
		code, _, _ := do(t, c, req)
		assert.Equal(t, tc.want, code, "%d KiB of headers", tc.size>>10)
	}
	// Over HTTP/2 too, from a client that ignores the bound the server
	// advertises: Go's HTTP/2 server answers 431 itself to a list of
	// headers past it (here 2,000 copies of one small header, which HPACK
	// sends as one byte each), and ends the connection (GOAWAY
	// COMPRESSION_ERROR) for a single value past it.
	for _, tc := range []struct {
		fields, size int
	}{{2000, 16}, {1, 62 << 10}} {
		c := w.rawTLS(t, "h2")
		_, err := io.WriteString(c, http2.ClientPreface)
		require.NoError(t, err)
		fr := http2.NewFramer(c, c)
		require.NoError(t, fr.WriteSettings())
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "api"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		for range tc.fields {
			enc.WriteField(hpack.HeaderField{Name: "x-many", Value: strings.Repeat("x", tc.size)})
		}
		b := block.Bytes()
		first := min(len(b), 16<<10)
		require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:first], EndStream: true, EndHeaders: first == len(b)}))
		for b = b[first:]; len(b) > 0; {
			k := min(len(b), 16<<10)
			require.NoError(t, fr.WriteContinuation(1, k == len(b), b[:k]))
			b = b[k:]
		}
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		answer := ""
		for answer == "" {
			f, err := fr.ReadFrame()
			require.NoError(t, err)
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				answer = f.PseudoValue("status")
			case *http2.GoAwayFrame:
				answer = f.ErrCode.String()
			}
		}
		if tc.fields > 1 {
			assert.Equal(t, "431", answer, "%d headers over HTTP/2", tc.fields)
		} else {
			assert.Equal(t, "COMPRESSION_ERROR", answer, "one header of %d KiB over HTTP/2", tc.size>>10)
		}
	}
	assert.Eventually(t, func() bool {
		s := w.l7.Snapshot().Refused
		return s[l7.ReasonHeadersTooLarge] == 3 && s[l7.ReasonHTTP2Error] == 1
	}, 10*time.Second, 5*time.Millisecond, "each counted: %v", w.l7.Snapshot().Refused)
}

// An HTTP/2 connection that opens and resets streams as fast as it can
// (CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM at its 250th premature
// reset, and at most those 250 requests reach the instance.
func TestRapidResetEndsInGoAway(t *testing.T) {
	inst := &named{name: "api"}
	slow := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		inst.n.Add(1)
		select { // answer late: every reset is premature
		case <-r.Context().Done():
		case <-time.After(time.Second):
		}
	})
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{slow}})
	c := w.rawTLS(t, "h2")
	fr := http2.NewFramer(c, c)
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
		id := 2*i + 1
		require.NoError(t, ff.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true}))
		require.NoError(t, ff.WriteRSTStream(id, http2.ErrCodeCancel))
	}
	go c.Write(flood.Bytes()) // fails once the terminator closes
	var goAway *http2.GoAwayFrame
	for goAway == nil {
		f, err := fr.ReadFrame()
		require.NoError(t, err, "the connection ended without GOAWAY")
		goAway, _ = f.(*http2.GoAwayFrame)
	}
	assert.Equal(t, http2.ErrCodeEnhanceYourCalm, goAway.ErrCode)
	assert.Equal(t, "too_many_premature_resets", string(goAway.DebugData()))
	assert.LessOrEqual(t, goAway.LastStreamID, uint32(2*250-1), "the server saw no stream past the 250th")
	// The connection closes after it.
	for {
		if _, err := fr.ReadFrame(); err != nil {
			break
		}
	}
	assert.LessOrEqual(t, inst.n.Load(), int64(l7.PrematureResetTotalStreams/2), "requests that reached the instance")
	t.Logf("%d of %d requests reached the instance", inst.n.Load(), streams)
	assert.Equal(t, 1, w.l7.Snapshot().Refused[l7.ReasonPrematureResets])
}

// A route's retries as Envoy's: a 503 retried on the next instance; a body
// replayed whole, up to the bound and not past it.
func TestRetriesFollowTheRoute(t *testing.T) {
	failing, healthy := &named{name: "failing"}, &named{name: "healthy"}
	fail := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		failing.n.Add(1)
		io.Copy(io.Discard, r.Body)
		rw.WriteHeader(http.StatusServiceUnavailable)
	})
	route := func(v *mesh.View) {
		v.Routers = map[mesh.EntryKey]*api.ServiceRouterConfigEntry{{Name: "api"}: {Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
			{Destination: &api.ServiceRouteDestination{NumRetries: 2, RetryOnStatusCodes: []uint32{503}}}}}}
	}
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{fail, healthy}, view: route})
	c := w.client(t, false)
	for i := range 20 {
		code, body, _ := do(t, c, newRequest(t, "GET", fmt.Sprintf("/%d", i), nil))
		require.Equal(t, http.StatusOK, code, body)
		assert.Equal(t, "healthy", body)
	}
	s := w.l7.Snapshot()
	assert.NotZero(t, failing.n.Load())
	assert.Equal(t, int(failing.n.Load()), sum(s.Retried), "each answer of the failing instance was retried")
	assert.Equal(t, 1, sum(s.Ejected), "five 503 in a row eject it")
	assert.LessOrEqual(t, failing.n.Load(), int64(5), "and it is not tried again while out")

	// One instance that fails the first attempt of each request after
	// reading its body: a body under the bound is sent again whole; one
	// over it is not retried.
	var attempts atomic.Int64
	flaky := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if attempts.Add(1)%2 == 1 {
			rw.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(rw, "%d", len(b))
	})
	w = newWorldWith(t, worldOptions{handlers: []http.Handler{flaky}, view: route, term: func(tm *l7.Terminator) {
		tm.Outlier = l7.OutlierDetection{Consecutive5xx: 1000}
	}})
	c = w.client(t, false)
	code, body, _ := do(t, c, newRequest(t, "POST", "/small", bytes.NewReader(make([]byte, 100<<10))))
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, fmt.Sprint(100<<10), body, "the whole body, again")
	attempts.Store(0)
	code, _, _ = do(t, c, newRequest(t, "POST", "/big", bytes.NewReader(make([]byte, l7.MaxReplayBytes+1))))
	assert.Equal(t, http.StatusServiceUnavailable, code, "past the bound: the instance's 503, not retried")
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// A hung instance: 504 after the route's RequestTimeout, after the default
// (shortened here) with none, whatever timeout the peer's headers ask for;
// a gRPC client gets UNAVAILABLE; a stream idle past the route's
// IdleTimeout gets 408.
func TestTimeoutsAsEnvoys(t *testing.T) {
	hang := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{hang}, view: func(v *mesh.View) {
		v.Routers = map[mesh.EntryKey]*api.ServiceRouterConfigEntry{{Name: "api"}: {Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/short"}}, Destination: &api.ServiceRouteDestination{RequestTimeout: 300 * time.Millisecond}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/idle"}}, Destination: &api.ServiceRouteDestination{RequestTimeout: -1, IdleTimeout: 300 * time.Millisecond}},
		}}}
	}, term: func(tm *l7.Terminator) { tm.RouteTimeout = time.Second }})
	c := w.client(t, false)
	for _, path := range []string{"/short", "/default"} {
		start := time.Now()
		req := newRequest(t, "GET", path, nil)
		req.Header.Set("X-Envoy-Upstream-Rq-Timeout-Ms", "0") // not honoured
		code, body, _ := do(t, c, req)
		assert.Equal(t, http.StatusGatewayTimeout, code, path)
		assert.Equal(t, "upstream request timeout", body)
		assert.Less(t, time.Since(start), 15*time.Second, path)
	}
	code, body, _ := do(t, c, newRequest(t, "GET", "/idle", nil))
	assert.Equal(t, http.StatusRequestTimeout, code, w.logs.String())
	assert.Equal(t, "stream timeout", body)

	req := newRequest(t, "POST", "/short/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	req.Header.Set("Content-Type", "application/grpc")
	code, _, h := do(t, w.client(t, true), req)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "14", h.Get("Grpc-Status"), "UNAVAILABLE, as Envoy maps 504")
	assert.Equal(t, "upstream request timeout", h.Get("Grpc-Message"))
	assert.Equal(t, map[string]int{l7.ReasonTimeout: 3, l7.ReasonIdleTimeout: 1}, w.l7.Snapshot().Refused)
}

// ring_hash by a header: each user stays on one instance, and the users
// spread over all of them; a cookie policy with a TTL sets the cookie it
// then hashes.
func TestHashPoliciesPinRequests(t *testing.T) {
	insts := []*named{{name: "a"}, {name: "b"}, {name: "c"}}
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{insts[0], insts[1], insts[2]}, view: func(v *mesh.View) {
		v.Resolvers = map[mesh.EntryKey]*api.ServiceResolverConfigEntry{{Name: "api"}: {Kind: api.ServiceResolver, Name: "api",
			LoadBalancer: &api.LoadBalancer{Policy: "ring_hash", HashPolicies: []api.HashPolicy{
				{Field: "header", FieldValue: "x-user", Terminal: true},
				{Field: "cookie", FieldValue: "sticky", CookieConfig: &api.CookieConfig{TTL: time.Hour, Path: "/"}}}}}}
	}})
	c := w.client(t, false)
	where := map[string]string{}
	for i := range 300 {
		user := fmt.Sprintf("user-%d", i%30)
		req := newRequest(t, "GET", "/", nil)
		req.Header.Set("X-User", user)
		_, body, _ := do(t, c, req)
		if prev, ok := where[user]; ok {
			require.Equal(t, prev, body, "%s moved", user)
		}
		where[user] = body
	}
	for _, inst := range insts {
		assert.NotZero(t, inst.n.Load(), "30 users reach every instance")
	}
	_, first, h := do(t, c, newRequest(t, "GET", "/", nil))
	cookie := h.Get("Set-Cookie")
	require.Regexp(t, `^sticky="[0-9a-f]{16}"; Max-Age=3600; Path=/; HttpOnly$`, cookie)
	value := strings.TrimSuffix(strings.TrimPrefix(strings.Split(cookie, ";")[0], `sticky="`), `"`)
	for range 20 {
		req := newRequest(t, "GET", "/", nil)
		req.AddCookie(&http.Cookie{Name: "sticky", Value: value})
		_, body, h := do(t, c, req)
		assert.Equal(t, first, body, "the cookie holds the instance")
		assert.Empty(t, h.Get("Set-Cookie"), "and is not set again")
	}
}

// The mesh entry's TLS.Incoming holds for the peer's handshake and
// TLS.Outgoing for the dial to the instance.
func TestMeshTLSSettingsApply(t *testing.T) {
	var version atomic.Uint32
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		version.Store(uint32(r.TLS.Version))
	})}, view: func(v *mesh.View) {
		v.Mesh = &api.MeshConfigEntry{TLS: &api.MeshTLSConfig{
			Incoming: &api.MeshDirectionalTLSConfig{TLSMinVersion: "TLSv1_3"},
			Outgoing: &api.MeshDirectionalTLSConfig{TLSMaxVersion: "TLSv1_2", CipherSuites: []string{"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"}}}}
	}})
	old := w.clientTLS(t, w.peer, apiSNI)
	old.MaxVersion = tls.VersionTLS12
	_, _, err := w.get(old, "/")
	assert.Error(t, err, "a TLS 1.2 client is refused")
	assert.Eventually(t, func() bool { return w.l7.Snapshot().Refused[l7.ReasonHandshake] == 1 }, 10*time.Second, 5*time.Millisecond)
	code, _, err := w.get(w.clientTLS(t, w.peer, apiSNI), "/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, "a TLS 1.3 one is served")
	assert.Equal(t, uint32(tls.VersionTLS12), version.Load(), "and the instance is dialled with TLS 1.2 at most")
}

// An instance ejected after five failures in a row comes back once its
// ejection time has passed (shortened here).
func TestOutlierEjectsAndReadmits(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	var served sync.Map
	flaky := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		served.Store(r.URL.Path, true)
		if failing.Load() {
			rw.WriteHeader(http.StatusInternalServerError)
		}
	})
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{flaky}, term: func(tm *l7.Terminator) {
		tm.Outlier = l7.OutlierDetection{Interval: 50 * time.Millisecond, BaseEjectionTime: 200 * time.Millisecond}
	}})
	c := w.client(t, false)
	for i := range 5 {
		code, _, _ := do(t, c, newRequest(t, "GET", fmt.Sprintf("/fail/%d", i), nil))
		assert.Equal(t, http.StatusInternalServerError, code)
	}
	code, body, _ := do(t, c, newRequest(t, "GET", "/while-out", nil))
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "no healthy upstream", body, "the only instance is out: the exports' panic threshold is 0")
	_, reached := served.Load("/while-out")
	assert.False(t, reached)
	failing.Store(false)
	require.Eventually(t, func() bool {
		code, _, _ := do(t, c, newRequest(t, "GET", "/back", nil))
		return code == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond, "readmitted")
	s := w.l7.Snapshot()
	assert.Equal(t, 1, sum(s.Ejected))
	assert.Equal(t, 1, sum(s.Returned))
}

// A field the terminator cannot apply (here values Consul itself would
// refuse, as a file may hold) is named in one warning per view, and
// Envoy's default applies.
func TestUnappliedFieldsAreNamedOnce(t *testing.T) {
	w := newWorldWith(t, worldOptions{handlers: []http.Handler{&named{name: "api"}}, view: func(v *mesh.View) {
		v.Resolvers = map[mesh.EntryKey]*api.ServiceResolverConfigEntry{{Name: "api"}: {Kind: api.ServiceResolver, Name: "api",
			LoadBalancer: &api.LoadBalancer{Policy: "least_conn"}}}
		v.Routers = map[mesh.EntryKey]*api.ServiceRouterConfigEntry{{Name: "api"}: {Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
			{Destination: &api.ServiceRouteDestination{RetryOn: []string{"sometimes"}}}}}}
		v.Mesh = &api.MeshConfigEntry{TLS: &api.MeshTLSConfig{Incoming: &api.MeshDirectionalTLSConfig{TLSMinVersion: "TLSv2"}}}
	}})
	c := w.client(t, false)
	for range 3 {
		code, body, _ := do(t, c, newRequest(t, "GET", "/", nil))
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, "api", body, "round robin, no retries, TLS 1.2 and up")
	}
	logs := w.logs.String()
	assert.Equal(t, 1, strings.Count(logs, "set but not applied"), logs)
	for _, want := range []string{
		`mesh TLS.Incoming.TLSMinVersion \"TLSv2\" is not a TLS version Consul accepts`,
		`service-resolver \"api\": LoadBalancer: unsupported load balancer policy \"least_conn\": round_robin`,
		`service-router \"api\": Routes[0]: RetryOn \"sometimes\" is not a retry condition Consul accepts: no retries`,
	} {
		assert.Contains(t, logs, want)
	}
}
