// Package outlier remembers the addresses that fail to connect, so that
// later connections try the others first instead of paying the connect
// timeout again and again, and probes the failed ones until they answer:
// the outlier ejection of the gateway's Server and of sidecar.Dialer.
package outlier

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of outlier detection: see gateway.Server.EjectAfter and
// EjectFor.
const (
	DefaultEjectAfter = 1
	// DefaultEjectFor is the longest wait between two probes of an ejected
	// target; the first comes after probeFirst, each later one waits
	// twice as long, up to this.
	DefaultEjectFor = 30 * time.Second
	probeFirst      = 250 * time.Millisecond
	// forgetAfter ends the probing of an ejected target that no route has
	// named for this long: it was taken out of the catalog, most likely.
	forgetAfter = 10 * time.Minute
)

// Set remembers the targets that fail to connect, so that later
// connections try the others first instead of paying the connect timeout
// again and again. A target with After consecutive failures is ejected:
// it is tried only after every target that is not, until a probe connects
// to it (or a client's dial of it does, when all others failed). Nothing is
// ever skipped, so the last endpoint is never out for good: when all are
// ejected, all are still tried.
// Its configuration (Dial, Timeout, Ctx, OnReturn) is set before its
// first use; New gives the rest.
type Set struct {
	after   int
	maxWait time.Duration
	now     func() time.Time
	// Dial, if set, probes ejected targets; nil: no probes (a target is
	// readmitted only by a client's dial that connects).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Timeout is a probe's connect timeout.
	Timeout func() time.Duration
	// Ctx's end stops the probes.
	Ctx context.Context
	// OnReturn hears of a target a probe found back.
	OnReturn func(target string)

	tracked atomic.Int32 // len(m), read without the lock on the fast path
	mu      sync.Mutex
	m       map[string]*targetHealth
	probes  sync.WaitGroup
}

type targetHealth struct {
	consecutive int
	ejected     bool
	since       time.Time // ejected at
	wanted      time.Time // last named by a route while ejected
}

// New returns a Set that ejects a target after after consecutive failed
// dials (zero: DefaultEjectAfter; negative: never) and probes it at most
// maxWait apart (zero or less: DefaultEjectFor).
func New(after int, maxWait time.Duration) *Set {
	if after == 0 {
		after = DefaultEjectAfter
	}
	if maxWait <= 0 {
		maxWait = DefaultEjectFor
	}
	return &Set{after: after, maxWait: maxWait, now: time.Now, m: map[string]*targetHealth{},
		Timeout: func() time.Duration { return 5 * time.Second }, Ctx: context.Background(), OnReturn: func(string) {}}
}

// Order returns targets with the ejected ones moved to the end (the
// longest ejected last), keeping the order of the rest; targets itself when
// none is ejected, which is the common case and costs no allocation.
func (o *Set) Order(targets []string) []string {
	if o == nil || o.after < 0 || o.tracked.Load() == 0 {
		return targets
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	var healthy, ejected []string
	for i, t := range targets {
		if h := o.m[t]; h != nil && h.ejected {
			h.wanted = now
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
		for j := i; j > 0 && o.m[ejected[j]].since.After(o.m[ejected[j-1]].since); j-- {
			ejected[j], ejected[j-1] = ejected[j-1], ejected[j]
		}
	}
	return append(healthy, ejected...)
}

// Mask reports which of targets are ejected, as Order would move them;
// nil when none is, the common case, which costs no allocation.
func (o *Set) Mask(targets []string) []bool {
	if o == nil || o.after < 0 || o.tracked.Load() == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []bool
	now := o.now()
	for i, t := range targets {
		if h := o.m[t]; h != nil && h.ejected {
			h.wanted = now
			if out == nil {
				out = make([]bool, len(targets))
			}
			out[i] = true
		}
	}
	return out
}

// Failed records a failed dial and reports whether it ejected the target
// (it had not been ejected a moment before); an ejected target is probed
// until it answers.
func (o *Set) Failed(target string) (ejected bool) {
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
	if h.consecutive < o.after || h.ejected {
		return false
	}
	now := o.now()
	h.ejected, h.since, h.wanted = true, now, now
	if o.Dial != nil {
		o.probes.Add(1)
		go o.probe(target, h)
	}
	return true
}

// Succeeded forgets a target's failures: a client's dial of it worked.
func (o *Set) Succeeded(target string) {
	if o == nil || o.tracked.Load() == 0 {
		return
	}
	o.mu.Lock()
	o.forgetLocked(target)
	o.mu.Unlock()
}

func (o *Set) forgetLocked(target string) {
	if _, ok := o.m[target]; ok {
		delete(o.m, target)
		o.tracked.Store(int32(len(o.m)))
	}
}

// probe dials an ejected target with back-off until it connects (the
// target is readmitted), it is readmitted otherwise, no route has named it
// for forgetAfter (it is forgotten), or the server closes. A probe is a TCP
// connect closed at once, as Consul's own TCP checks are.
func (o *Set) probe(target string, h *targetHealth) {
	defer o.probes.Done()
	wait := probeFirst
	for {
		t := time.NewTimer(wait)
		select {
		case <-o.Ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		o.mu.Lock()
		current := o.m[target] == h
		stale := o.now().Sub(h.wanted) > forgetAfter
		if current && stale {
			o.forgetLocked(target)
		}
		o.mu.Unlock()
		if !current || stale {
			return // readmitted by a client's dial, or no longer routed
		}
		ctx, cancel := context.WithTimeout(o.Ctx, o.Timeout())
		c, err := o.Dial(ctx, "tcp", target)
		cancel()
		if err == nil {
			c.Close()
			o.mu.Lock()
			back := o.m[target] == h
			if back {
				o.forgetLocked(target)
			}
			o.mu.Unlock()
			if back {
				o.OnReturn(target)
			}
			return
		}
		wait = min(2*wait, o.maxWait)
	}
}

// Ejected returns the targets ejected now, with when each was ejected;
// nil when there are none.
func (o *Set) Ejected() map[string]time.Time {
	if o == nil || o.tracked.Load() == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var out map[string]time.Time
	for t, h := range o.m {
		if h.ejected {
			if out == nil {
				out = map[string]time.Time{}
			}
			out[t] = h.since
		}
	}
	return out
}

// After is the number of consecutive failed dials that ejects a target;
// negative: never.
func (o *Set) After() int { return o.after }

// Wait waits for the probes to end (after Ctx ends).
func (o *Set) Wait() { o.probes.Wait() }
