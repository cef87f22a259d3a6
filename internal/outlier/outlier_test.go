package outlier

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The ordering rules: a failure ejects a target (after EjectAfter in a
// row), an ejected target is tried after the others (the longest ejected
// last), the last endpoint is still tried, a success forgets the failures.
func TestOutliersOrder(t *testing.T) {
	now := time.Unix(1000, 0)
	o := New(2, 0)
	o.now = func() time.Time { return now }
	targets := []string{"a:1", "b:1", "c:1"}

	assert.False(t, o.Failed("a:1"), "one failure of two")
	assert.Equal(t, targets, o.Order(targets), "not yet ejected")
	o.Succeeded("a:1")
	assert.False(t, o.Failed("a:1"), "a success started the count again")
	assert.True(t, o.Failed("a:1"), "the second consecutive failure ejects")
	assert.False(t, o.Failed("a:1"), "ejected already")
	assert.Equal(t, []string{"b:1", "c:1", "a:1"}, o.Order(targets), "ejected: tried last")

	now = now.Add(time.Second)
	o.Failed("b:1")
	o.Failed("b:1")
	assert.Equal(t, []string{"c:1", "b:1", "a:1"}, o.Order(targets), "the longest ejected last")
	assert.Equal(t, []string{"a:1"}, o.Order([]string{"a:1"}), "the last endpoint is still tried")
	now = now.Add(time.Hour)
	assert.Equal(t, []string{"c:1", "b:1", "a:1"}, o.Order(targets), "no time limit: out until a probe or a dial finds it back")
	o.Succeeded("a:1")
	o.Succeeded("b:1")
	assert.Equal(t, targets, o.Order(targets))
	assert.Zero(t, o.tracked.Load(), "healthy targets are forgotten")

	off := New(-1, 0)
	for range 10 {
		assert.False(t, off.Failed("a:1"))
	}
	assert.Equal(t, targets, off.Order(targets), "EjectAfter < 0: off")
	assert.Equal(t, 1, DefaultEjectAfter)
}

// fakeDial answers per target: refused until up is set.
type fakeDial struct {
	mu    sync.Mutex
	up    map[string]bool
	dials atomic.Int32
}

func (f *fakeDial) dial(_ context.Context, _, address string) (net.Conn, error) {
	f.dials.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.up[address] {
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	return nil, errors.New("connection refused")
}

// An ejected target is probed with a growing wait until it answers, and
// then readmitted; one no route names any more is forgotten; the probes
// end with the server.
func TestOutliersProbeUntilBack(t *testing.T) {
	f := &fakeDial{up: map[string]bool{}}
	o := New(1, 40*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); o.probes.Wait() }()
	back := make(chan string, 1)
	o.Dial, o.Ctx, o.OnReturn = f.dial, ctx, func(target string) { back <- target }

	targets := []string{"a:1", "b:1"}
	assert.True(t, o.Failed("a:1"))
	assert.Equal(t, []string{"b:1", "a:1"}, o.Order(targets))
	waitFor(t, "a few probes", func() bool { return f.dials.Load() >= 3 })
	assert.Equal(t, []string{"b:1", "a:1"}, o.Order(targets), "still out while probes fail")
	f.mu.Lock()
	f.up["a:1"] = true
	f.mu.Unlock()
	select {
	case got := <-back:
		assert.Equal(t, "a:1", got)
	case <-time.After(30 * time.Second):
		t.Fatal("the probe never found a:1 back")
	}
	assert.Equal(t, targets, o.Order(targets), "readmitted")
	assert.Zero(t, o.tracked.Load())

	// A target no route names for forgetAfter is forgotten, probes end.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	o.mu.Lock()
	o.now = func() time.Time { return time.Unix(0, clock.Load()) }
	o.mu.Unlock()
	assert.True(t, o.Failed("c:1"))
	clock.Add(int64(forgetAfter + time.Second))
	waitFor(t, "c:1 to be forgotten", func() bool { return o.tracked.Load() == 0 })
	cancel()
	o.probes.Wait()
}

// waitFor polls cond for up to 10 s; tests assert outcomes, not timings.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
