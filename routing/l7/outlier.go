package l7

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// OutlierDetection is Envoy's outlier detection for one cluster, with the
// fields Consul's exported clusters leave at Envoy's defaults
// (makeUpstreamClustersForDiscoveryChain sets an empty OutlierDetection:
// its upstream config, and so its PassiveHealthCheck, is nil for a mesh
// gateway's exports). The zero value is those defaults; a test may shorten
// them through the Terminator's field.
type OutlierDetection struct {
	// Consecutive5xx is how many 5xx answers in a row eject an instance;
	// a failed connect, a reset and a timeout count as 5xx, as Envoy counts
	// local-origin errors unless told to split them. Zero means 5.
	Consecutive5xx int
	// Interval is how often ejections are reviewed: instances are brought
	// back and success rates judged. Zero means 10 s.
	Interval time.Duration
	// BaseEjectionTime is how long an instance stays out, multiplied by the
	// times it has been ejected (up to MaxEjectionTime). Zero means 30 s.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps an ejection. Zero means 300 s.
	MaxEjectionTime time.Duration
	// MaxEjectionPercent is the share of a cluster's instances that may be
	// out at once, checked before each ejection (so one instance can always
	// go). Zero means 10.
	MaxEjectionPercent int
}

// Envoy's outlier detection defaults (outlier_detection.proto).
const (
	defaultConsecutive5xx     = 5
	defaultOutlierInterval    = 10 * time.Second
	defaultBaseEjectionTime   = 30 * time.Second
	defaultMaxEjectionTime    = 300 * time.Second
	defaultMaxEjectionPercent = 10
	// Success-rate ejection, enforced at 100 % by default: judged each
	// interval over the instances with at least successRateVolume requests
	// in it, when there are successRateMinHosts of them; an instance whose
	// rate is below mean - successRateStdevFactor x stdev goes.
	successRateMinHosts    = 5
	successRateVolume      = 100
	successRateStdevFactor = 1.9
)

func (o OutlierDetection) withDefaults() OutlierDetection {
	if o.Consecutive5xx <= 0 {
		o.Consecutive5xx = defaultConsecutive5xx
	}
	if o.Interval <= 0 {
		o.Interval = defaultOutlierInterval
	}
	if o.BaseEjectionTime <= 0 {
		o.BaseEjectionTime = defaultBaseEjectionTime
	}
	if o.MaxEjectionTime <= 0 {
		o.MaxEjectionTime = defaultMaxEjectionTime
	}
	o.MaxEjectionTime = max(o.MaxEjectionTime, o.BaseEjectionTime)
	if o.MaxEjectionPercent <= 0 {
		o.MaxEjectionPercent = defaultMaxEjectionPercent
	}
	return o
}

// host is one instance of a cluster: its address and what the load
// balancer and the outlier detector know of it. A host keeps its state
// while its address stays in the cluster's endpoints.
type host struct {
	addr   string
	active atomic.Int64 // requests in flight, for least_request

	consecutive atomic.Int32 // 5xx in a row
	total, ok   atomic.Int64 // requests and successes in this interval

	// Guarded by the detector's mu.
	ejected     bool
	ejectedAt   time.Time
	ejections   int       // times ejected, less one per healthy interval
	lastHealthy time.Time // last return or decrement of ejections
	left        bool      // it left the cluster's endpoints while ejected
}

// detector is one cluster's outlier detection: it keeps the cluster's
// hosts and the picker over those not ejected. Results come in lock-free;
// an ejection, a review (at most once per Interval, done by whichever
// request comes after it is due: there is no goroutine) or a change of
// endpoints takes the lock and publishes a new state.
type detector struct {
	cfg OutlierDetection
	now func() time.Time
	// onChange hears each ejection (true) and each return (false), after
	// the change and outside the lock; a host that leaves the cluster's
	// endpoints while ejected returns too (its left set), as Envoy's
	// ejections_active no longer counts it.
	onChange func(h *host, ejected bool)

	state      atomic.Pointer[hostState]
	nextReview atomic.Int64 // unix nanoseconds

	mu sync.Mutex // serializes changes of state
}

// hostState is a cluster's hosts, its policy and the picker over the
// hosts not ejected; never changed once published.
type hostState struct {
	all    []*host
	b      balance
	picker *picker
}

