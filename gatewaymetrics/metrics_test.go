package gatewaymetrics_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoServer echoes each connection until the client half-closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	return ln.Addr().String()
}

// exchange sends msg on a new connection to gw, half-closes, and returns
// what came back before the gateway closed.
func exchange(t *testing.T, gw string, msg []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = c.Write(msg)
	require.NoError(t, err)
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	return got
}

// scrape fetches /metrics over HTTP and parses it with Prometheus's own
// text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return families
}

// value returns the value of the family's metric whose labels are labels.
func value(t *testing.T, families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := families[name]
	require.True(t, ok, "no metric family %s", name)
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("%s has no metric labelled %v", name, labels)
	return 0
}

// Known traffic through a real gateway (forwarded, rejected for several
// reasons, a failed dial) shows in a real scrape as exactly that traffic.
func TestMetricsEqualTheTraffic(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close() // connections to it are refused

	table, err := gateway.NewTable(map[string][]string{"web.example": {echoServer(t)}, "dead.example": {deadAddr}})
	require.NoError(t, err)
	m := gatewaymetrics.New()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, gatewaymetrics.SourceCollector(func() gatewaymetrics.SourceState {
		return gatewaymetrics.SourceState{Services: 7, LastUpdate: time.Unix(1700000000, 0), Errors: 2, Failing: 1}
	}))
	admin := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer admin.Close()

	s := &gateway.Server{Router: table, Observer: m}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	defer s.Close()
	gw := ln.Addr().String()

	hello := append(hellotest.Record(t, "web.example"), "ping"...)
	for range 3 {
		require.Equal(t, hello, exchange(t, gw, hello), "echoed through the gateway")
	}
	for range 2 {
		exchange(t, gw, hellotest.Record(t, "nowhere.example"))
	}
	exchange(t, gw, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	exchange(t, gw, hellotest.Record(t, "dead.example"))

	var families map[string]*dto.MetricFamily
	deadline := time.Now().Add(30 * time.Second)
	for {
		families = scrape(t, admin.URL)
		// Forwarded (and the active gauge) come before a connection's
		// record (the ClientHello histogram): wait for both.
		if value(t, families, "meshgate_connections_active", nil) == 0 &&
			value(t, families, "meshgate_client_hello_read_duration_seconds", nil) == 7 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshgate_connections_accepted_total", nil, 7},
		{"meshgate_connections_active", nil, 0},
		{"meshgate_connections_forwarded_total", map[string]string{"route": "web.example"}, 3},
		{"meshgate_upstream_connections_total", map[string]string{"route": "web.example", "kind": gateway.KindTable}, 3},
		{"meshgate_upstream_connections_active", map[string]string{"kind": gateway.KindTable}, 0},
		{"meshgate_client_to_upstream_bytes_total", map[string]string{"route": "web.example"}, float64(3 * len(hello))},
		{"meshgate_upstream_to_client_bytes_total", map[string]string{"route": "web.example"}, float64(3 * len(hello))},
		{"meshgate_connections_rejected_total", map[string]string{"reason": gateway.ReasonNoRoute}, 2},
		{"meshgate_connections_rejected_total", map[string]string{"reason": gateway.ReasonNotTLS}, 1},
		{"meshgate_connections_rejected_total", map[string]string{"reason": gateway.ReasonDialFailed}, 1},
		{"meshgate_upstream_dial_failures_total", map[string]string{"route": "dead.example", "target": deadAddr}, 1},
		{"meshgate_connection_duration_seconds", nil, 3},
		{"meshgate_client_hello_read_duration_seconds", nil, 7},
		{"meshgate_source_services", nil, 7},
		{"meshgate_source_last_update_timestamp_seconds", nil, 1700000000},
		{"meshgate_source_errors_total", nil, 2},
		{"meshgate_source_failing_watches", nil, 1},
	} {
		assert.Equal(t, c.want, value(t, families, c.name, c.labels), "%s %v", c.name, c.labels)
	}
}

// A connection that stays open (as Consul's pooled server connections do
// for hours) is counted and gauged by its route's kind while it is open,
// not only once it closes.
func TestOpenConnectionsShowByKind(t *testing.T) {
	table, err := gateway.NewTable(map[string][]string{"web.example": {echoServer(t)}})
	require.NoError(t, err)
	m := gatewaymetrics.New()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	admin := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer admin.Close()
	s := &gateway.Server{Router: table, Observer: m}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	defer s.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	hello := hellotest.Record(t, "web.example")
	c.Write(hello)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, err, "echoed: the upstream is connected")

	families := scrape(t, admin.URL)
	assert.Equal(t, 1.0, value(t, families, "meshgate_upstream_connections_total", map[string]string{"route": "web.example", "kind": gateway.KindTable}))
	assert.Equal(t, 1.0, value(t, families, "meshgate_upstream_connections_active", map[string]string{"kind": gateway.KindTable}))
	_, closed := families["meshgate_connections_forwarded_total"]
	assert.False(t, closed, "nothing has closed yet")

	c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for value(t, scrape(t, admin.URL), "meshgate_upstream_connections_active", map[string]string{"kind": gateway.KindTable}) != 0 {
		require.False(t, time.Now().After(deadline), "the gauge did not come back to 0 after the close")
		time.Sleep(20 * time.Millisecond)
	}
}

// The route label takes at most MaxRoutes values; later routes count as
// "other", so a mesh of many services cannot grow a scrape without bound.
func TestRouteLabelsAreBounded(t *testing.T) {
	m := gatewaymetrics.NewWith(gatewaymetrics.Options{MaxRoutes: 2})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	for _, route := range []string{"a", "b", "c", "d", "a"} {
		m.Accepted(nil)
		m.Forwarded(route, "x", gateway.Stats{})
	}
	families, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "meshgate_connections_forwarded_total" {
			continue
		}
		for _, metric := range f.GetMetric() {
			got[metric.GetLabel()[0].GetValue()] = metric.GetCounter().GetValue()
		}
	}
	assert.Equal(t, map[string]float64{"a": 2, "b": 1, gatewaymetrics.OtherLabel: 2}, got)

	unbounded := gatewaymetrics.NewWith(gatewaymetrics.Options{MaxRoutes: -1})
	for i := range 3000 {
		unbounded.Forwarded(fmt.Sprint("r", i), "x", gateway.Stats{})
	}
	assert.Equal(t, 3000, testutil.CollectAndCount(unbounded, "meshgate_connections_forwarded_total"))
	assert.Equal(t, gatewaymetrics.DefaultMaxRoutes+1, func() int {
		d := gatewaymetrics.New()
		for i := range 3000 {
			d.Forwarded(fmt.Sprint("r", i), "x", gateway.Stats{})
		}
		return testutil.CollectAndCount(d, "meshgate_connections_forwarded_total")
	}(), "the default bound, and other")
}
