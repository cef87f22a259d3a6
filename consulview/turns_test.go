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
