package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// After a burst of connections and a quiet period, a Server with
// ReleaseMemory gives memory back once, and not again while nothing happens;
// without it, never.
func TestReleaseMemoryAfterABurst(t *testing.T) {
	rule := burstRule{events: 40, every: 100 * time.Millisecond}

	b := startBackend(t, echo)
	hello := helloBytes(t, longName)
	burst := func(gw string) {
		for range 25 { // 25 opened and 25 closed: 50 events
			echoed(t, gw, hello).Close()
		}
	}
	on := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), ReleaseMemory: true, burst: rule}
	off := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	gwOn, gwOff := startGateway(t, on), startGateway(t, off)
	burst(gwOn)
	burst(gwOff)
	waitFor(t, "the memory of the burst to be released", func() bool { return on.memoryReleases.Load() == 1 })
	time.Sleep(5 * rule.every) // quiet: nothing new to release
	assert.EqualValues(t, 1, on.memoryReleases.Load(), "released once per burst")
	assert.Zero(t, off.memoryReleases.Load(), "ReleaseMemory off: never")
	burst(gwOn)
	waitFor(t, "the second burst's release", func() bool { return on.memoryReleases.Load() == 2 })
}
