// Package gatewaymetrics turns a gateway.Server's Observer events into
// Prometheus metrics, with the official client library, for any program
// that embeds the gateway:
//
//	m := gatewaymetrics.New()
//	registry.MustRegister(m)
//	server := &gateway.Server{Router: r, Observer: m}
//
// Every name starts with meshgate_; labels are bounded (route, kind, target,
// reason, limit), never a client's address: past Options.MaxRoutes distinct
// route names (and as many targets), the rest are counted as "other".
package gatewaymetrics

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is a gateway.Observer (with the LimitObserver, ConnObserver,
// UpstreamObserver and DialObserver events) and a prometheus.Collector of what it observed.
// Create it with New.
type Metrics struct {
	accepted   prometheus.Counter
	forwarded  *prometheus.CounterVec
	rejected   *prometheus.CounterVec
	dialFailed *prometheus.CounterVec
	bytesUp    *prometheus.CounterVec
	bytesDown  *prometheus.CounterVec
	active     prometheus.Gauge
	opened     *prometheus.CounterVec
	upOpen     *prometheus.GaugeVec
	heldBack   *prometheus.CounterVec
	peek       prometheus.Histogram
	duration   prometheus.Histogram
	all        []prometheus.Collector
	routes     *labelSet
	targets    *labelSet
	envoy      *envoyMetrics // nil unless Options.Envoy
	open       atomic.Int64  // connections accepted and not yet closed
}

// Options configures Metrics. Zero values are useful.
type Options struct {
	// MaxRoutes bounds the distinct values of the route label, and of the
	// target label: the first MaxRoutes seen keep their names and later
	// ones are counted as OtherLabel, so that a mesh of many services (a
	// route name names a service) cannot grow a scrape without bound.
	// Zero means DefaultMaxRoutes; negative means no bound.
	MaxRoutes int
	// Envoy, when set, adds the Envoy-compatible metrics it describes,
	// beside the meshgate_* ones.
	Envoy *Envoy
}

// DefaultMaxRoutes is Options.MaxRoutes' default.
const DefaultMaxRoutes = 1000

// OtherLabel is the route and target label of what is past MaxRoutes.
const OtherLabel = "other"

// labelSet admits up to max distinct values and maps the rest to
// OtherLabel.
type labelSet struct {
	max  int
	mu   sync.RWMutex
	seen map[string]struct{}
}

func (l *labelSet) of(v string) string {
	if l.max < 0 {
		return v
	}
	l.mu.RLock()
	_, ok := l.seen[v]
	l.mu.RUnlock()
	if ok {
		return v
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[v]; ok {
		return v
	}
	if len(l.seen) >= l.max {
		return OtherLabel
	}
	l.seen[v] = struct{}{}
	return v
}

var (
	_ gateway.LimitObserver    = (*Metrics)(nil)
	_ gateway.ConnObserver     = (*Metrics)(nil)
	_ gateway.UpstreamObserver = (*Metrics)(nil)
	_ gateway.DialObserver     = (*Metrics)(nil)
	_ prometheus.Collector     = (*Metrics)(nil)
)

// New returns Metrics with every counter at zero and the default Options;
// register it with a prometheus.Registerer.
func New() *Metrics { return NewWith(Options{}) }

// NewWith returns Metrics with every counter at zero and opts.
func NewWith(opts Options) *Metrics {
	if opts.MaxRoutes == 0 {
		opts.MaxRoutes = DefaultMaxRoutes
	}
	m := &Metrics{
		routes:  &labelSet{max: opts.MaxRoutes, seen: map[string]struct{}{}},
		targets: &labelSet{max: opts.MaxRoutes, seen: map[string]struct{}{}},
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshgate_connections_accepted_total",
			Help: "Connections accepted."}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_connections_forwarded_total",
			Help: "Connections forwarded and since closed, by route."}, []string{"route"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_connections_rejected_total",
			Help: "Connections closed without being forwarded, by reason (no-route, foreign-trust-domain, not-tls, dial-failed, ...)."}, []string{"reason"}),
		dialFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_upstream_dial_failures_total",
			Help: "Failed dials of a route's target."}, []string{"route", "target"}),
		bytesUp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_client_to_upstream_bytes_total",
			Help: "Bytes forwarded from clients to upstreams (the ClientHello included), counted when a connection closes, by route."}, []string{"route"}),
		bytesDown: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_upstream_to_client_bytes_total",
			Help: "Bytes forwarded from upstreams to clients, counted when a connection closes, by route."}, []string{"route"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshgate_connections_active",
			Help: "Connections accepted and not yet closed."}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_upstream_connections_total",
			Help: "Connections whose upstream was connected, counted at once (not at close), by route and route kind (service, gateway, wan-federation, ...)."}, []string{"route", "kind"}),
		upOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshgate_upstream_connections_active",
			Help: "Forwarded connections open now, by route kind."}, []string{"kind"}),
		heldBack: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_accept_held_back_total",
			Help: "Times accepting waited on a limit (max-conns, open-files)."}, []string{"limit"}),
		peek: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshgate_client_hello_read_duration_seconds",
			Help:    "Time from accept to a read ClientHello (or the failure to read one).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshgate_connection_duration_seconds",
			Help:    "Lifetime of forwarded connections, from accept to close.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}),
	}
	if opts.Envoy != nil {
		m.envoy = newEnvoyMetrics(*opts.Envoy)
	}
	m.all = []prometheus.Collector{m.accepted, m.forwarded, m.rejected, m.dialFailed, m.bytesUp, m.bytesDown,
		m.active, m.opened, m.upOpen, m.heldBack, m.peek, m.duration}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all {
		c.Describe(ch)
	}
	if m.envoy != nil {
		m.envoy.describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all {
		c.Collect(ch)
	}
	if m.envoy != nil {
		m.envoy.collect(ch, m.open.Load())
	}
}

