package gatewaymetrics_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/internal/testrig/promtest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// consulDashboards are the Grafana dashboards Consul 1.22.0 ships whose
// panels query Envoy's metrics.
var consulDashboards = []string{"consuldataplanedashboard.json", "consulservicedashboard.json", "consulservicetoservicedashboard.json"}

// grafanaDir returns Consul 1.22.0's grafana/ in the Go module cache,
// where scripts/build-consul.sh puts the module.
func grafanaDir(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	require.NoError(t, err)
	dir := filepath.Join(strings.TrimSpace(string(out)), "github.com", "hashicorp", "consul@v1.22.0", "grafana")
	if _, err := os.Stat(filepath.Join(dir, consulDashboards[0])); err != nil {
		t.Fatalf("Consul 1.22.0's dashboards are not in the Go module cache (%v): run `bash scripts/build-consul.sh`, which fetches the module", err)
	}
	return dir
}

type dashboard struct {
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
	Templ  struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	Current    struct {
		Value json.RawMessage `json:"value"`
	} `json:"current"`
}

// query is one panel target of a dashboard.
type query struct {
	dashboard, panel string
	id               int
	ref, expr        string
}

func (q query) String() string {
	return fmt.Sprintf("%s / %q (%d%s)", q.dashboard, q.panel, q.id, q.ref)
}

// notApplicable says, for a query, why a mesh gateway (Envoy's or
// meshgate's) has no data for it, or "" when it has.
func notApplicable(expr string) string {
	switch {
	case strings.Contains(expr, "container=\"consul-dataplane\""):
		return "Loki: the consul-dataplane container's logs on Kubernetes, not Prometheus; meshgate's access log (-access-log) is one JSON line per connection"
	case strings.Contains(expr, "container_") || strings.Contains(expr, "kube_pod_"):
		return "cAdvisor and kube-state-metrics (Kubernetes containers), not the gateway's"
	case strings.Contains(expr, "envoy_http_"):
		return "an HTTP connection manager's (a sidecar's public listener): a mesh gateway proxies TCP (Envoy's tcp_proxy) and has none"
	case strings.Contains(expr, "envoy_cluster_upstream_rq"):
		return "HTTP requests per cluster: a mesh gateway proxies TCP connections; meshgate's terminator of L7 exports does not count requests"
	case strings.Contains(expr, "_buffered"):
		return "bytes buffered now: meshgate moves bytes with splice(2) or a copy and does not track bytes in flight per connection"
	case strings.Contains(expr, "overload_reject") || strings.Contains(expr, "global_cx_overflow"):
		return "connections refused for load: meshgate refuses none; past -max-conns or the open-file limit it stops accepting and clients wait (meshgate_accept_held_back_total)"
	}
	return ""
}

func loadQueries(t *testing.T) ([]query, map[string][]variable) {
	dir := grafanaDir(t)
	vars := map[string][]variable{}
	var out []query
	for _, file := range consulDashboards {
		raw, err := os.ReadFile(filepath.Join(dir, file))
		require.NoError(t, err)
		var d dashboard
		require.NoError(t, json.Unmarshal(raw, &d), file)
		vars[file] = d.Templ.List
		var walk func([]panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				for _, tg := range p.Targets {
					if tg.Expr != "" {
						out = append(out, query{dashboard: file, panel: p.Title, id: p.ID, ref: tg.RefID, expr: tg.Expr})
					}
				}
				walk(p.Panels)
			}
		}
		walk(d.Panels)
	}
	return out, vars
}

