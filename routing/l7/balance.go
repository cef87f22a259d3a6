package l7

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/hashicorp/consul/api"
)

// The load-balancing policies a service-resolver's LoadBalancer names
// (Consul's structs.LBPolicy*), as injectLBToCluster hands them to Envoy.
const (
	policyRoundRobin   = "round_robin"
	policyLeastRequest = "least_request"
	policyRandom       = "random"
	policyRingHash     = "ring_hash"
	policyMaglev       = "maglev"
)

// Envoy's defaults for the policies' settings, which Consul leaves unset
// when the resolver does.
const (
	defaultChoiceCount = 2       // least_request_lb_config.choice_count
	defaultMinRingSize = 1024    // ring_hash_lb_config.minimum_ring_size
	defaultMaxRingSize = 8 << 20 // ring_hash_lb_config.maximum_ring_size
	maglevTableSize    = 65537   // maglev_lb_config.table_size
)

// balance is a cluster's load-balancing policy, as Envoy runs it: the
// resolver's LoadBalancer with Envoy's defaults filled in.
type balance struct {
	policy           string // one of the policy constants
	choiceCount      int
	minRing, maxRing uint64
}

// balanceOf returns the policy lb names (nil or an empty Policy is Envoy's
// default, round_robin), or an error naming a policy Consul does not
// define.
func balanceOf(lb *api.LoadBalancer) (balance, error) {
	b := balance{policy: policyRoundRobin, choiceCount: defaultChoiceCount, minRing: defaultMinRingSize, maxRing: defaultMaxRingSize}
	if lb == nil || lb.Policy == "" {
		return b, nil
	}
	switch lb.Policy {
	case policyRoundRobin, policyRandom, policyMaglev:
	case policyLeastRequest:
		if c := lb.LeastRequestConfig; c != nil && c.ChoiceCount > 0 {
			b.choiceCount = int(c.ChoiceCount)
		}
	case policyRingHash:
		if c := lb.RingHashConfig; c != nil {
			if c.MinimumRingSize > 0 {
				b.minRing = c.MinimumRingSize
			}
			if c.MaximumRingSize > 0 {
				b.maxRing = c.MaximumRingSize
			}
		}
		if b.minRing > b.maxRing {
			return balance{}, fmt.Errorf("l7: ring_hash: MinimumRingSize %d is over MaximumRingSize %d", b.minRing, b.maxRing)
		}
	default:
		return balance{}, fmt.Errorf("l7: unsupported load balancer policy %q", lb.Policy)
	}
	b.policy = lb.Policy
	return b, nil
}

// hashBased reports whether the policy chooses by a request's hash.
func (b balance) hashBased() bool { return b.policy == policyRingHash || b.policy == policyMaglev }

// String names the policy with its settings, as logs and explain show it.
func (b balance) String() string {
	switch b.policy {
	case policyLeastRequest:
		return policyLeastRequest + " (choice_count " + strconv.Itoa(b.choiceCount) + ")"
	case policyRingHash:
		return fmt.Sprintf("%s (ring %d-%d)", policyRingHash, b.minRing, b.maxRing)
	}
	return b.policy
}

// picker chooses among one set of hosts (the cluster's healthy ones) by
// one policy. It is immutable once built, but for the round-robin turn and
// the hosts' counts of active requests.
type picker struct {
	b     balance
	hosts []*host
	turn  atomic.Uint64
	ring  []ringEntry // ring_hash
	table []int32     // maglev: index into hosts
}

// ringEntry is one point of a hash ring.
type ringEntry struct {
	hash uint64
	host int32
}

// newPicker builds the picker of b over hosts (which it keeps).
func newPicker(b balance, hosts []*host) *picker {
	p := &picker{b: b, hosts: hosts}
	if len(hosts) == 0 {
		return p
	}
	p.turn.Store(rand.Uint64()) // Envoy starts each round-robin at a random host
	switch b.policy {
	case policyRingHash:
		p.ring = buildRing(hosts, b.minRing, b.maxRing)
	case policyMaglev:
		p.table = buildMaglev(hosts, maglevTableSize)
	}
	return p
}