// Accepted implements gateway.Observer.
func (m *Metrics) Accepted(net.Addr) {
	m.accepted.Inc()
	m.active.Inc()
	m.open.Add(1)
}

// Rejected implements gateway.Observer.
func (m *Metrics) Rejected(reason string, _ error) {
	m.rejected.WithLabelValues(reason).Inc()
	m.active.Dec()
	m.open.Add(-1)
}

// DialFailed implements gateway.Observer.
func (m *Metrics) DialFailed(route, target string, _ error) {
	m.dialFailed.WithLabelValues(m.routes.of(route), m.targets.of(target)).Inc()
}

// Forwarded implements gateway.Observer.
func (m *Metrics) Forwarded(route, _ string, s gateway.Stats) {
	route = m.routes.of(route)
	m.forwarded.WithLabelValues(route).Inc()
	m.bytesUp.WithLabelValues(route).Add(float64(s.ClientToUpstream))
	m.bytesDown.WithLabelValues(route).Add(float64(s.UpstreamToClient))
	m.duration.Observe(s.Duration.Seconds())
	m.active.Dec()
	m.open.Add(-1)
}

// DialFailedConn implements gateway.DialObserver.
func (m *Metrics) DialFailedConn(r *gateway.ConnRecord, err error) {
	if m.envoy != nil {
		m.envoy.dialFailed(r, err)
	}
}

// HeldBack implements gateway.LimitObserver.
func (m *Metrics) HeldBack(limit string) { m.heldBack.WithLabelValues(limit).Inc() }

// Connected implements gateway.UpstreamObserver.
func (m *Metrics) Connected(r *gateway.ConnRecord) {
	m.opened.WithLabelValues(m.routes.of(r.Route), r.Kind).Inc()
	m.upOpen.WithLabelValues(r.Kind).Inc()
	if m.envoy != nil {
		m.envoy.connected(r)
	}
}

// Closed implements gateway.ConnObserver.
func (m *Metrics) Closed(r *gateway.ConnRecord) {
	m.peek.Observe(r.Peek.Seconds())
	if r.Outcome == gateway.OutcomeForwarded {
		m.upOpen.WithLabelValues(r.Kind).Dec()
	}
	if m.envoy != nil {
		m.envoy.closed(r)
	}
}

// SourceState is what SourceCollector reports of a live source.
type SourceState struct {
	// Services is how many services the source follows.
	Services int
	// LastUpdate is when it last published a view.
	LastUpdate time.Time
	// Errors counts its failed queries.
	Errors uint64
	// Failing is how many of its watches fail now.
	Failing int
}

// SourceCollector returns a collector of a live source's state (such as
// consulview.Source.Stats), read at each scrape: meshgate_source_services,
// meshgate_source_last_update_timestamp_seconds,
// meshgate_source_errors_total and meshgate_source_failing_watches.
func SourceCollector(state func() SourceState) prometheus.Collector {
	return sourceCollector{state}
}

type sourceCollector struct{ state func() SourceState }

var (
	descServices   = prometheus.NewDesc("meshgate_source_services", "Services the live source follows.", nil, nil)
	descLastUpdate = prometheus.NewDesc("meshgate_source_last_update_timestamp_seconds", "When the live source last published a view, Unix time.", nil, nil)
	descErrors     = prometheus.NewDesc("meshgate_source_errors_total", "Failed queries of the live source.", nil, nil)
	descFailing    = prometheus.NewDesc("meshgate_source_failing_watches", "Watches of the live source failing now; routing goes on from the last good view.", nil, nil)
)

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descServices
	ch <- descLastUpdate
	ch <- descErrors
	ch <- descFailing
}

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.state()
	ch <- prometheus.MustNewConstMetric(descServices, prometheus.GaugeValue, float64(s.Services))
	last := 0.0
	if !s.LastUpdate.IsZero() {
		last = float64(s.LastUpdate.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descLastUpdate, prometheus.GaugeValue, last)
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(s.Errors))
	ch <- prometheus.MustNewConstMetric(descFailing, prometheus.GaugeValue, float64(s.Failing))
}
