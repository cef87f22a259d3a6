package gateway

import (
	"runtime/debug"
	"time"
)

// A burst, for ReleaseMemory: at least burstConns connections opened or
// closed since memory was last released, then a period of releaseEvery with
// fewer than a tenth of that.
const (
	burstConns   = 1000
	releaseEvery = time.Second
)

// burstRule is when releaseAfterBursts releases memory; tests shorten it.
type burstRule struct {
	events uint64
	every  time.Duration
}

// releaseAfterBursts returns the memory a burst of connections used to the
// operating system once the burst is over: their goroutines' grown stacks
// and the garbage of their handshakes stay in the process otherwise, since
// a quiet gateway allocates too little to start a collection. It runs until
// the server closes.
func (s *Server) releaseAfterBursts(rule burstRule) {
	t := time.NewTicker(rule.every)
	defer t.Stop()
	events := func() uint64 { return s.lastID.Load() + s.ended.Load() }
	// Counted from zero, not from events() at start: the accept loop may
	// take a whole burst before this goroutine first runs.
	var released, seen uint64
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		now := events()
		if now-released >= rule.events && now-seen < rule.events/10 {
			debug.FreeOSMemory()
			s.memoryReleases.Add(1)
			released = now
		}
		seen = now
	}
}
