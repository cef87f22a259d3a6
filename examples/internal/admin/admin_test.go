package admin_test

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/examples/internal/admin"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const td = "11111111-2222-3333-4444-555555555555.consul"

func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	return ln.Addr().String()
}

// records keeps the gateway's connection records.
type records struct {
	gateway.Counters
	mu  sync.Mutex
	all []gateway.ConnRecord
}

func (r *records) Closed(rec *gateway.ConnRecord) {
	r.mu.Lock()
	r.all = append(r.all, *rec)
	r.mu.Unlock()
}

func (r *records) last(t *testing.T, n int) gateway.ConnRecord {
	require.Eventually(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.all) >= n }, 30*time.Second, 10*time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all[n-1]
}

// serve starts the admin endpoint and returns its base URL.
func serve(t *testing.T, e admin.Endpoint) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	if e.Registry == nil {
		e.Registry = prometheus.NewRegistry()
	}
	stop, err := admin.Serve(addr, e, slogDiscard(), "test")
	require.NoError(t, err)
	t.Cleanup(stop)
	return "http://" + addr
}

func get(t *testing.T, url string, into any) int {
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if into != nil {
		require.NoError(t, json.Unmarshal(body, into), string(body))
	}
	return resp.StatusCode
}

// /explain says, for a local service, another datacenter, a peer's
// service, an unknown name and another trust domain, what the gateway's
// own Router does: each name is then sent through the gateway, and the
// connection's record has the route, kind and target, or the refusal's
// reason, the explanation gave. An ejected target shows as ejected.
func TestExplainIsWhatTheRouterDoes(t *testing.T) {
	api, dc2, peer := echoServer(t), echoServer(t), echoServer(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	peerSNI := "web.default.default.us.external.22222222-3333-4444-5555-666666666666.consul"
	v := &mesh.View{Datacenter: "dc1", TrustDomain: td,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api", Namespace: "default", Partition: "default", Datacenter: "dc1"}:  {{Address: api}},
			{Name: "gone", Namespace: "default", Partition: "default", Datacenter: "dc1"}: {{Address: deadAddr}},
		},
		Gateways: map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2", Partition: "default"}: {{WAN: dc2}}},
		Peers: map[string]mesh.Peer{"p1": {Name: "p1", TrustDomain: "22222222-3333-4444-5555-666666666666.consul", NameAtPeer: "us",
			Imports: []mesh.ImportedService{{Name: "web", SNI: peerSNI, Gateways: []string{peer}}}}},
	}
	src, err := config.StaticView(v)
	require.NoError(t, err)
	var rec records
	s := &gateway.Server{Router: routing.New(src), Observer: &rec}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	base := serve(t, admin.Endpoint{Explain: &admin.Explainer{Router: s.Router, Ejected: s.Ejected}})

	conns := 0
	for _, c := range []struct {
		name, kind, layer, reason string
	}{
		{sni.ServiceSNI("api", "", "", "", "dc1", td), routing.RouteService, "mesh", ""},
		{sni.ServiceSNI("web", "", "", "", "dc2", td), routing.RouteGateway, "mesh", ""},
		{peerSNI, routing.RouteImportedService, "peering", ""},
		{sni.ServiceSNI("nothing", "", "", "", "dc1", td), "", "", routing.ReasonUnknownService},
		{"api.default.dc1.internal.99999999-0000-0000-0000-000000000000.consul", "", "", routing.ReasonForeignTrustDomain},
		{sni.ServiceSNI("gone", "", "", "", "dc1", td), routing.RouteService, "mesh", ""},
	} {
		var x admin.Explanation
		require.Equal(t, http.StatusOK, get(t, base+"/explain?sni="+c.name, &x))
		assert.Equal(t, c.name, x.ServerName)
		// The same name through the gateway.
		conn, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		conn.Write(hellotest.Record(t, c.name))
		conn.(*net.TCPConn).CloseWrite()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, conn)
		conn.Close()
		conns++
		r := rec.last(t, conns)
		if c.reason != "" {
			assert.Equal(t, "refuse", x.Decision, c.name)
			assert.Equal(t, c.reason, x.Reason, c.name)
			assert.Equal(t, x.Reason, r.Outcome, "the gateway refused it for the reason explained")
			assert.Equal(t, strings.TrimPrefix(r.Err.Error(), "gateway: rejected ("+r.Outcome+"): "), x.Rule, "and by the rule explained")
			continue
		}
		assert.Equal(t, "forward", x.Decision, c.name)
		assert.Equal(t, c.kind, x.Kind, c.name)
		assert.Equal(t, c.layer, x.Layer, c.name)
		assert.Equal(t, r.Kind, x.Kind, "the gateway took the route explained")
		assert.Equal(t, r.Route, x.Route)
		require.Len(t, x.Targets, 1)
		if r.Outcome == gateway.ReasonDialFailed { // "gone": its one endpoint is dead
			assert.Contains(t, r.Err.Error(), x.Targets[0].Address, "and dialled the target explained")
		} else {
			assert.Equal(t, x.Targets[0].Address, r.Target, "and dialled the target explained")
		}
		assert.Equal(t, "passing", x.Targets[0].Health)
	}
	// The dead target failed its dial: it is ejected now.
	var x admin.Explanation
	get(t, base+"/explain?sni="+sni.ServiceSNI("gone", "", "", "", "dc1", td), &x)
	require.Len(t, x.Targets, 1)
	assert.True(t, x.Targets[0].Ejected)
	assert.NotNil(t, x.Targets[0].EjectedSince)
	assert.Equal(t, http.StatusBadRequest, get(t, base+"/explain", nil))
}

