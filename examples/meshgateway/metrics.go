package main

import (
	"sync/atomic"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/prometheus/client_golang/prometheus"
)

// gatewayMetrics is the gateway's metrics, made once the first view is
// known (its datacenter names the clusters), for the admin endpoint.
type gatewayMetrics struct {
	src    atomic.Pointer[mesh.Source] // the source in force (reloads replace it)
	server atomic.Pointer[gateway.Server]
}

// setSource records the source in force.
func (g *gatewayMetrics) setSource(src mesh.Source) { g.src.Store(&src) }

// observer makes the metrics, registers them with reg and returns them as
// an Observer; with envoy, the Envoy-compatible ones too (-envoy-metrics),
// as the gateway registered as service in the view's datacenter, its
// listeners named as Consul names them.
func (g *gatewayMetrics) observer(reg *prometheus.Registry, envoy bool, service string, v *mesh.View,
	listen string, opts proxyconfig.Gateway, live func() bool) gateway.Observer {
	var o gatewaymetrics.Options
	if envoy {
		names := map[string]string{listen: "default"}
		for name, addr := range opts.BindAddresses {
			names[addr] = name
		}
		o.Envoy = &gatewaymetrics.Envoy{Service: service, Partition: v.Partition, Datacenter: v.Datacenter,
			Listener: gatewaymetrics.ListenerNames(names), Live: live, Clusters: g.clusters}
	}
	m := gatewaymetrics.NewWith(o)
	reg.MustRegister(m)
	return m
}

// l7Metrics makes the metrics of the terminator of L7 exports, registers
// them with reg and returns them as its Observer; with envoy, the
// Envoy-compatible ones too, labelled as observer labels the gateway's.
func l7Metrics(reg *prometheus.Registry, envoy bool, service string, v *mesh.View) l7.Observer {
	var o gatewaymetrics.Options
	if envoy {
		o.Envoy = &gatewaymetrics.Envoy{Service: service, Partition: v.Partition, Datacenter: v.Datacenter}
	}
	m := gatewaymetrics.NewL7(o)
	reg.MustRegister(m)
	return m
}

// clusters lists the clusters of the view in force and their endpoints.
func (g *gatewayMetrics) clusters() []gatewaymetrics.Cluster {
	src, s := g.src.Load(), g.server.Load()
	if src == nil || s == nil {
		return nil
	}
	return gatewaymetrics.MeshClusters((*src).View(), s.Ejected())
}
