package gateway

import (
	"sync"
)

// descriptorBudget shares the process's open-file limit out, as HAProxy and
// nginx do, so that the server stops accepting before the process runs out
// of descriptors: a connection it accepted can then always dial its
// upstream, instead of every open connection failing together when accept
// has taken the last descriptors.
type descriptorBudget struct {
	// nofile is the soft RLIMIT_NOFILE the budget was derived from.
	nofile int
	// conns is how many forwarded connections all Servers of the process
	// may hold at once: each needs two sockets.
	conns int
	// pipes is how many splice pipes (two descriptors each) may be open.
	pipes int
	// slots holds a token per open connection, across Servers.
	slots chan struct{}
}

// budgetFor shares nofile descriptors: a reserve of one sixteenth (at least
// 32) for the rest of the process (listeners, the Consul client, logs, the
// runtime) of which half may hold splice pipes, and the remainder for
// connections, two descriptors each. 20,000 gives 9,375 connections and 312
// pipes; 256 gives 112 connections and 8 pipes.
func budgetFor(nofile int) *descriptorBudget {
	reserve := max(32, nofile/16)
	conns := (nofile - reserve) / 2
	if conns < 1 {
		return nil
	}
	return &descriptorBudget{nofile: nofile, conns: conns, pipes: reserve / 4, slots: make(chan struct{}, conns)}
}

// processBudget is the budget of this process's descriptor limit as it is
// when the first Server starts serving, or nil if the limit is unknown or
// too large to matter.
var processBudget = sync.OnceValue(func() *descriptorBudget {
	nofile := openFileLimit()
	if nofile <= 0 || nofile > 1<<24 {
		return nil
	}
	b := budgetFor(nofile)
	if b != nil {
		limitPipes(b.pipes)
	}
	return b
})
