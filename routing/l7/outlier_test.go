package l7

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newDetector(clock *fakeClock, addrs ...string) (*detector, *[]string) {
	var events []string
	d := &detector{cfg: OutlierDetection{}.withDefaults(), now: clock.now, onChange: func(h *host, ejected bool) {
		what := "returned"
		if ejected {
			what = "ejected"
		}
		events = append(events, h.addr+" "+what)
	}}
	d.update(addrs, balance{policy: policyRoundRobin})
	return d, &events
}

func hostNamed(d *detector, addr string) *host {
	for _, h := range d.state.Load().all {
		if h.addr == addr {
			return h
		}
	}
	return nil
}

// Envoy's defaults: five 5xx in a row eject an instance for 30 s, brought
// back by the first review after that; a success in between starts the
// count again; the second ejection lasts twice as long.
func TestOutlierConsecutive5xx(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	d, events := newDetector(clock, "a:1", "b:1")
	a := hostNamed(d, "a:1")
	d.pick(0, false) // starts the review clock
	for range 4 {
		d.result(a, true)
	}
	d.result(a, false)
	for range 4 {
		d.result(a, true)
	}
	assert.Empty(t, *events, "4 in a row, a success, 4 in a row: still in")
	d.result(a, true)
	assert.Equal(t, []string{"a:1 ejected"}, *events)
	for range 20 {
		assert.Equal(t, "b:1", d.pick(0, false).addr, "only b while a is out")
	}
	// b fails too, but a cluster of two may have one out (10 %, checked
	// before the ejection).
	b := hostNamed(d, "b:1")
	for range 5 {
		d.result(b, true)
	}
	assert.Equal(t, []string{"a:1 ejected"}, *events)

	clock.advance(29 * time.Second)
	d.pick(0, false)
	assert.Len(t, *events, 1, "still out before 30 s")
	clock.advance(2 * time.Second)
	d.pick(0, false)
	assert.Equal(t, []string{"a:1 ejected", "a:1 returned"}, *events)

	for range 5 {
		d.result(a, true)
	}
	require.Len(t, *events, 3)
	clock.advance(31 * time.Second)
	d.pick(0, false)
	assert.Len(t, *events, 3, "the second ejection lasts 60 s")
	clock.advance(30 * time.Second)
	d.pick(0, false)
	assert.Equal(t, "a:1 returned", (*events)[3])
}

// A single instance may be ejected (0 % of 1 is under 10 %): the cluster
// then has no healthy host, and the exported clusters' panic threshold of
// 0 leaves it so.
func TestOutlierLastInstance(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	d, _ := newDetector(clock, "a:1")
	a := hostNamed(d, "a:1")
	for range 5 {
		d.result(a, true)
	}
	assert.Nil(t, d.pick(0, false))
}

// Envoy's success-rate detection: with five instances of 100 requests in
// an interval, one far below the others' rate goes.
func TestOutlierSuccessRate(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	d, events := newDetector(clock, "a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1", "h:1", "i:1", "j:1")
	d.pick(0, false)
	for _, h := range d.state.Load().all {
		for i := range 100 {
			// Never five failures in a row; j fails half of its requests.
			d.result(h, h.addr == "j:1" && i%2 == 0)
		}
	}
	clock.advance(10 * time.Second)
	d.pick(0, false)
	assert.Equal(t, []string{"j:1 ejected"}, *events)
}

// New endpoints keep the state of the addresses that stay.
func TestOutlierUpdateKeepsState(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	d, _ := newDetector(clock, "a:1", "b:1")
	a := hostNamed(d, "a:1")
	for range 5 {
		d.result(a, true)
	}
	d.update([]string{"b:1", "a:1", "c:1", "c:1"}, balance{policy: policyRoundRobin})
	s := d.state.Load()
	require.Len(t, s.all, 3, "a repeated address counts once")
	assert.Same(t, a, hostNamed(d, "a:1"))
	assert.True(t, a.ejected)
	assert.Len(t, s.picker.hosts, 2)
}

// An ejected instance that leaves the endpoints is reported back, once,
// as Envoy's ejections_active stops counting it; one that comes back
// later starts healthy, and one not ejected leaves without a word.
func TestOutlierEjectedInstanceThatLeavesIsReportedBack(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	d, events := newDetector(clock, "a:1", "b:1", "c:1")
	a := hostNamed(d, "a:1")
	for range 5 {
		d.result(a, true)
	}
	require.Equal(t, []string{"a:1 ejected"}, *events)
	d.update([]string{"b:1"}, balance{policy: policyRoundRobin})
	assert.Equal(t, []string{"a:1 ejected", "a:1 returned"}, *events, "a left while ejected; c left healthy")
	assert.True(t, a.left)
	d.result(a, true) // a request in flight when it left
	d.update([]string{"b:1", "a:1"}, balance{policy: policyRoundRobin})
	assert.Equal(t, []string{"a:1 ejected", "a:1 returned"}, *events)
	back := hostNamed(d, "a:1")
	assert.NotSame(t, a, back)
	assert.False(t, back.ejected)
	assert.Len(t, d.state.Load().picker.hosts, 2)
}
