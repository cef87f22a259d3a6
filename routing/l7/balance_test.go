package l7

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func hostsOf(n int) []*host {
	hs := make([]*host, n)
	for i := range hs {
		hs[i] = &host{addr: fmt.Sprintf("10.0.0.%d:20000", i+1)}
	}
	return hs
}

func TestBalanceOf(t *testing.T) {
	b, err := balanceOf(nil)
	require.NoError(t, err)
	assert.Equal(t, policyRoundRobin, b.policy, "Envoy's default")
	b, err = balanceOf(&api.LoadBalancer{Policy: "least_request", LeastRequestConfig: &api.LeastRequestConfig{ChoiceCount: 5}})
	require.NoError(t, err)
	assert.Equal(t, "least_request (choice_count 5)", b.String())
	b, err = balanceOf(&api.LoadBalancer{Policy: "ring_hash", RingHashConfig: &api.RingHashConfig{MinimumRingSize: 64}})
	require.NoError(t, err)
	assert.Equal(t, "ring_hash (ring 64-8388608)", b.String())
	assert.True(t, b.hashBased())
	_, err = balanceOf(&api.LoadBalancer{Policy: "least_conn"})
	assert.EqualError(t, err, `l7: unsupported load balancer policy "least_conn"`)
	_, err = balanceOf(&api.LoadBalancer{Policy: "ring_hash", RingHashConfig: &api.RingHashConfig{MinimumRingSize: 10, MaximumRingSize: 5}})
	assert.EqualError(t, err, "l7: ring_hash: MinimumRingSize 10 is over MaximumRingSize 5")
}

// Each policy's spread over 1,000 picks of 4 hosts, within the bounds
// stated per policy; and the hash-based ones send one hash to one host.
func TestPickerPolicies(t *testing.T) {
	for _, policy := range []string{policyRoundRobin, policyRandom, policyLeastRequest, policyRingHash, policyMaglev} {
		t.Run(policy, func(t *testing.T) {
			b, err := balanceOf(&api.LoadBalancer{Policy: policy})
			require.NoError(t, err)
			hs := hostsOf(4)
			p := newPicker(b, hs)
			counts := map[string]int{}
			for i := range 1000 {
				// Distinct hashes, as distinct users would give.
				h := p.pick(uint64(i)*0x9e3779b97f4a7c15, true)
				counts[h.addr]++
			}
			for _, h := range hs {
				// 250 each if even: round robin is exact, the others within
				// 100 (random: about 7 standard deviations; the hash-based
				// ones with the default ring and table sizes spread closer).
				assert.InDelta(t, 250, counts[h.addr], 100, "%s: %v", policy, counts)
			}
			if b.hashBased() {
				first := p.pick(42, true)
				for range 100 {
					assert.Same(t, first, p.pick(42, true), "one hash, one host")
				}
			}
		})
	}
}

// least_request takes the host with fewer requests in flight of those it
// draws: with every choice drawn, always the idle one.
func TestLeastRequestPrefersIdle(t *testing.T) {
	hs := hostsOf(3)
	hs[0].active.Store(5)
	hs[1].active.Store(5)
	b, err := balanceOf(&api.LoadBalancer{Policy: "least_request", LeastRequestConfig: &api.LeastRequestConfig{ChoiceCount: 64}})
	require.NoError(t, err)
	p := newPicker(b, hs)
	for range 100 {
		assert.Same(t, hs[2], p.pick(0, false))
	}
}

// A ring keeps most keys on their host when one host leaves, unlike a
// modulo, which would move about 4 in 5 of them. Not all stay: Envoy's
// ring gives each host ceil(1024/n) points, so every host's points change
// with n; and Maglev's table is refilled.
func TestRingHashIsConsistent(t *testing.T) {
	b, err := balanceOf(&api.LoadBalancer{Policy: "ring_hash"})
	require.NoError(t, err)
	for _, policy := range []string{policyRingHash, policyMaglev} {
		b.policy = policy
		hs := hostsOf(5)
		before := newPicker(b, hs)
		after := newPicker(b, hs[:4]) // the last host leaves
		moved := 0
		for i := range 2000 {
			k := uint64(i) * 0x9e3779b97f4a7c15
			was, is := before.pick(k, true), after.pick(k, true)
			if was != hs[4] && was != is {
				moved++
			}
		}
		assert.Less(t, moved, 2000/5, "%s: %d keys of staying hosts moved", policy, moved)
		t.Logf("%s: %d of 2000 keys of the hosts that stay moved", policy, moved)
	}
}

func TestRequestHash(t *testing.T) {
	values := map[string]string{"x-user": "alice", "session": "s1"}
	get := func(p api.HashPolicy) (string, bool) { v, ok := values[p.FieldValue]; return v, ok }
	_, ok := requestHash([]api.HashPolicy{{Field: "header", FieldValue: "absent"}}, get)
	assert.False(t, ok, "no value, no hash: a random host")
	one, ok := requestHash([]api.HashPolicy{{Field: "header", FieldValue: "x-user"}}, get)
	require.True(t, ok)
	both, _ := requestHash([]api.HashPolicy{{Field: "header", FieldValue: "x-user"}, {Field: "cookie", FieldValue: "session"}}, get)
	assert.NotEqual(t, one, both, "a second policy mixes in")
	terminal, _ := requestHash([]api.HashPolicy{{Field: "header", FieldValue: "x-user", Terminal: true}, {Field: "cookie", FieldValue: "session"}}, get)
	assert.Equal(t, one, terminal, "a terminal policy that hashed ends the list")
	twice, _ := requestHash([]api.HashPolicy{{Field: "header", FieldValue: "x-user"}, {Field: "header", FieldValue: "x-user"}}, get)
	assert.NotZero(t, twice, "the same policy twice does not cancel out (Envoy rotates before XOR)")
}
