package consulview

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// longWait is how long a blocking query waits for a change when its watch
// has an agent connection to itself; crowdedWait when it takes turns.
const (
	longWait    = 5 * time.Minute
	crowdedWait = time.Second
)

// turns bounds the agent connections of the watches that share them (all
// but the catalog's and the checks', which have one each): on plain HTTP an
// agent connection carries one request at a time, and a blocking query
// holds one for as long as it waits. While there are no more such watches
// than slots, each blocks for longWait, as if alone. When there are more,
// they take turns: each blocks for crowdedWait and gives its slot to the
// next, and the long polls already waiting when the crowd formed are cut
// short once, so that a watch waits for its turn at most about
// (watches/slots) × crowdedWait, and sees a change within that. An urgent
// watch (the peerings', which Consul's servers give the local gateway 3 s
// to route, and the gateways' of each datacenter) takes the next free slot
// before the others, but never two in a row while another waits: however
// many urgent watches there are, the others still get every second turn.
type turns struct {
	slots int

	mu            sync.Mutex
	busy          int
	urgent, other []chan struct{} // waiting, in order
	lastUrgent    bool            // the last slot handed on went to an urgent waiter
	watches       int
	long          map[*longPoll]struct{}
}

// longPoll is a query in flight with the long wait.
type longPoll struct {
	cancel    context.CancelFunc
	preempted atomic.Bool
}

type waitKey struct{}

func newTurns(slots int) *turns {
	return &turns{slots: max(slots, 1), long: map[*longPoll]struct{}{}}
}

// join counts a watch in; the function it returns counts it out.
func (t *turns) join() (leave func()) {
	t.mu.Lock()
	t.watches++
	if t.watches > t.slots {
		for p := range t.long {
			p.preempted.Store(true)
			p.cancel()
		}
		clear(t.long)
	}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.watches--
		t.mu.Unlock()
	}
}

// take waits for a slot (or for ctx to end: ok false). It returns the
// query's context, which carries how long its blocking query may wait
// (see waitFor), and done, which frees the slot and reports whether the
// query was cut short for the crowd: the watch then asks again at once.
func (t *turns) take(ctx context.Context, urgent bool) (qctx context.Context, done func() (preempted bool), ok bool) {
	if !t.acquire(ctx, urgent) {
		return ctx, nil, false
	}
	qctx, cancel := context.WithCancel(ctx)
	p := &longPoll{cancel: cancel}
	t.mu.Lock()
	wait := longWait
	if t.watches > t.slots {
		wait = crowdedWait
	} else {
		t.long[p] = struct{}{}
	}
	t.mu.Unlock()
	return context.WithValue(qctx, waitKey{}, wait), func() bool {
		preempted := p.preempted.Load() && ctx.Err() == nil
		cancel()
		t.mu.Lock()
		delete(t.long, p)
		t.releaseLocked()
		t.mu.Unlock()
		return preempted
	}, true
}

// acquire takes a slot, waiting behind the urgent waiters (and, unless
// urgent, the others) that came first; it reports false if ctx ended.
func (t *turns) acquire(ctx context.Context, urgent bool) bool {
	t.mu.Lock()
	if t.busy < t.slots {
		t.busy++
		t.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	if urgent {
		t.urgent = append(t.urgent, ch)
	} else {
		t.other = append(t.other, ch)
	}
	t.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		t.mu.Lock()
		defer t.mu.Unlock()
		select {
		case <-ch: // granted meanwhile: give it on
			t.releaseLocked()
		default:
			t.urgent = removeWaiter(t.urgent, ch)
			t.other = removeWaiter(t.other, ch)
		}
		return false
	}
}

// releaseLocked hands the slot to the first urgent waiter, else the first
// other one, else frees it; when the last one handed on went to an urgent
// waiter and others wait, the first other one has it. t.mu is held.
func (t *turns) releaseLocked() {
	q := &t.other
	if len(t.urgent) > 0 && (len(t.other) == 0 || !t.lastUrgent) {
		q = &t.urgent
	}
	if len(*q) == 0 {
		t.busy--
		return
	}
	ch := (*q)[0]
	*q = (*q)[1:]
	t.lastUrgent = q == &t.urgent
	close(ch)
}

func removeWaiter(q []chan struct{}, ch chan struct{}) []chan struct{} {
	for i, c := range q {
		if c == ch {
			return append(q[:i], q[i+1:]...)
		}
	}
	return q
}

// waitFor is how long a blocking query made with ctx may wait: what take
// gave it, else longWait.
func waitFor(ctx context.Context) time.Duration {
	if w, ok := ctx.Value(waitKey{}).(time.Duration); ok {
		return w
	}
	return longWait
}
