// Package balance chooses which of a cluster's targets a connection tries
// first, by the load-balancing policies a Consul service-resolver can set
// on a mesh gateway's clusters (round_robin, least_request, random) and
// the targets' weights, as Envoy does under Consul: the gateway's Server
// and sidecar.Dialer both use it, so a Go sidecar spreads as the gateway
// does. It is pure: the caller says which targets are ejected and how
// many connections each has open.
package balance

import (
	"math/rand/v2"
	"strconv"
	"sync"
)

// Policy names, as Consul's service-resolver LoadBalancer.Policy spells
// them.
const (
	RoundRobin   = "round_robin"
	LeastRequest = "least_request"
	Random       = "random"
)

// DefaultChoiceCount is how many targets least_request samples when
// LeastRequestConfig.ChoiceCount is not set: Envoy's default.
const DefaultChoiceCount = 2

// MaxWeight is the largest weight Consul hands Envoy
// (calculateEndpointHealthAndWeight); a larger one counts as this.
const MaxWeight = 128

// Policy is a load-balancing policy.
type Policy struct {
	// Name is RoundRobin, LeastRequest or Random; empty means RoundRobin,
	// Envoy's default, which Consul leaves in place when a resolver sets
	// no policy. Any other name is treated as RoundRobin.
	Name string
	// ChoiceCount is how many targets LeastRequest samples, when all
	// weights are equal, to take the one with the fewest open
	// connections; below 2 means DefaultChoiceCount.
	ChoiceCount int
}

// String returns the policy's name, with its choice count for
// least_request: "round_robin", "least_request (choice_count 2)".
func (p Policy) String() string {
	switch p.Name {
	case LeastRequest:
		return LeastRequest + " (choice_count " + strconv.Itoa(p.choiceCount()) + ")"
	case Random:
		return Random
	}
	return RoundRobin
}

func (p Policy) choiceCount() int {
	if p.ChoiceCount < 2 {
		return DefaultChoiceCount
	}
	return p.ChoiceCount
}

// Picker keeps one cluster's state between connections (where round robin
// stands) and orders its targets for each. The zero value is ready and safe
// for concurrent use. Its state follows the last list of targets it was
// given: a new list (the catalog changed) starts the turn again.
type Picker struct {
	// Rand, if set, is the source of random choices (for tests); nil means
	// math/rand/v2's. It is used under the Picker's lock.
	Rand *rand.Rand

	mu      sync.Mutex
	targets []string // the list current holds the turn of
	current []int    // smooth weighted round robin: each target's credit
	eff     []int    // scratch: this pick's effective weights
}

// weightScale lets least_request divide a weight by the open connections
// plus one in integers without losing the order of small weights.
const weightScale = 1 << 10

// Order returns the indexes of targets in the order a connection tries
// them: the policy's choice first among the targets not out, then the
// other targets not out, in list order after the chosen one (so that
// fallbacks spread too), then the targets out, in list order. Nothing is
// left out: when every target is out, all are still tried.
//
// weights holds each target's weight (nil, or a missing or non-positive
// entry, means 1; above MaxWeight counts as MaxWeight). out(i), when out
// is not nil, reports whether target i is ejected; active(i), when active
// is not nil, how many connections target i has open now (least_request).
//
// Round robin with equal weights takes the targets in turn; with unequal
// weights it is a smooth weighted round robin, which over any run of
// sum(weights) connections gives each target exactly its weight's share,
// spread out rather than in bursts. Random takes each target with a
// probability proportional to its weight. Least request with equal
// weights samples ChoiceCount targets at random and takes the one with
// the fewest open connections (Envoy's power of two choices); with unequal
// weights it runs the weighted round robin on weight/(open+1), as Envoy
// weighs hosts by weight/(active requests+1).
func (p *Picker) Order(pol Policy, targets []string, weights []int, out func(int) bool, active func(int) int) []int {
	order := make([]int, 0, len(targets))
	p.each(pol, targets, weights, out, active, func(i int) { order = append(order, i) })
	return order
}

