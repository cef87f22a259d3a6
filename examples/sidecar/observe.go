package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/resolve"
	"github.com/prometheus/client_golang/prometheus"
)

// observer records the sidecar's upstream connections: Prometheus metrics
// (with -admin) and one access log line each (with -access-log). Both name
// the discovery chain target that carried the connection, so a failover
// shows. A nil metrics or access means that one is off.
type observer struct {
	metrics *upstreamMetrics
	access  *slog.Logger
}

// upstreamMetrics are the sidecar's connection metrics. Labels are bounded
// by the registration and the config entries: an upstream's name and the
// targets of its chain.
type upstreamMetrics struct {
	conns  *prometheus.CounterVec // upstream, target, outcome
	active *prometheus.GaugeVec   // upstream, target
	bytes  *prometheus.CounterVec // upstream, target, direction
}

func newUpstreamMetrics(reg prometheus.Registerer) *upstreamMetrics {
	m := &upstreamMetrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_sidecar_upstream_connections_total",
			Help: "Connections from the local application to an upstream, by the chain target that carried them (\"api dc2\": a failover target when not the primary) and outcome (forwarded, unreachable)."},
			[]string{"upstream", "target", "outcome"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshgate_sidecar_upstream_connections_active",
			Help: "Upstream connections open now, by the chain target that carries them."}, []string{"upstream", "target"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_sidecar_upstream_bytes_total",
			Help: "Bytes of closed upstream connections, by target and direction (sent: from the application)."},
			[]string{"upstream", "target", "direction"}),
	}
	reg.MustRegister(m.conns, m.active, m.bytes)
	return m
}

// served names the target of plan that carried its connection.
func served(plan resolve.Plan) string {
	chain := plan.Chain()
	if plan.Served < 0 || plan.Served >= len(chain) {
		return ""
	}
	return chain[plan.Served].String()
}

// opened records a connection carried over plan.
func (o *observer) opened(plan resolve.Plan) {
	if o.metrics != nil {
		o.metrics.active.WithLabelValues(plan.Upstream, served(plan)).Inc()
	}
}

// unreachable records a connection no target of plan could carry.
func (o *observer) unreachable(port int, plan resolve.Plan, start time.Time, err error) {
	if o.metrics != nil {
		o.metrics.conns.WithLabelValues(plan.Upstream, "", "unreachable").Inc()
	}
	if o.access != nil {
		o.access.LogAttrs(context.Background(), slog.LevelInfo, "connection",
			slog.String("upstream", plan.Upstream), slog.Int("local_port", port), slog.String("outcome", "unreachable"),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000), slog.String("error", err.Error()))
	}
}

// closed records the end of a connection carried over plan to remote.
func (o *observer) closed(port int, plan resolve.Plan, remote net.Addr, start time.Time, st gateway.Stats) {
	target := served(plan)
	if o.metrics != nil {
		o.metrics.active.WithLabelValues(plan.Upstream, target).Dec()
		o.metrics.conns.WithLabelValues(plan.Upstream, target, "forwarded").Inc()
		o.metrics.bytes.WithLabelValues(plan.Upstream, target, "sent").Add(float64(st.ClientToUpstream))
		o.metrics.bytes.WithLabelValues(plan.Upstream, target, "received").Add(float64(st.UpstreamToClient))
	}
	if o.access == nil {
		return
	}
	t := plan.Chain()[plan.Served]
	attrs := []slog.Attr{
		slog.String("upstream", plan.Upstream), slog.Int("local_port", port),
		slog.String("target", target), slog.Int("target_index", plan.Served), slog.String("route", string(t.Route)),
		slog.String("sni", t.SNI), slog.String("dialled", remote.String()), slog.String("outcome", "forwarded"),
		slog.Int64("sent_bytes", st.ClientToUpstream), slog.Int64("received_bytes", st.UpstreamToClient),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
	}
	if len(plan.PassedOver) > 0 {
		attrs = append(attrs, slog.String("passed_over", strings.Join(plan.PassedOver, "; ")))
	}
	if st.Err != nil {
		attrs = append(attrs, slog.String("error", st.Err.Error()))
	}
	o.access.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
}