// pick returns a host, or nil when there is none; hash is the request's
// hash for a hash-based policy, where ok is false when no hash policy
// produced one (Envoy then takes a random point).
func (p *picker) pick(hash uint64, ok bool) *host {
	n := len(p.hosts)
	switch {
	case n == 0:
		return nil
	case n == 1:
		return p.hosts[0]
	}
	switch p.b.policy {
	case policyRandom:
		return p.hosts[rand.IntN(n)]
	case policyLeastRequest:
		best := p.hosts[rand.IntN(n)]
		for range p.b.choiceCount - 1 {
			if h := p.hosts[rand.IntN(n)]; h.active.Load() < best.active.Load() {
				best = h
			}
		}
		return best
	case policyRingHash:
		if !ok {
			hash = rand.Uint64()
		}
		return p.hosts[ringLookup(p.ring, hash)]
	case policyMaglev:
		if !ok {
			hash = rand.Uint64()
		}
		return p.hosts[p.table[hash%uint64(len(p.table))]]
	}
	return p.hosts[p.turn.Add(1)%uint64(n)]
}

// buildRing is Envoy's ring_hash ring (RingHashLoadBalancer::Ring) for
// hosts of equal weight: each host gets its share of at least minSize
// points (at most maxSize in all), the i-th at xxHash64("<address>_<i>"),
// sorted by hash.
func buildRing(hosts []*host, minSize, maxSize uint64) []ringEntry {
	n := uint64(len(hosts))
	scale := math.Min(math.Ceil(float64(minSize)/float64(n))*float64(n), float64(maxSize))
	ring := make([]ringEntry, 0, int(scale)+int(n))
	var target float64
	var current uint64
	var key []byte
	for i, h := range hosts {
		target += scale / float64(n)
		for j := 0; float64(current) < target; j++ {
			key = strconv.AppendInt(append(append(key[:0], h.addr...), '_'), int64(j), 10)
			ring = append(ring, ringEntry{hash: xxhash.Sum64(key), host: int32(i)})
			current++
		}
	}
	slices.SortFunc(ring, func(a, b ringEntry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return int(a.host - b.host)
	})
	return ring
}

// ringLookup returns the host of the first point at or after hash, going
// round to the first.
func ringLookup(ring []ringEntry, hash uint64) int32 {
	i, _ := slices.BinarySearchFunc(ring, hash, func(e ringEntry, h uint64) int {
		switch {
		case e.hash < h:
			return -1
		case e.hash > h:
			return 1
		}
		return 0
	})
	if i == len(ring) {
		i = 0
	}
	return ring[i].host
}

// buildMaglev is Envoy's Maglev lookup table (MaglevTable) for hosts of
// equal weight: each host's permutation of the size slots starts at
// xxHash64(address) mod size and steps by xxHash64(address, seed 1)
// mod (size-1) + 1; the hosts take turns claiming their next free slot.
func buildMaglev(hosts []*host, size int) []int32 {
	table := make([]int32, size)
	for i := range table {
		table[i] = -1
	}
	type perm struct{ offset, skip, next uint64 }
	perms := make([]perm, len(hosts))
	seeded := xxhash.NewWithSeed(1)
	for i, h := range hosts {
		seeded.ResetWithSeed(1)
		seeded.WriteString(h.addr)
		perms[i] = perm{offset: xxhash.Sum64String(h.addr) % uint64(size), skip: seeded.Sum64()%uint64(size-1) + 1}
	}
	for filled := 0; ; {
		for i := range perms {
			p := &perms[i]
			c := (p.offset + p.skip*p.next) % uint64(size)
			for table[c] >= 0 {
				p.next++
				c = (p.offset + p.skip*p.next) % uint64(size)
			}
			table[c] = int32(i)
			p.next++
			if filled++; filled == size {
				return table
			}
		}
	}
}

// requestHash is Envoy's HashPolicyImpl::generateHash over a request's
// values: each policy that yields a value mixes its xxHash64 into the hash
// (the previous hash rotated left by one, XORed), and a Terminal policy
// that yields one ends the list. ok is false when none yielded a value.
func requestHash(policies []api.HashPolicy, value func(api.HashPolicy) (string, bool)) (hash uint64, ok bool) {
	for _, p := range policies {
		if v, has := value(p); has {
			h := xxhash.Sum64String(v)
			if ok {
				hash = (hash<<1 | hash>>63) ^ h
			} else {
				hash = h
			}
			ok = true
		}
		if p.Terminal && ok {
			break
		}
	}
	return hash, ok
}

// Hash policy fields Consul allows (structs.HashPolicy*).
const (
	hashHeader     = "header"
	hashCookie     = "cookie"
	hashQueryParam = "query_parameter"
)

// hashString is xxHash64 of s, Envoy's hash for keys and cookies.
func hashString(s string) uint64 { return xxhash.Sum64String(s) }