// update sets the cluster's endpoints and policy: hosts whose address
// stays keep their state, new ones start healthy, and an ejected one that
// leaves is reported back (onChange false). It publishes a new state only
// when something changed.
func (d *detector) update(addrs []string, b balance) {
	if s := d.state.Load(); s != nil && s.b == b && sameAddrs(s.all, addrs) {
		return
	}
	var left []*host
	defer func() {
		if d.onChange != nil {
			for _, h := range left {
				d.onChange(h, false)
			}
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.state.Load()
	if s != nil && s.b == b && sameAddrs(s.all, addrs) {
		return
	}
	old := map[string]*host{}
	if s != nil {
		for _, h := range s.all {
			old[h.addr] = h
		}
	}
	hosts := make([]*host, 0, len(addrs))
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if seen[a] {
			continue // a repeated address counts once
		}
		seen[a] = true
		h := old[a]
		if h == nil {
			h = &host{addr: a}
		}
		hosts = append(hosts, h)
	}
	for a, h := range old {
		if !seen[a] && h.ejected {
			h.ejected, h.left = false, true
			left = append(left, h)
		}
	}
	d.publishLocked(hosts, b)
}

// sameAddrs reports whether hosts have the addresses addrs, in order.
func sameAddrs(hosts []*host, addrs []string) bool {
	if len(hosts) != len(addrs) {
		return false
	}
	for i, h := range hosts {
		if h.addr != addrs[i] {
			return false
		}
	}
	return true
}

// publishLocked publishes hosts and b with a picker over the hosts not
// ejected.
func (d *detector) publishLocked(hosts []*host, b balance) {
	healthy := make([]*host, 0, len(hosts))
	for _, h := range hosts {
		if !h.ejected {
			healthy = append(healthy, h)
		}
	}
	d.state.Store(&hostState{all: hosts, b: b, picker: newPicker(b, healthy)})
}

// republishLocked publishes the current hosts again, after an ejection or
// a return.
func (d *detector) republishLocked() {
	s := d.state.Load()
	d.publishLocked(s.all, s.b)
}

// pick returns a host for a request with hash (see picker.pick), or nil
// when every host is ejected or there is none: the exported clusters'
// panic threshold is 0, so Envoy then answers "no healthy upstream".
func (d *detector) pick(hash uint64, ok bool) *host {
	d.review()
	s := d.state.Load()
	if s == nil {
		return nil
	}
	return s.picker.pick(hash, ok)
}

// result records a request's outcome at h: failed for a 5xx answer or a
// local-origin error (connect failure, reset, timeout).
func (d *detector) result(h *host, failed bool) {
	h.total.Add(1)
	if !failed {
		h.ok.Add(1)
		if h.consecutive.Load() != 0 {
			h.consecutive.Store(0)
		}
		return
	}
	if int(h.consecutive.Add(1)) < d.cfg.Consecutive5xx {
		return
	}
	d.mu.Lock()
	ejected := d.ejectLocked(h)
	d.mu.Unlock()
	if ejected && d.onChange != nil {
		d.onChange(h, true)
	}
}

// ejectLocked ejects h unless it is out already, gone from the cluster, or
// the cluster has its share of ejected hosts (Envoy's ejectHost checks
// the share before this one goes).
func (d *detector) ejectLocked(h *host) bool {
	h.consecutive.Store(0)
	s := d.state.Load()
	if h.ejected || s == nil || !slices.Contains(s.all, h) {
		return false
	}
	out := 0
	for _, x := range s.all {
		if x.ejected {
			out++
		}
	}
	if 100*out/len(s.all) >= d.cfg.MaxEjectionPercent {
		return false
	}
	h.ejected, h.ejectedAt = true, d.now()
	h.ejections++
	d.republishLocked()
	return true
}

// review runs the interval's work when it is due: brings back the hosts
// whose ejection is over, lowers the multiplier of those healthy for a
// whole base ejection time, and ejects success-rate outliers.
func (d *detector) review() {
	now := d.now()
	next := d.nextReview.Load()
	if now.UnixNano() < next {
		return
	}
	// Reviews keep to the interval's beat from the first request on, as
	// Envoy's timer does, however long no request came.
	step := int64(d.cfg.Interval)
	later := now.UnixNano() + step
	if next != 0 {
		later = next + step*((now.UnixNano()-next)/step+1)
	}
	if !d.nextReview.CompareAndSwap(next, later) || next == 0 {
		return // another request reviews; or the first one starts the clock
	}
	var changed []*host
	var ejectedNow []*host
	d.mu.Lock()
	s := d.state.Load()
	if s == nil {
		d.mu.Unlock()
		return
	}
	for _, h := range s.all {
		switch {
		case h.ejected:
			if now.Sub(h.ejectedAt) >= min(d.cfg.BaseEjectionTime*time.Duration(h.ejections), d.cfg.MaxEjectionTime) {
				h.ejected, h.lastHealthy = false, now
				h.consecutive.Store(0)
				changed = append(changed, h)
			}
		case h.ejections > 0 && now.Sub(h.lastHealthy) >= d.cfg.BaseEjectionTime:
			h.ejections--
			h.lastHealthy = now
		}
	}
	for _, h := range d.successRateOutliersLocked() {
		if d.ejectLocked(h) {
			ejectedNow = append(ejectedNow, h)
		}
	}
	if len(changed) > 0 {
		d.republishLocked()
	}
	d.mu.Unlock()
	if d.onChange != nil {
		for _, h := range changed {
			d.onChange(h, false)
		}
		for _, h := range ejectedNow {
			d.onChange(h, true)
		}
	}
}

// successRateOutliersLocked judges the interval's success rates, as
// Envoy's success-rate detection with its defaults, and starts a new
// interval.
func (d *detector) successRateOutliersLocked() []*host {
	type rate struct {
		h *host
		r float64
	}
	var rates []rate
	for _, h := range d.state.Load().all {
		total, ok := h.total.Swap(0), h.ok.Swap(0)
		if h.ejected || total < successRateVolume {
			continue
		}
		rates = append(rates, rate{h, 100 * float64(ok) / float64(total)})
	}
	if len(rates) < successRateMinHosts {
		return nil
	}
	var sum float64
	for _, r := range rates {
		sum += r.r
	}
	mean := sum / float64(len(rates))
	var variance float64
	for _, r := range rates {
		variance += (r.r - mean) * (r.r - mean)
	}
	threshold := mean - successRateStdevFactor*math.Sqrt(variance/float64(len(rates)))
	var out []*host
	for _, r := range rates {
		if r.r < threshold {
			out = append(out, r.h)
		}
	}
	return out
}
