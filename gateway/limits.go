package gateway

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/meshgate/meshgate/internal/balance"
)

// routeCounts holds, for each route Name, the connections it has open and
// the turn of its targets; and for each target of a least_request route,
// its open connections. Entries go when their counts fall to zero and the
// maps have grown, so that routes and targets the catalog dropped are not
// kept for the life of the process.
type routeCounts struct {
	routes  sync.Map // route name -> *routeCount
	targets sync.Map // target -> *targetCount
	added   atomic.Int64
}

// dead marks a count that has been swept out of its map: who finds it
// takes a fresh one.
const dead = -1 << 40

// sweepEvery is how many entries may be added between two sweeps of idle
// ones.
const sweepEvery = 4096

// routeCount is one route's connections: open (dialling or forwarded) and
// pending (dialling), and the turn of its targets.
type routeCount struct {
	open, pending atomic.Int64
	picker        balance.Picker
}

// targetCount is one target's forwarded connections, for least_request.
type targetCount struct{ open atomic.Int64 }

// acquire counts one more connection on count (returning the new count),
// or reports false when count was swept.
func acquire(count *atomic.Int64) (int64, bool) {
	for {
		v := count.Load()
		if v < 0 {
			return 0, false
		}
		if count.CompareAndSwap(v, v+1) {
			return v + 1, true
		}
	}
}

// route returns route name's count with this connection counted open,
// and the open count.
func (rc *routeCounts) route(name string) (*routeCount, int64) {
	for {
		e, ok := rc.routes.Load(name)
		if !ok {
			e, ok = rc.routes.LoadOrStore(name, &routeCount{})
			if !ok {
				rc.maybeSweep()
			}
		}
		r := e.(*routeCount)
		if n, ok := acquire(&r.open); ok {
			return r, n
		}
		rc.routes.CompareAndDelete(name, r)
	}
}

// target returns target's count with one more connection counted.
func (rc *routeCounts) target(target string) *targetCount {
	for {
		e, ok := rc.targets.Load(target)
		if !ok {
			e, ok = rc.targets.LoadOrStore(target, &targetCount{})
			if !ok {
				rc.maybeSweep()
			}
		}
		t := e.(*targetCount)
		if _, ok := acquire(&t.open); ok {
			return t
		}
		rc.targets.CompareAndDelete(target, t)
	}
}

// openOn returns how many connections target has open (least_request).
func (rc *routeCounts) openOn(target string) int {
	if e, ok := rc.targets.Load(target); ok {
		return int(max(e.(*targetCount).open.Load(), 0))
	}
	return 0
}

// maybeSweep drops the idle entries every sweepEvery additions.
func (rc *routeCounts) maybeSweep() {
	if rc.added.Add(1)%sweepEvery != 0 {
		return
	}
	rc.routes.Range(func(k, v any) bool {
		if r := v.(*routeCount); r.open.CompareAndSwap(0, dead) {
			rc.routes.CompareAndDelete(k, r)
		}
		return true
	})
	rc.targets.Range(func(k, v any) bool {
		if t := v.(*targetCount); t.open.CompareAndSwap(0, dead) {
			rc.targets.CompareAndDelete(k, t)
		}
		return true
	})
}

// admit counts a routed connection on its route and checks r.Limits: it
// returns the route's count, or the error of the limit the connection is
// over (then nothing stays counted).
func (s *Server) admit(r *Route) (*routeCount, error) {
	count, open := s.counts.route(r.Name)
	l := r.Limits
	over := func(field string, limit int, n int64) error {
		return fmt.Errorf("gateway: route %q is at its %s (%d): %d connections would be open", r.Name, field, limit, n)
	}
	var err error
	switch {
	case l.MaxConnections != nil && open > int64(*l.MaxConnections):
		err = over("MaxConnections", *l.MaxConnections, open)
	case l.MaxConcurrentRequests != nil && open > int64(*l.MaxConcurrentRequests):
		err = over("MaxConcurrentRequests", *l.MaxConcurrentRequests, open)
	}
	if err == nil && r.Serve == nil {
		pending := count.pending.Add(1)
		if l.MaxPendingRequests != nil && pending > int64(*l.MaxPendingRequests) {
			count.pending.Add(-1)
			err = fmt.Errorf("gateway: route %q is at its MaxPendingRequests (%d): %d connections would be dialling at once", r.Name, *l.MaxPendingRequests, pending)
		}
	}
	if err != nil {
		count.open.Add(-1)
		return nil, err
	}
	return count, nil
}

// order returns r's targets in the order a connection dials them: the
// ejected ones last (the longest ejected last), the others as r.Balance
// says (in the order given when it says nothing).
func (s *Server) order(count *routeCount, r *Route) []string {
	if r.Balance.Policy == "" || len(r.Targets) < 2 {
		return s.health.Order(r.Targets)
	}
	mask := s.health.Mask(r.Targets)
	var out func(int) bool
	if mask != nil {
		out = func(i int) bool { return mask[i] }
	}
	var active func(int) int
	if r.Balance.Policy == BalanceLeastRequest {
		active = func(i int) int { return s.counts.openOn(r.Targets[i]) }
	}
	ordered := count.picker.Targets(balance.Policy{Name: r.Balance.Policy, ChoiceCount: r.Balance.ChoiceCount}, r.Targets, r.Weights, out, active)
	if mask != nil {
		n := 0
		for _, m := range mask {
			if m {
				n++
			}
		}
		tail := ordered[len(ordered)-n:]
		copy(tail, s.health.Order(tail)) // all ejected: the longest ejected last
	}
	return ordered
}