var labelValuesRE = regexp.MustCompile(`^label_values\((?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// fill replaces a dashboard's variables in expr as Grafana does on
// loading it: each query variable from its label_values over Prometheus
// (earlier ones filled in it first), a multi-value or All one as a regular
// expression of its values, $__interval and $__range as a short range.
func fill(t *testing.T, prom *promtest.Server, vars []variable, expr string) string {
	values := map[string]string{}
	for _, v := range vars {
		if v.Type != "query" {
			continue
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			require.NoError(t, json.Unmarshal(v.Query, &obj))
			q = obj.Query
		}
		m := labelValuesRE.FindStringSubmatch(q)
		require.NotNil(t, m, "variable %s: %q", v.Name, q)
		match := replaceVars(m[1], values)
		got, err := prom.LabelValues(m[2], match)
		require.NoError(t, err)
		sort.Strings(got)
		var current string
		_ = json.Unmarshal(v.Current.Value, &current)
		var list []string
		_ = json.Unmarshal(v.Current.Value, &list)
		all := current == "$__all" || (len(list) == 1 && list[0] == "$__all")
		switch {
		case all || v.Multi:
			esc := make([]string, len(got))
			for i, g := range got {
				esc[i] = grafanaRegexEscape(g)
			}
			values[v.Name] = "(" + strings.Join(esc, "|") + ")"
		case len(got) > 0 && !contains(got, current):
			values[v.Name] = got[0]
		default:
			values[v.Name] = current
		}
	}
	values["__interval"] = "1m"
	values["__range"] = "5m"
	return replaceVars(expr, values)
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func replaceVars(s string, values map[string]string) string {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	for _, k := range keys {
		s = strings.ReplaceAll(s, "$"+k, values[k])
	}
	return s
}

// grafanaRegexEscape escapes a value for a regular expression inside a
// PromQL string, as Grafana's Prometheus data source does for multi-value
// variables.
func grafanaRegexEscape(v string) string {
	var b strings.Builder
	for _, r := range v {
		if strings.ContainsRune(`\$^*{}[]'+?.()|`, r) {
			b.WriteString(`\\`)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// traffic sends msg through gw, half-closes and reads the echo; it
// returns the bytes each way.
func traffic(t *testing.T, gw string, msg []byte) int {
	got := exchange(t, gw, msg)
	require.Equal(t, msg, got, "echoed through the gateway")
	return len(msg)
}

// hold opens a connection through gw that stays open until the test ends.
func hold(t *testing.T, gw string, msg []byte) {
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Write(msg)
	require.NoError(t, err)
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
}

// A real Prometheus scrapes a gateway carrying connections to a local
// service, to another datacenter, a refusal and a failed dial, with an
// instance and a gateway Consul reports critical; every query
// of Consul's three dashboards that applies to a mesh gateway, its
// variables filled as Grafana fills them, returns data, and its value is
// the traffic's: connections and bytes exactly, gauges within the run's
// bounds. The queries that cannot apply are named with the reason.
func TestConsulDashboardsOverPrometheus(t *testing.T) {
	queries, vars := loadQueries(t)
	const td = "11111111-2222-3333-4444-555555555555.consul"
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	critical, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	criticalAddr := critical.Addr().String() // nothing listens: routing there would fail the counts
	critical.Close()
	api, dc2 := echoServer(t), echoServer(t) // dc2's "gateway" echoes too
	view := &mesh.View{Datacenter: "dc1", TrustDomain: td,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api", Namespace: "default", Partition: "default", Datacenter: "dc1"}:  {{Address: api}},
			{Name: "gone", Namespace: "default", Partition: "default", Datacenter: "dc1"}: {{Address: deadAddr}},
		},
		// An instance of api and a gateway of dc2 with a critical check:
		// Consul hands them to Envoy as unhealthy.
		UnhealthyServices: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api", Namespace: "default", Partition: "default", Datacenter: "dc1"}: {{Address: criticalAddr}},
		},
		Gateways:          map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2", Partition: "default"}: {{WAN: dc2}}},
		UnhealthyGateways: map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2", Partition: "default"}: {{WAN: criticalAddr}}},
	}
	src := staticSource{view}
	start := time.Now()
	s := &gateway.Server{Router: &routing.MeshRouter{Source: src}}
	m := gatewaymetrics.NewWith(gatewaymetrics.Options{Envoy: &gatewaymetrics.Envoy{
		Service: "mesh-gateway", Datacenter: "dc1", Start: start,
		Clusters: func() []gatewaymetrics.Cluster { return gatewaymetrics.MeshClusters(src.View(), s.Ejected()) },
	}})
	s.Observer = m
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	admin := httptest.NewUnstartedServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin.Listener.Close()
	admin.Listener = adminLn
	admin.Start()
	defer admin.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	defer s.Close()
	gw := ln.Addr().String()

	// Consul's dashboards were written for Kubernetes, where the scrape
	// adds the pod's app label and the service's service label: the job
	// adds them here, as docs/operate.md says to.
	prom := promtest.Start(t, map[string]string{"app": "mesh-gateway", "service": "mesh-gateway"}, adminLn.Addr().String())

	apiMsg := append(hellotest.Record(t, sni.ServiceSNI("api", "", "", "", "dc1", td)), "ping"...)
	dc2Msg := append(hellotest.Record(t, sni.ServiceSNI("web", "", "", "", "dc2", td)), "pong!"...)
	var bytesUp int // each way: the echo returns what was sent
	conns := 0
	waitTotal := func(want int) {
		require.Eventually(t, func() bool {
			r, err := prom.Query("sum(envoy_tcp_downstream_cx_total)")
			return err == nil && len(r) == 1 && int(r[0].Value) == want
		}, time.Minute, 100*time.Millisecond, "Prometheus never saw %d connections", want)
	}
	// Two rounds, a scrape between them, so that rates have an increase.
	for round := range 2 {
		for range 3 - round {
			bytesUp += traffic(t, gw, apiMsg)
		}
		for range 2 - round {
			bytesUp += traffic(t, gw, dc2Msg)
		}
		conns += 5 - 2*round
		if round == 0 {
			exchange(t, gw, hellotest.Record(t, sni.ServiceSNI("nothing", "", "", "", "dc1", td))) // refused: no route
			exchange(t, gw, hellotest.Record(t, sni.ServiceSNI("gone", "", "", "", "dc1", td)))    // its dial fails
			conns += 2
		}
		waitTotal(conns)
	}
	hold(t, gw, apiMsg)
	hold(t, gw, apiMsg)
	hold(t, gw, dc2Msg)
	conns += 3
	waitTotal(conns)
	require.Eventually(t, func() bool {
		r, err := prom.Query("sum(envoy_cluster_upstream_cx_active)")
		return err == nil && len(r) == 1 && r[0].Value == 3
	}, time.Minute, 100*time.Millisecond)
	elapsed := time.Since(start).Seconds()

	dc2Cluster := "dc2.internal." + td
	type want func(t *testing.T, q query, got []promtest.Sample)
	one := func(v float64) want {
		return func(t *testing.T, q query, got []promtest.Sample) {
			require.Len(t, got, 1, q.String())
			assert.Equal(t, v, got[0].Value, q.String())
		}
	}
	between := func(lo, hi float64) want {
		return func(t *testing.T, q query, got []promtest.Sample) {
			require.Len(t, got, 1, q.String())
			assert.GreaterOrEqual(t, got[0].Value, lo, q.String())
			assert.LessOrEqual(t, got[0].Value, hi, q.String())
		}
	}
	// A rate's panel: data, and the counter under it exact.
	rateOf := func(counter string, exact float64) want {
		return func(t *testing.T, q query, got []promtest.Sample) {
			require.NotEmpty(t, got, q.String())
			for _, g := range got {
				assert.Positive(t, g.Value, q.String())
			}
			r, err := prom.Query("sum(" + counter + ")")
			require.NoError(t, err)
			require.Len(t, r, 1)
			assert.Equal(t, exact, r[0].Value, "%s: %s", q, counter)
		}
	}
	const gib = 1 << 30
	checks := map[string]want{
		"consuldataplanedashboard.json 9 A": one(1),
		"consuldataplanedashboard.json 19 A": func(t *testing.T, q query, got []promtest.Sample) {
			// "gone"'s one endpoint is ejected; api's and dc2's critical ones count as Envoy's do.
			one(-3)(t, q, got)
			r, err := prom.Query("sum by (envoy_cluster_name) (envoy_cluster_membership_total - envoy_cluster_membership_healthy)")
			require.NoError(t, err)
			byCluster := map[string]float64{}
			for _, g := range r {
				byCluster[g.Labels["envoy_cluster_name"]] = g.Value
			}
			assert.Equal(t, map[string]float64{"api": 1, dc2Cluster: 1, "gone": 1}, byCluster, "unhealthy endpoints by cluster")
		},
		"consuldataplanedashboard.json 58 A":        one(3),
		"consuldataplanedashboard.json 13 A":        between(1, gib),
		"consuldataplanedashboard.json 11 A":        between(1, gib),
		"consuldataplanedashboard.json 12 A":        between(0, elapsed+1),
		"consuldataplanedashboard.json 20 A":        one(0),
		"consuldataplanedashboard.json 2 B":         one(3),
		"consulservicedashboard.json 65 A":          one(1),
		"consulservicedashboard.json 71 A":          one(3),
		"consulservicedashboard.json 99 A":          rateOf("envoy_tcp_downstream_cx_rx_bytes_total", float64(bytesUp)),
		"consulservicedashboard.json 99 B":          rateOf("envoy_tcp_downstream_cx_tx_bytes_total", float64(bytesUp)),
		"consulservicedashboard.json 81 A":          rateOf("envoy_tcp_downstream_cx_total", float64(conns)),
		"consulservicetoservicedashboard.json 38 A": rateOf("envoy_tcp_downstream_cx_rx_bytes_total", float64(bytesUp)),
		"consulservicetoservicedashboard.json 38 B": rateOf("envoy_tcp_downstream_cx_tx_bytes_total", float64(bytesUp)),
		"consulservicetoservicedashboard.json 28 A": one(float64(conns)),
		"consuldataplanedashboard.json 2 A": func(t *testing.T, q query, got []promtest.Sample) {
			byCluster := map[string]float64{}
			for _, g := range got {
				byCluster[g.Labels["envoy_cluster_name"]] = g.Value
			}
			assert.Equal(t, map[string]float64{"api": 2, dc2Cluster: 1, "gone": 0}, byCluster, q.String())
		},
	}
	var works, cannot []string
	for _, q := range queries {
		key := fmt.Sprintf("%s %d %s", q.dashboard, q.id, q.ref)
		if why := notApplicable(q.expr); why != "" {
			assert.NotContains(t, checks, key, "%s is checked but said not to apply", q)
			cannot = append(cannot, fmt.Sprintf("%s: %s", q, why))
			continue
		}
		expr := fill(t, prom, vars[q.dashboard], q.expr)
		got, err := prom.Query(expr)
		require.NoError(t, err, "%s: %s", q, expr)
		require.NotEmpty(t, got, "%s returns no data: %s", q, expr)
		check, ok := checks[key]
		require.True(t, ok, "%s applies but has no check of its value (%s)", q, expr)
		check(t, q, got)
		works = append(works, q.String())
		delete(checks, key)
	}
	assert.Empty(t, checks, "checks of queries the dashboards do not have")
	var b bytes.Buffer
	fmt.Fprintf(&b, "dashboard queries with data (%d):\n  %s\nthat cannot apply (%d):\n  %s\n", len(works), strings.Join(works, "\n  "), len(cannot), strings.Join(cannot, "\n  "))
	t.Log(b.String())
}
