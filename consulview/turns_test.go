package consulview

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Slots are shared: no more queries run at once than there are slots; an
// urgent waiter is served before the others that waited longer; a waiter
// whose context ends gives up its place; while the watches are no more
// than the slots each query may wait long, and once they are more, the
// long polls in flight are cut short and later ones wait briefly.
func TestTurns(t *testing.T) {
	tr := newTurns(2)
	ctx := context.Background()
	leave1, leave2 := tr.join(), tr.join()
	q1, done1, ok := tr.take(ctx, false)
	require.True(t, ok)
	assert.Equal(t, longWait, waitFor(q1), "not crowded: the long wait")
	_, done2, _ := tr.take(ctx, false)

	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	wait := func(name string, urgent bool) {
		defer wg.Done()
		_, done, ok := tr.take(ctx, urgent)
		require.True(t, ok)
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
		done()
	}
	wg.Add(1)
	go wait("other", false)
	time.Sleep(20 * time.Millisecond) // queued first
	wg.Add(1)
	go wait("urgent", true)
	gone, cancel := context.WithCancel(ctx)
	given := make(chan bool)
	go func() { _, _, ok := tr.take(gone, false); given <- ok }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	assert.False(t, <-given, "a waiter whose context ended gives up")

	leave3 := tr.join() // three watches, two slots: crowded
	assert.Error(t, q1.Err(), "the long poll in flight is cut short")
	assert.True(t, done1(), "and reported as preempted")
	wg.Wait() // one slot freed: the urgent waiter first, then the other
	assert.Equal(t, []string{"urgent", "other"}, order, "the urgent waiter first")
	done2()
	q, done, _ := tr.take(ctx, false)
	assert.Equal(t, crowdedWait, waitFor(q), "crowded: turns")
	assert.False(t, done(), "a turn that ends is not preempted")
	leave3()
	leave2()
	leave1()
	assert.Equal(t, 0, tr.busy, "every slot back")
}

// Urgent watches go first, but however many there are they do not starve
// the others: with one slot and urgent waiters always queued, every
// second turn goes to the other waiter.
func TestTurnsUrgentWatchesDoNotStarveTheOthers(t *testing.T) {
	tr := newTurns(1)
	ctx := context.Background()
	for range 4 {
		defer tr.join()()
	}
	_, held, ok := tr.take(ctx, true)
	require.True(t, ok)
	queued := func(urgent, other int) func() bool {
		return func() bool {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			return len(tr.urgent) == urgent && len(tr.other) == other
		}
	}
	var mu sync.Mutex
	var order []string
	granted := make(chan func() bool)
	wait := func(name string, urgent bool) {
		_, done, ok := tr.take(ctx, urgent)
		if !ok {
			return
		}
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
		granted <- done
	}
	go wait("urgent 1", true)
	require.Eventually(t, queued(1, 0), 10*time.Second, time.Millisecond)
	go wait("urgent 2", true)
	require.Eventually(t, queued(2, 0), 10*time.Second, time.Millisecond)
	go wait("other", false)
	require.Eventually(t, queued(2, 1), 10*time.Second, time.Millisecond)
	held()
	(<-granted)() // urgent 1 (two urgent waiters were queued first)
	(<-granted)() // then the other, though urgent 2 waited longer
	(<-granted)()
	assert.Equal(t, []string{"urgent 1", "other", "urgent 2"}, order)
	assert.Equal(t, 0, tr.busy, "every slot back")
}
