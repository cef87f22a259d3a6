package balance

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var four = []string{"a:1", "b:1", "c:1", "d:1"}

// count picks n times and counts the first choices; held, when set, keeps
// every chosen connection open (least_request sees them).
func count(t *testing.T, p *Picker, pol Policy, targets []string, weights []int, n int, held bool) []int {
	t.Helper()
	got := make([]int, len(targets))
	open := make([]int, len(targets))
	for range n {
		order := p.Order(pol, targets, weights, nil, func(i int) int { return open[i] })
		require.Len(t, order, len(targets), "every target is in the order")
		got[order[0]]++
		if held {
			open[order[0]]++
		}
	}
	return got
}

func seeded() *Picker { return &Picker{Rand: rand.New(rand.NewPCG(1, 2))} }

// Round robin with equal weights takes the targets in turn: over 1,000
// connections each of four gets exactly 250, and the fallbacks after the
// first are the others in list order.
func TestRoundRobin(t *testing.T) {
	var p Picker
	assert.Equal(t, []int{250, 250, 250, 250}, count(t, &p, Policy{}, four, nil, 1000, false))
	assert.Equal(t, []int{0, 1, 2, 3}, p.Order(Policy{Name: RoundRobin}, four, nil, nil, nil), "1,001st connection: the turn is back at a")
	assert.Equal(t, []int{1, 2, 3, 0}, p.Order(Policy{Name: RoundRobin}, four, nil, nil, nil))
}

// Weights 3:1 under round robin: exactly 750 and 250 of 1,000, and the
// heavy target never takes more than three in a row.
func TestWeightedRoundRobin(t *testing.T) {
	var p Picker
	targets := []string{"heavy:1", "light:1"}
	run := 0
	got := []int{0, 0}
	for range 1000 {
		i := p.Order(Policy{}, targets, []int{3, 1}, nil, nil)[0]
		got[i]++
		if i == 0 {
			run++
			assert.LessOrEqual(t, run, 3, "smooth: no burst longer than the weight")
		} else {
			run = 0
		}
	}
	assert.Equal(t, []int{750, 250}, got)
}

// Random: each of four within 250 ± 75 of 1,000 (5 standard deviations of
// the binomial), and 3:1 weights within 750 ± 60; the source is seeded so
// the counts are the same on every run.
func TestRandom(t *testing.T) {
	got := count(t, seeded(), Policy{Name: Random}, four, nil, 1000, false)
	for i, n := range got {
		assert.InDelta(t, 250, n, 75, "target %d: %v", i, got)
	}
	got = count(t, seeded(), Policy{Name: Random}, []string{"heavy:1", "light:1"}, []int{3, 1}, 1000, false)
	assert.InDelta(t, 750, got[0], 60, "%v", got)
	assert.Equal(t, 1000, got[0]+got[1])
	// Not round robin in disguise: the first eight do not cycle.
	p := seeded()
	var firsts []int
	for range 8 {
		firsts = append(firsts, p.Order(Policy{Name: Random}, four, nil, nil, nil)[0])
	}
	assert.NotEqual(t, []int{0, 1, 2, 3, 0, 1, 2, 3}, firsts)
}

// Least request with connections held open: the power of two choices keeps
// four targets within 250 ± 10 of 1,000 (random would stray by ±40).
// With 3:1 weights and connections that close before the next one opens,
// exactly 750 and 250; with connections held open, Envoy's weighing of
// weight/(open+1) settles where a(a+1) = 3b(b+1): about 634 and 366 of
// 1,000, within ± 10.
func TestLeastRequest(t *testing.T) {
	got := count(t, seeded(), Policy{Name: LeastRequest}, four, nil, 1000, true)
	for i, n := range got {
		assert.InDelta(t, 250, n, 10, "target %d: %v", i, got)
	}
	pair := []string{"heavy:1", "light:1"}
	got = count(t, seeded(), Policy{Name: LeastRequest}, pair, []int{3, 1}, 1000, false)
	assert.Equal(t, []int{750, 250}, got)
	got = count(t, seeded(), Policy{Name: LeastRequest}, pair, []int{3, 1}, 1000, true)
	assert.InDelta(t, 634, got[0], 10, "%v", got)
}

// Least request prefers the target with fewer open connections: with one
// target at 100 and the others idle, a sample of 4 of 4 never takes it.
func TestLeastRequestAvoidsBusy(t *testing.T) {
	p := seeded()
	busy := func(i int) int {
		if i == 0 {
			return 100
		}
		return 0
	}
	for range 200 {
		// A sample of 10 from four misses the idle three only with
		// probability (1/4)^10.
		assert.NotEqual(t, 0, p.Order(Policy{Name: LeastRequest, ChoiceCount: 10}, four, nil, nil, busy)[0])
	}
}

// Ejected targets come last and are never chosen while another is in;
// when all are out, all are still tried, in list order.
func TestOut(t *testing.T) {
	for _, pol := range []Policy{{}, {Name: Random}, {Name: LeastRequest}} {
		p := seeded()
		outB := func(i int) bool { return i == 1 }
		for range 100 {
			order := p.Order(pol, four, []int{1, 100, 1, 1}, outB, nil)
			require.Len(t, order, 4)
			assert.NotEqual(t, 1, order[0], pol)
			assert.Equal(t, 1, order[3], "%s: the ejected one last", pol)
		}
		all := func(int) bool { return true }
		assert.Equal(t, []int{0, 1, 2, 3}, p.Order(pol, four, nil, all, nil), pol)
	}
}

// A new list of targets starts the turn again; the same list continues it.
func TestFollowsTheList(t *testing.T) {
	var p Picker
	assert.Equal(t, 0, p.Order(Policy{}, four, nil, nil, nil)[0])
	assert.Equal(t, 1, p.Order(Policy{}, four, nil, nil, nil)[0])
	three := []string{"x:1", "y:1", "z:1"}
	assert.Equal(t, 0, p.Order(Policy{}, three, nil, nil, nil)[0], "new list")
	assert.Equal(t, 1, p.Order(Policy{}, three, nil, nil, nil)[0])
	assert.Empty(t, p.Order(Policy{}, nil, nil, nil, nil))
}

// Weights are clamped as Consul clamps them: below 1 is 1, above 128 is 128.
func TestWeightBounds(t *testing.T) {
	var p Picker
	got := count(t, &p, Policy{}, []string{"a:1", "b:1"}, []int{1000, 0}, 129*4, false)
	assert.Equal(t, []int{128 * 4, 4}, got)
}

func TestPolicyString(t *testing.T) {
	assert.Equal(t, "round_robin", Policy{}.String())
	assert.Equal(t, "round_robin", Policy{Name: "maglev"}.String())
	assert.Equal(t, "random", Policy{Name: Random}.String())
	assert.Equal(t, "least_request (choice_count 2)", Policy{Name: LeastRequest}.String())
	assert.Equal(t, "least_request (choice_count 12)", Policy{Name: LeastRequest, ChoiceCount: 12}.String())
}

// Concurrent use keeps the round robin exact.
func TestConcurrent(t *testing.T) {
	var p Picker
	var mu sync.Mutex
	got := make([]int, 4)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 125 {
				i := p.Order(Policy{}, four, nil, nil, nil)[0]
				mu.Lock()
				got[i]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, []int{250, 250, 250, 250}, got)
}
