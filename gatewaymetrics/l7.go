package gatewaymetrics

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// L7 is the metrics of the terminator of L7 exports (routing/l7's
// Terminator): it has the methods of routing/l7.Observer, so that it can
// be the Terminator's Observer, and is a prometheus.Collector of what it
// heard. Create it with NewL7 and register it beside Metrics; the
// connections the terminator takes are in Metrics already (as served in
// process), what happens to their requests is here:
//
//   - meshgate_l7_refused_total{reason}: connections and requests the
//     terminator refused or answered itself, by routing/l7's Reason
//     (peer-handshake, connect, upgrade-refused, headers-too-large,
//     too-many-premature-resets, no-healthy-upstream, upstream-overflow,
//     upstream-connect-failure, upstream-reset, upstream-timeout, ...);
//   - meshgate_l7_retries_total{sni, target}: retries, by the chain
//     target's server name and the instance whose answer was retried;
//   - meshgate_l7_ejections_total{sni, target}: instances outlier
//     detection ejected;
//   - meshgate_l7_ejected_instances{sni}: instances ejected now.
//
// sni and target take at most Options.MaxRoutes values each, as Metrics'
// route and target labels. With Options.Envoy, each exported cluster (as
// Consul names it, exported~<target SNI>, with its labels) also has the
// statistics Envoy keeps for it under Consul and that mean the same:
// envoy_cluster_upstream_rq_retry,
// envoy_cluster_outlier_detection_ejections_enforced_total and
// envoy_cluster_outlier_detection_ejections_active, from the cluster's
// first retry or ejection on.
type L7 struct {
	refused    *prometheus.CounterVec
	retries    *prometheus.CounterVec
	ejections  *prometheus.CounterVec
	ejectedNow *prometheus.GaugeVec
	snis       *labelSet
	targets    *labelSet
	envoy      *envoyL7 // nil unless Options.Envoy
}

// NewL7 returns the terminator's metrics with opts (MaxRoutes and Envoy;
// Envoy's Listener, Live, Clusters and Start are not used), every counter
// at zero.
func NewL7(opts Options) *L7 {
	if opts.MaxRoutes == 0 {
		opts.MaxRoutes = DefaultMaxRoutes
	}
	l := &L7{
		snis:    &labelSet{max: opts.MaxRoutes, seen: map[string]struct{}{}},
		targets: &labelSet{max: opts.MaxRoutes, seen: map[string]struct{}{}},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_l7_refused_total",
			Help: "Connections and requests of terminated L7 exports refused, or answered by the terminator itself, by reason (peer-handshake, connect, upgrade-refused, no-healthy-upstream, upstream-timeout, ...)."}, []string{"reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_l7_retries_total",
			Help: "Requests of terminated L7 exports retried, by the chain target's server name and the instance whose answer or failure was retried."}, []string{"sni", "target"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshgate_l7_ejections_total",
			Help: "Instances of terminated L7 exports' targets ejected by outlier detection, by the target's server name and the instance."}, []string{"sni", "target"}),
		ejectedNow: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshgate_l7_ejected_instances",
			Help: "Instances of terminated L7 exports' targets ejected by outlier detection now, by the target's server name."}, []string{"sni"}),
	}
	if opts.Envoy != nil {
		l.envoy = newEnvoyL7(*opts.Envoy)
	}
	return l
}

// Refused counts a refusal by reason (routing/l7.Observer).
func (l *L7) Refused(reason string) { l.refused.WithLabelValues(reason).Inc() }

// Retried counts a retry of target's instance (routing/l7.Observer).
func (l *L7) Retried(target, instance string) {
	l.retries.WithLabelValues(l.snis.of(target), l.targets.of(instance)).Inc()
	if l.envoy != nil {
		l.envoy.cluster(target).retries.Add(1)
	}
}

