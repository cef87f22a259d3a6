package gateway

import (
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of outlier detection, Envoy's: five consecutive failures eject
// a target for 30 seconds.
const (
	DefaultEjectAfter = 5
	DefaultEjectFor   = 30 * time.Second
)

// outliers remembers the targets that fail to connect, so that later
// connections try the healthy ones first instead of paying the connect
// timeout again and again. A target with EjectAfter consecutive failures is
// ejected for EjectFor: it is tried only after every target that is not.
// Nothing is ever skipped, so the last endpoint is never ejected for good:
// when all are ejected, all are still tried.
type outliers struct {
	after  int
	period time.Duration
	now    func() time.Time

	tracked atomic.Int32 // len(m), read without the lock on the fast path
	mu      sync.Mutex
	m       map[string]*targetHealth
}

type targetHealth struct {
	consecutive  int
	ejectedUntil time.Time
}

func newOutliers(after int, period time.Duration) *outliers {
	if after == 0 {
		after = DefaultEjectAfter
	}
	if period <= 0 {
		period = DefaultEjectFor
	}
	return &outliers{after: after, period: period, now: time.Now, m: map[string]*targetHealth{}}
}

// order returns targets with the ejected ones moved to the end (soonest
// back first), keeping the order of the rest; targets itself when none is
// ejected, which is the common case and costs no allocation.
func (o *outliers) order(targets []string) []string {
	if o == nil || o.after < 0 || o.tracked.Load() == 0 {
		return targets
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	var healthy, ejected []string
	for i, t := range targets {
		if h := o.m[t]; h != nil && now.Before(h.ejectedUntil) {
			if ejected == nil {
				healthy = append(make([]string, 0, len(targets)), targets[:i]...)
			}
			ejected = append(ejected, t)
			continue
		}
		if ejected != nil {
			healthy = append(healthy, t)
		}
	}
	if ejected == nil {
		return targets
	}
	for i := 1; i < len(ejected); i++ { // insertion sort: a handful at most
		for j := i; j > 0 && o.m[ejected[j]].ejectedUntil.Before(o.m[ejected[j-1]].ejectedUntil); j-- {
			ejected[j], ejected[j-1] = ejected[j-1], ejected[j]
		}
	}
	return append(healthy, ejected...)
}

// failed records a failed dial and reports whether it ejected the target
// (it had not been ejected a moment before).
func (o *outliers) failed(target string) (ejected bool) {
	if o == nil || o.after < 0 {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.m[target]
	if h == nil {
		h = &targetHealth{}
		o.m[target] = h
		o.tracked.Store(int32(len(o.m)))
	}
	h.consecutive++
	now := o.now()
	if h.consecutive >= o.after && !now.Before(h.ejectedUntil) {
		h.ejectedUntil = now.Add(o.period)
		return true
	}
	return false
}

// succeeded forgets a target's failures.
func (o *outliers) succeeded(target string) {
	if o == nil || o.tracked.Load() == 0 {
		return
	}
	o.mu.Lock()
	if _, ok := o.m[target]; ok {
		delete(o.m, target)
		o.tracked.Store(int32(len(o.m)))
	}
	o.mu.Unlock()
}
