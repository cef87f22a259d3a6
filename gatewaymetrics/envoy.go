package gatewaymetrics

import (
	"errors"
	"net"
	"os"
	"runtime/metrics"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/prometheus/client_golang/prometheus"
)

// Envoy turns on, in Options, the Envoy-compatible metrics: the names,
// types, labels and label values that Envoy reports as Consul 1.22's mesh
// gateway (consul connect envoy -gateway mesh), for what a TCP gateway can
// count honestly, so that Consul's Grafana dashboards and alerts written
// for Envoy work. Every series carries the labels Consul's bootstrap
// configuration fixes (local_cluster, consul_source_service,
// consul_source_namespace, consul_source_partition,
// consul_source_datacenter); cluster series carry the consul_destination_*
// (and the older consul_*) labels that Consul's stats_tags extract from the
// cluster's name. docs/operate.md lists every metric and what is left out.
type Envoy struct {
	// Service is the gateway's Consul service name: local_cluster and
	// consul_source_service. Empty means "mesh-gateway".
	Service string
	// Namespace and Partition are the gateway's; empty means "default".
	Namespace, Partition string
	// Datacenter is the gateway's datacenter (consul_source_datacenter,
	// left out when empty, as Consul does when it does not know it), and the
	// local one in cluster names.
	Datacenter string
	// Listener names the listener a connection reached, from its local
	// address, for the tcp_proxy statistics' prefix
	// (mesh_gateway_local.<name>): Consul names the gateway's default
	// listener "default", and those of envoy_gateway_bind_addresses and
	// tagged addresses by their keys. Nil means "default" for all.
	Listener func(local net.Addr) string
	// Live reports whether the gateway serves (envoy_server_live 1) or
	// drains (0); nil means it serves.
	Live func() bool
	// Clusters, when set, lists at each scrape the clusters the gateway
	// would have and their endpoints (see MeshClusters), for
	// envoy_cluster_membership_total and _healthy; their counters are
	// reported, at zero, before any traffic, as Envoy reports them.
	Clusters func() []Cluster
	// Start is when the gateway started (envoy_server_uptime); zero means
	// when the Metrics were made.
	Start time.Time
}

// Cluster is one Envoy cluster of a gateway and its endpoints.
type Cluster struct {
	// Name is the cluster's name, as ConsulCluster gives it.
	Name string
	// Endpoints counts its endpoints, those Consul hands Envoy marked
	// unhealthy included (envoy_cluster_membership_total); Healthy those
	// of them neither marked unhealthy nor ejected by outlier detection
	// (envoy_cluster_membership_healthy).
	Endpoints, Healthy int
}

// envoyMetrics is the state of the Envoy-compatible metrics.
type envoyMetrics struct {
	opts  Envoy
	fixed []string // the fixed labels' names
	vals  []string // and values
	start time.Time

	mu       sync.RWMutex
	clusters map[string]*clusterStats
	tcp      map[string]*tcpStats

	clusterCounterDescs, tcpDescs                     []*prometheus.Desc
	clusterActive, membershipTotal, membershipHealthy *prometheus.Desc
	live, uptime, allocated, heap, totalConns         *prometheus.Desc
}

type clusterStats struct {
	labels                 []string // values, after the fixed ones: envoy_cluster_name, the consul tags
	total, connectFail     atomic.Int64
	connectTimeout, active atomic.Int64
	rxBytes, txBytes       atomic.Int64
}

type tcpStats struct {
	total, noRoute   atomic.Int64
	rxBytes, txBytes atomic.Int64
}

func newEnvoyMetrics(opts Envoy) *envoyMetrics {
	if opts.Service == "" {
		opts.Service = "mesh-gateway"
	}
	e := &envoyMetrics{opts: opts, start: opts.Start, clusters: map[string]*clusterStats{}, tcp: map[string]*tcpStats{}}
	if e.start.IsZero() {
		e.start = time.Now()
	}
	e.fixed, e.vals = fixedLabels(opts)
	e.descs()
	return e
}

// fixedLabels returns the names and values of the labels Consul's
// bootstrap configuration puts on every statistic of the gateway opts
// describes.
func fixedLabels(opts Envoy) (names, values []string) {
	service, ns, ap := opts.Service, opts.Namespace, opts.Partition
	if service == "" {
		service = "mesh-gateway"
	}
	if ns == "" {
		ns = "default"
	}
	if ap == "" {
		ap = "default"
	}
	names = []string{"local_cluster", "consul_source_service", "consul_source_namespace", "consul_source_partition"}
	values = []string{service, service, ns, ap}
	if opts.Datacenter != "" {
		names = append(names, "consul_source_datacenter")
		values = append(values, opts.Datacenter)
	}
	return names, values
}

func (e *envoyMetrics) listener(local net.Addr) string {
	if e.opts.Listener == nil {
		return "default"
	}
	if n := e.opts.Listener(local); n != "" {
		return n
	}
	return "default"
}

