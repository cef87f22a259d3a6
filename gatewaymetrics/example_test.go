package gatewaymetrics_test

import (
	"net/http"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics beside any other observer, served on an admin listener.
func ExampleNew() {
	m := gatewaymetrics.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	table, _ := gateway.NewTable(map[string][]string{"api.example": {"127.0.0.1:21000"}})
	server := &gateway.Server{Router: table, Observer: gateway.MultiObserver(m, &gateway.Counters{})}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	_ = server // then: go http.ListenAndServe("127.0.0.1:9102", mux); server.Serve(listener)
}