// /refusals keeps the last refusals, newest first, and holds its bound
// after 10,000 hostile connections.
func TestRefusalsHoldTheirBound(t *testing.T) {
	refusals := admin.NewRefusals(100)
	table, err := gateway.NewTable(map[string][]string{"ok.example": {echoServer(t)}})
	require.NoError(t, err)
	s := &gateway.Server{Router: table, Observer: refusals}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	base := serve(t, admin.Endpoint{Refusals: refusals})

	const hostile = 10000
	long := strings.Repeat("x", 60) + ".example"
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range hostile {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			if i%2 == 0 {
				c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			} else {
				c.Write(hellotest.Record(t, strconv.Itoa(i)+long))
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			io.Copy(io.Discard, c)
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool { return refusals.Snapshot().RejectedTotal() == hostile }, time.Minute, 20*time.Millisecond)
	var last []admin.Refusal
	require.Equal(t, http.StatusOK, get(t, base+"/refusals", &last))
	assert.Len(t, last, 100, "the bound holds")
	for i, r := range last {
		assert.Contains(t, []string{gateway.ReasonNotTLS, gateway.ReasonNoRoute}, r.Reason)
		assert.NotEmpty(t, r.Client)
		assert.LessOrEqual(t, len(r.Detail), 512)
		if i > 0 {
			assert.False(t, r.Time.After(last[i-1].Time.Add(time.Second)), "newest first")
		}
		if r.Reason == gateway.ReasonNoRoute {
			assert.True(t, strings.HasSuffix(r.ServerName, long), r.ServerName)
			assert.Contains(t, r.Detail, r.ServerName)
		}
	}
	var few []admin.Refusal
	get(t, base+"/refusals?n=3", &few)
	assert.Equal(t, last[:3], few)
}

func TestReadinessSaysWhatIsMissing(t *testing.T) {
	var r admin.Readiness
	assert.True(t, r.Ready(), "the zero value is ready")
	view := errors.New("no view yet")
	r.Set("listener", errors.New("not listening"))
	r.Add("view", func() error { return view })
	base := serve(t, admin.Endpoint{Ready: &r})
	resp, err := http.Get(base + "/ready")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "not ready:\nlistener: not listening\nview: no view yet\n", string(body))
	r.Set("listener", nil)
	view = nil
	assert.True(t, r.Ready())
	r.Set("shutdown", errors.New("grace period"))
	assert.Equal(t, []string{"shutdown: grace period"}, r.Missing())
	r.Set("shutdown", nil)
	resp, err = http.Get(base + "/ready")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ready\n", string(body))
}

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