func (e *envoyMetrics) cluster(name string) *clusterStats {
	e.mu.RLock()
	c := e.clusters[name]
	e.mu.RUnlock()
	if c != nil {
		return c
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c = e.clusters[name]; c == nil {
		short, tags := clusterLabels(name)
		c = &clusterStats{labels: append([]string{short}, tags...)}
		e.clusters[name] = c
	}
	return c
}

func (e *envoyMetrics) tcpPrefix(prefix string) *tcpStats {
	e.mu.RLock()
	t := e.tcp[prefix]
	e.mu.RUnlock()
	if t != nil {
		return t
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if t = e.tcp[prefix]; t == nil {
		t = &tcpStats{}
		e.tcp[prefix] = t
	}
	return t
}

// inProcess reports a connection a Route.Serve took (an L7 export the
// gateway terminates): Envoy's HTTP connection manager serves those, and
// its upstream connections are the terminator's, so neither the tcp_proxy
// nor the cluster statistics count it.
func inProcess(r *gateway.ConnRecord) bool { return r.Target == gateway.TargetInProcess }

func (e *envoyMetrics) connected(r *gateway.ConnRecord) {
	if inProcess(r) {
		return
	}
	c := e.cluster(ConsulCluster(r, e.opts.Datacenter))
	c.total.Add(1)
	c.active.Add(1)
	e.tcpPrefix(tcpStatPrefix(r, e.listener(r.Local), e.opts.Datacenter, false)).total.Add(1)
}

func (e *envoyMetrics) dialFailed(r *gateway.ConnRecord, err error) {
	c := e.cluster(ConsulCluster(r, e.opts.Datacenter))
	c.total.Add(1)
	c.connectFail.Add(1)
	if isTimeout(err) {
		c.connectTimeout.Add(1)
	}
}

func (e *envoyMetrics) closed(r *gateway.ConnRecord) {
	if inProcess(r) {
		return
	}
	switch {
	case r.Outcome == gateway.OutcomeForwarded:
		c := e.cluster(ConsulCluster(r, e.opts.Datacenter))
		c.active.Add(-1)
		c.txBytes.Add(r.Stats.ClientToUpstream)
		c.rxBytes.Add(r.Stats.UpstreamToClient)
		t := e.tcpPrefix(tcpStatPrefix(r, e.listener(r.Local), e.opts.Datacenter, false))
		t.rxBytes.Add(r.Stats.ClientToUpstream)
		t.txBytes.Add(r.Stats.UpstreamToClient)
	case r.Outcome == gateway.ReasonDialFailed:
		// It reached its tcp_proxy filter, which found no upstream.
		e.tcpPrefix(tcpStatPrefix(r, e.listener(r.Local), e.opts.Datacenter, false)).total.Add(1)
	case noRoute(r.Outcome):
		t := e.tcpPrefix(tcpStatPrefix(r, e.listener(r.Local), e.opts.Datacenter, true))
		t.total.Add(1)
		t.noRoute.Add(1)
	}
}

// noRoute reports whether Envoy's mesh gateway would have counted a
// connection refused for reason as downstream_cx_no_route on its catch-all
// filter chain: any name its filter chains do not route (every refusal of
// a Router), and a connection that is not TLS at all (Envoy's TLS
// inspector lets it through without a name). The refusals while the
// ClientHello is read (a timeout, a malformed or too large hello, a close)
// end in Envoy's listener filters, before any filter chain; a refusal
// of meshgate's own (a loop, a Router's failure, the shutdown) has no
// Envoy counterpart.
func noRoute(reason string) bool {
	switch reason {
	case gateway.ReasonNotTLS, gateway.ReasonNoRoute:
		return true
	case gateway.ReasonMalformed, gateway.ReasonBadName, gateway.ReasonTooLarge, gateway.ReasonPeekTimeout,
		gateway.ReasonClosed, gateway.ReasonRouterError, gateway.ReasonDialFailed, gateway.ReasonShutdown, gateway.ReasonLoop:
		return false
	}
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

var (
	envoyClusterCounters = []struct{ name, help string }{
		{"upstream_cx_total", "Total upstream connections, each dial of an endpoint."},
		{"upstream_cx_connect_fail", "Total upstream connection failures."},
		{"upstream_cx_connect_timeout", "Total upstream connection timeouts."},
		{"upstream_cx_rx_bytes_total", "Total bytes received from upstreams, counted when a connection closes."},
		{"upstream_cx_tx_bytes_total", "Total bytes sent to upstreams, counted when a connection closes."},
	}
	envoyTCPCounters = []struct{ name, help string }{
		{"downstream_cx_total", "Total connections handled by the filter."},
		{"downstream_cx_no_route", "Connections for which no matching route was found."},
		{"downstream_cx_rx_bytes_total", "Total bytes received from downstream, counted when a connection closes."},
		{"downstream_cx_tx_bytes_total", "Total bytes written to downstream, counted when a connection closes."},
	}
)

// descs makes the descriptions; called once.
func (e *envoyMetrics) descs() {
	clusterLabelNames := append(append(append([]string{}, e.fixed...), "envoy_cluster_name"), consulClusterLabels...)
	for _, c := range envoyClusterCounters {
		e.clusterCounterDescs = append(e.clusterCounterDescs, prometheus.NewDesc("envoy_cluster_"+c.name, c.help, clusterLabelNames, nil))
	}
	e.clusterActive = prometheus.NewDesc("envoy_cluster_upstream_cx_active", "Total active upstream connections.", clusterLabelNames, nil)
	e.membershipTotal = prometheus.NewDesc("envoy_cluster_membership_total", "Current cluster membership total.", clusterLabelNames, nil)
	e.membershipHealthy = prometheus.NewDesc("envoy_cluster_membership_healthy", "Current cluster healthy total (neither unhealthy in Consul nor ejected by outlier detection).", clusterLabelNames, nil)
	tcpLabelNames := append(append([]string{}, e.fixed...), "envoy_tcp_prefix")
	for _, c := range envoyTCPCounters {
		e.tcpDescs = append(e.tcpDescs, prometheus.NewDesc("envoy_tcp_"+c.name, c.help, tcpLabelNames, nil))
	}
	e.live = prometheus.NewDesc("envoy_server_live", "1 if the server is not draining, 0 otherwise.", e.fixed, nil)
	e.uptime = prometheus.NewDesc("envoy_server_uptime", "Current server uptime in seconds.", e.fixed, nil)
	e.allocated = prometheus.NewDesc("envoy_server_memory_allocated", "Current amount of allocated memory in bytes (the Go heap's live and not yet swept objects).", e.fixed, nil)
	e.heap = prometheus.NewDesc("envoy_server_memory_heap_size", "Current reserved heap size in bytes (the Go heap's memory not returned to the system).", e.fixed, nil)
	e.totalConns = prometheus.NewDesc("envoy_server_total_connections", "Total connections open.", e.fixed, nil)
}

func (e *envoyMetrics) describe(ch chan<- *prometheus.Desc) {
	for _, d := range e.clusterCounterDescs {
		ch <- d
	}
	for _, d := range e.tcpDescs {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{e.clusterActive, e.membershipTotal, e.membershipHealthy, e.live, e.uptime, e.allocated, e.heap, e.totalConns} {
		ch <- d
	}
}

func (e *envoyMetrics) collect(ch chan<- prometheus.Metric, open int64) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(append([]string{}, e.vals...), labels...)...)
	}
	counter := func(d *prometheus.Desc, v int64, labels []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(append([]string{}, e.vals...), labels...)...)
	}
	live := 1.0
	if e.opts.Live != nil && !e.opts.Live() {
		live = 0
	}
	gauge(e.live, live)
	gauge(e.uptime, float64(int64(time.Since(e.start).Seconds())))
	allocated, heap := goHeap()
	gauge(e.allocated, allocated)
	gauge(e.heap, heap)
	gauge(e.totalConns, float64(open))

	var members []Cluster
	if e.opts.Clusters != nil {
		members = e.opts.Clusters()
		for _, m := range members {
			e.cluster(m.Name) // counters at zero before traffic
		}
	}
	e.mu.RLock()
	names := make([]string, 0, len(e.clusters))
	for n := range e.clusters {
		names = append(names, n)
	}
	prefixes := make([]string, 0, len(e.tcp))
	for p := range e.tcp {
		prefixes = append(prefixes, p)
	}
	e.mu.RUnlock()
	sort.Strings(names)
	for _, n := range names {
		c := e.cluster(n)
		for i, v := range []int64{c.total.Load(), c.connectFail.Load(), c.connectTimeout.Load(), c.rxBytes.Load(), c.txBytes.Load()} {
			counter(e.clusterCounterDescs[i], v, c.labels)
		}
		gauge(e.clusterActive, float64(c.active.Load()), c.labels...)
	}
	for _, m := range members {
		c := e.cluster(m.Name)
		gauge(e.membershipTotal, float64(m.Endpoints), c.labels...)
		gauge(e.membershipHealthy, float64(m.Healthy), c.labels...)
	}
	for _, p := range prefixes {
		t := e.tcpPrefix(p)
		for i, v := range []int64{t.total.Load(), t.noRoute.Load(), t.rxBytes.Load(), t.txBytes.Load()} {
			counter(e.tcpDescs[i], v, []string{p})
		}
	}
}

// goHeap returns the Go heap's objects, and its memory not returned to
// the system, in bytes (runtime/metrics, which does not stop the world).
func goHeap() (allocated, reserved float64) {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(s)
	var v [3]float64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = float64(s[i].Value.Uint64())
		}
	}
	return v[0], v[0] + v[1] + v[2]
}

// ListenerNames returns an Envoy.Listener that names a connection's
// listener by the port it reached: names maps "host:port" bind addresses
// to listener names (Consul's "default", or an envoy_gateway_bind_addresses
// key). A port no address has is "default".
func ListenerNames(names map[string]string) func(local net.Addr) string {
	byPort := map[string]string{}
	for addr, name := range names {
		if _, port, err := net.SplitHostPort(addr); err == nil {
			byPort[port] = name
		}
	}
	return func(local net.Addr) string {
		if local == nil {
			return "default"
		}
		_, port, err := net.SplitHostPort(local.String())
		if err != nil {
			return "default"
		}
		if n, ok := byPort[port]; ok {
			return n
		}
		return "default"
	}
}
