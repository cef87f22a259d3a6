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
	crowdedWait = 2 * time.Second
)

// turns bounds the agent connections of the watches that share them (all
// but the catalog's and the checks', which have one each): on plain HTTP an
// agent connection carries one request at a time, and a blocking query
// holds one for as long as it waits. While there are no more such watches
// than slots, each blocks for longWait, as if alone. When there are more,
// they take turns: each blocks for crowdedWait and gives its slot to the
// next, and the long polls already waiting when the crowd formed are cut
// short once, so that a watch waits for its turn at most about
// (watches/slots) × crowdedWait, and sees a change within that.
type turns struct {
	slots       chan struct{}
	crowdedWait time.Duration

	mu      sync.Mutex
	watches int
	long    map[*longPoll]struct{}
}

// longPoll is a query in flight with the long wait.
type longPoll struct {
	cancel    context.CancelFunc
	preempted atomic.Bool
}

type waitKey struct{}

func newTurns(slots int, crowdedWait time.Duration) *turns {
	return &turns{slots: make(chan struct{}, max(slots, 1)), crowdedWait: crowdedWait, long: map[*longPoll]struct{}{}}
}

// join counts a watch in; the function it returns counts it out.
func (t *turns) join() (leave func()) {
	t.mu.Lock()
	t.watches++
	if t.watches > cap(t.slots) {
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
func (t *turns) take(ctx context.Context) (qctx context.Context, done func() (preempted bool), ok bool) {
	select {
	case t.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx, nil, false
	}
	qctx, cancel := context.WithCancel(ctx)
	p := &longPoll{cancel: cancel}
	t.mu.Lock()
	wait := longWait
	if t.watches > cap(t.slots) {
		wait = t.crowdedWait
	} else {
		t.long[p] = struct{}{}
	}
	t.mu.Unlock()
	return context.WithValue(qctx, waitKey{}, wait), func() bool {
		t.mu.Lock()
		delete(t.long, p)
		t.mu.Unlock()
		preempted := p.preempted.Load() && ctx.Err() == nil
		cancel()
		<-t.slots
		return preempted
	}, true
}

// waitFor is how long a blocking query made with ctx may wait: what take
// gave it, else longWait.
func waitFor(ctx context.Context) time.Duration {
	if w, ok := ctx.Value(waitKey{}).(time.Duration); ok {
		return w
	}
	return longWait
}