// Targets is Order returning the targets themselves, in that order, in a
// new slice.
func (p *Picker) Targets(pol Policy, targets []string, weights []int, out func(int) bool, active func(int) int) []string {
	ordered := make([]string, 0, len(targets))
	p.each(pol, targets, weights, out, active, func(i int) { ordered = append(ordered, targets[i]) })
	return ordered
}

// each calls f with each index of targets in Order's order.
func (p *Picker) each(pol Policy, targets []string, weights []int, out func(int) bool, active func(int) int, f func(int)) {
	n := len(targets)
	if n == 0 {
		return
	}
	p.mu.Lock()
	first := p.pick(pol, targets, weights, out, active)
	p.mu.Unlock()
	if first >= 0 {
		f(first)
		for k := 1; k < n; k++ {
			if i := (first + k) % n; out == nil || !out(i) {
				f(i)
			}
		}
	}
	if out != nil {
		for i := range n {
			if out(i) {
				f(i)
			}
		}
	}
}

// pick returns the chosen target's index, or -1 when every target is out;
// p.mu is held.
func (p *Picker) pick(pol Policy, targets []string, weights []int, out func(int) bool, active func(int) int) int {
	p.follow(targets)
	eff := p.eff[:len(targets)]
	equal, any := true, false
	w0 := -1
	for i := range targets {
		if out != nil && out(i) {
			eff[i] = 0
			continue
		}
		w := weightOf(weights, i)
		eff[i], any = w, true
		if w0 < 0 {
			w0 = w
		} else if w != w0 {
			equal = false
		}
	}
	if !any {
		return -1
	}
	switch pol.Name {
	case Random:
		return p.weightedRandom(eff)
	case LeastRequest:
		if active == nil {
			active = func(int) int { return 0 }
		}
		if equal {
			return p.fewestOfSample(eff, pol.choiceCount(), active)
		}
		for i, w := range eff {
			if w > 0 {
				eff[i] = w * weightScale / (active(i) + 1)
				if eff[i] == 0 {
					eff[i] = 1
				}
			}
		}
	}
	return p.smoothRoundRobin(eff)
}

// follow resets the turn when the list of targets changed; p.mu is held.
func (p *Picker) follow(targets []string) {
	if len(p.targets) == len(targets) {
		same := true
		for i, t := range targets {
			if p.targets[i] != t {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	p.targets = append(p.targets[:0], targets...)
	p.current = make([]int, len(targets))
	p.eff = make([]int, len(targets))
}

func weightOf(weights []int, i int) int {
	if i >= len(weights) || weights[i] < 1 {
		return 1
	}
	return min(weights[i], MaxWeight)
}

// smoothRoundRobin is the smooth weighted round robin over eff (a zero
// weight takes no turn): every target gains its weight, the richest is
// chosen and pays the total. With equal weights it takes the targets in
// list order, in turn.
func (p *Picker) smoothRoundRobin(eff []int) int {
	best, total := -1, 0
	for i, w := range eff {
		if w == 0 {
			continue
		}
		p.current[i] += w
		total += w
		if best < 0 || p.current[i] > p.current[best] {
			best = i
		}
	}
	p.current[best] -= total
	return best
}

func (p *Picker) intN(n int) int {
	if p.Rand != nil {
		return p.Rand.IntN(n)
	}
	return rand.IntN(n)
}

// weightedRandom takes a target with a probability proportional to its
// weight in eff.
func (p *Picker) weightedRandom(eff []int) int {
	total := 0
	for _, w := range eff {
		total += w
	}
	r := p.intN(total)
	for i, w := range eff {
		if r < w {
			return i
		}
		r -= w
	}
	return len(eff) - 1 // not reached
}

// fewestOfSample samples count targets (with eff > 0) at random, with
// replacement as Envoy does, and returns the one with the fewest open
// connections, the first sampled on a tie.
func (p *Picker) fewestOfSample(eff []int, count int, active func(int) int) int {
	var live []int
	for i, w := range eff {
		if w > 0 {
			live = append(live, i)
		}
	}
	best, bestActive := -1, 0
	for range count {
		i := live[p.intN(len(live))]
		if a := active(i); best < 0 || a < bestActive {
			best, bestActive = i, a
		}
	}
	return best
}