// Ejected counts an ejection of target's instance, or its end
// (routing/l7.Observer).
func (l *L7) Ejected(target, instance string, ejected bool) {
	sni := l.snis.of(target)
	var c *l7Cluster
	if l.envoy != nil {
		c = l.envoy.cluster(target)
	}
	if !ejected {
		l.ejectedNow.WithLabelValues(sni).Dec()
		if c != nil {
			c.active.Add(-1)
		}
		return
	}
	l.ejections.WithLabelValues(sni, l.targets.of(instance)).Inc()
	l.ejectedNow.WithLabelValues(sni).Inc()
	if c != nil {
		c.enforced.Add(1)
		c.active.Add(1)
	}
}

// Describe implements prometheus.Collector.
func (l *L7) Describe(ch chan<- *prometheus.Desc) {
	l.refused.Describe(ch)
	l.retries.Describe(ch)
	l.ejections.Describe(ch)
	l.ejectedNow.Describe(ch)
	if l.envoy != nil {
		ch <- l.envoy.retry
		ch <- l.envoy.enforced
		ch <- l.envoy.active
	}
}

// Collect implements prometheus.Collector.
func (l *L7) Collect(ch chan<- prometheus.Metric) {
	l.refused.Collect(ch)
	l.retries.Collect(ch)
	l.ejections.Collect(ch)
	l.ejectedNow.Collect(ch)
	if l.envoy != nil {
		l.envoy.collect(ch)
	}
}

// envoyL7 is the Envoy-compatible statistics of the terminator's clusters.
type envoyL7 struct {
	vals                    []string // the fixed labels' values
	retry, enforced, active *prometheus.Desc

	mu       sync.RWMutex
	clusters map[string]*l7Cluster // by target SNI
}

type l7Cluster struct {
	labels                    []string // envoy_cluster_name, the consul tags
	retries, enforced, active atomic.Int64
}

func newEnvoyL7(opts Envoy) *envoyL7 {
	fixed, vals := fixedLabels(opts)
	names := append(append(append([]string{}, fixed...), "envoy_cluster_name"), consulClusterLabels...)
	return &envoyL7{vals: vals, clusters: map[string]*l7Cluster{},
		retry:    prometheus.NewDesc("envoy_cluster_upstream_rq_retry", "Total request retries.", names, nil),
		enforced: prometheus.NewDesc("envoy_cluster_outlier_detection_ejections_enforced_total", "Number of enforced ejections due to any outlier type.", names, nil),
		active:   prometheus.NewDesc("envoy_cluster_outlier_detection_ejections_active", "Number of currently ejected hosts.", names, nil),
	}
}

// cluster returns the statistics of the exported cluster of target (a
// chain target's SNI), as Consul names it.
func (e *envoyL7) cluster(target string) *l7Cluster {
	e.mu.RLock()
	c := e.clusters[target]
	e.mu.RUnlock()
	if c != nil {
		return c
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c = e.clusters[target]; c == nil {
		short, tags := clusterLabels(exportedPrefix + target)
		c = &l7Cluster{labels: append([]string{short}, tags...)}
		e.clusters[target] = c
	}
	return c
}

func (e *envoyL7) collect(ch chan<- prometheus.Metric) {
	e.mu.RLock()
	targets := make([]string, 0, len(e.clusters))
	for t := range e.clusters {
		targets = append(targets, t)
	}
	e.mu.RUnlock()
	sort.Strings(targets)
	for _, t := range targets {
		c := e.cluster(t)
		labels := append(append([]string{}, e.vals...), c.labels...)
		ch <- prometheus.MustNewConstMetric(e.retry, prometheus.CounterValue, float64(c.retries.Load()), labels...)
		ch <- prometheus.MustNewConstMetric(e.enforced, prometheus.CounterValue, float64(c.enforced.Load()), labels...)
		ch <- prometheus.MustNewConstMetric(e.active, prometheus.GaugeValue, float64(c.active.Load()), labels...)
	}
}
