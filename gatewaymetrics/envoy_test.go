package gatewaymetrics_test

import (
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sum adds the values of the family's series whose labels include match
// (an empty value matching a missing label, as Prometheus reads it).
func sum(families map[string]*dto.MetricFamily, name string, match map[string]string) (float64, int) {
	var total float64
	n := 0
	for _, m := range families[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range match {
			ok = ok && got[k] == v
		}
		if !ok {
			continue
		}
		n++
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		}
	}
	return total, n
}

// The route kinds the Envoy-compatible metrics name clusters by are the
// routers' own.
func TestEnvoyClusterKindsAreTheRouters(t *testing.T) {
	kinds := []string{routing.RouteService, routing.RouteGateway, routing.RouteWANFederation, routing.RoutePeeringServers,
		routing.RoutePeerServers, routing.RouteExportedService, routing.RouteImportedService}
	assert.Equal(t, []string{"service", "gateway", "wan-federation", "peering-servers", "peer-servers", "exported-service", "imported-service"}, kinds)
}

// Known traffic through a real gateway with a Consul mesh router shows in
// the Envoy-compatible series as exactly that traffic, under Consul's
// cluster names and labels.
func TestEnvoyMetricsEqualTheTraffic(t *testing.T) {
	const td = "11111111-2222-3333-4444-555555555555.consul"
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	api := echoServer(t)
	view := &mesh.View{Datacenter: "dc1", TrustDomain: td, Services: map[mesh.ServiceKey][]mesh.Endpoint{
		{Name: "api", Namespace: "default", Partition: "default", Datacenter: "dc1"}:  {{Address: api}},
		{Name: "gone", Namespace: "default", Partition: "default", Datacenter: "dc1"}: {{Address: deadAddr}},
	}}
	src := staticSource{view}
	s := &gateway.Server{Router: &routing.MeshRouter{Source: src}}
	m := gatewaymetrics.NewWith(gatewaymetrics.Options{Envoy: &gatewaymetrics.Envoy{
		Service: "gw", Datacenter: "dc1",
		Clusters: func() []gatewaymetrics.Cluster { return gatewaymetrics.MeshClusters(src.View(), s.Ejected()) },
	}})
	s.Observer = m
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	admin := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer admin.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	defer s.Close()
	gw := ln.Addr().String()

	apiSNI := sni.ServiceSNI("api", "", "", "", "dc1", td)
	before := scrape(t, admin.URL)
	n, series := sum(before, "envoy_cluster_upstream_cx_total", map[string]string{"envoy_cluster_name": "api"})
	assert.Equal(t, 1, series, "a cluster's counters are there, at zero, before any traffic")
	assert.Zero(t, n)

	hello := append(hellotest.Record(t, apiSNI), "ping"...)
	for range 3 {
		require.Equal(t, hello, exchange(t, gw, hello))
	}
	exchange(t, gw, hellotest.Record(t, "nothing.default.dc1.internal."+td))
	exchange(t, gw, []byte("GET / HTTP/1.1\r\n\r\n"))
	exchange(t, gw, hellotest.Record(t, sni.ServiceSNI("gone", "", "", "", "dc1", td)))

	var f map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		f = scrape(t, admin.URL)
		v, _ := sum(f, "envoy_tcp_downstream_cx_total", nil)
		return v == 6
	}, 30*time.Second, 20*time.Millisecond)
	fixed := map[string]string{"local_cluster": "gw", "consul_source_service": "gw", "consul_source_namespace": "default",
		"consul_source_partition": "default", "consul_source_datacenter": "dc1"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range fixed {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	get := func(name string, match map[string]string) float64 {
		v, n := sum(f, name, with(match))
		require.Positive(t, n, "%s%v", name, match)
		return v
	}
	apiLabels := map[string]string{"envoy_cluster_name": "api", "consul_destination_service": "api", "consul_destination_datacenter": "dc1",
		"consul_destination_target": "api.default.dc1"}
	assert.EqualValues(t, 3, get("envoy_cluster_upstream_cx_total", apiLabels))
	assert.EqualValues(t, 0, get("envoy_cluster_upstream_cx_active", apiLabels))
	assert.EqualValues(t, 3*len(hello), get("envoy_cluster_upstream_cx_tx_bytes_total", apiLabels))
	assert.EqualValues(t, 3*len(hello), get("envoy_cluster_upstream_cx_rx_bytes_total", apiLabels))
	assert.EqualValues(t, 1, get("envoy_cluster_membership_total", apiLabels))
	assert.EqualValues(t, 1, get("envoy_cluster_membership_healthy", apiLabels))
	gone := map[string]string{"envoy_cluster_name": "gone"}
	assert.EqualValues(t, 1, get("envoy_cluster_upstream_cx_total", gone))
	assert.EqualValues(t, 1, get("envoy_cluster_upstream_cx_connect_fail", gone))
	assert.EqualValues(t, 1, get("envoy_cluster_membership_total", gone))
	assert.EqualValues(t, 0, get("envoy_cluster_membership_healthy", gone), "the dead endpoint is ejected")

	local := map[string]string{"envoy_tcp_prefix": "mesh_gateway_local.default"}
	assert.EqualValues(t, 6, get("envoy_tcp_downstream_cx_total", local), "3 forwarded, 2 without a route, 1 whose dial failed")
	assert.EqualValues(t, 2, get("envoy_tcp_downstream_cx_no_route", local), "an unknown service and a connection that is not TLS")
	assert.EqualValues(t, 3*len(hello), get("envoy_tcp_downstream_cx_rx_bytes_total", local))
	assert.EqualValues(t, 3*len(hello), get("envoy_tcp_downstream_cx_tx_bytes_total", local))
	assert.EqualValues(t, 1, get("envoy_server_live", nil))
	assert.EqualValues(t, 0, get("envoy_server_total_connections", nil))
	assert.Positive(t, get("envoy_server_memory_allocated", nil))
	assert.GreaterOrEqual(t, get("envoy_server_memory_heap_size", nil), get("envoy_server_memory_allocated", nil))
	assert.Equal(t, dto.MetricType_COUNTER, f["envoy_cluster_upstream_cx_total"].GetType())
	assert.Equal(t, dto.MetricType_GAUGE, f["envoy_cluster_upstream_cx_active"].GetType())
	assert.Equal(t, dto.MetricType_GAUGE, f["envoy_server_uptime"].GetType())
}

type staticSource struct{ v *mesh.View }

func (s staticSource) View() *mesh.View { return s.v }
