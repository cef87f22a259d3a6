package gateway

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked of each pipe (F_SETPIPE_SZ); the kernel
// may grant less. 256 KiB moved single streams 10-25% faster than 1 MiB in
// two A/B runs of peerbench (8 streams: no clear difference) and holds a
// quarter of the kernel memory per active direction.
const pipeSize = 1 << 18

// maxIdlePipes bounds the pipes the pool keeps open while unused.
const maxIdlePipes = 64

// pipe is a kernel pipe that carries spliced bytes between two sockets.
type pipe struct {
	r, w int
	size int
}

// pipePool lends pipes to directions that are moving data. A direction that
// waits for data holds none, so an idle connection costs no pipe descriptors.
// At most max pipes are open at once (idle or lent), within the process's
// descriptor budget; past that, get fails and the direction copies the chunk
// through a buffer instead.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
	open int // pipes open, idle or lent
	max  int // 0: no bound
}

var pipes pipePool

// errPipeBudget is get's error when max pipes are open.
var errPipeBudget = errors.New("gateway: pipe budget exhausted")

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	if pp.max > 0 && pp.open >= pp.max {
		pp.mu.Unlock()
		return nil, errPipeBudget
	}
	pp.open++
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		pp.mu.Lock()
		pp.open--
		pp.mu.Unlock()
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1], size: 1 << 16}
	unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if n, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0); err == nil && n > 0 {
		p.size = int(n)
	}
	return p, nil
}

// put returns an empty pipe to the pool, or closes it if the pool is full.
func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	idle := maxIdlePipes
	if pp.max > 0 {
		idle = min(idle, max(pp.max/2, 1)) // leave room to lend under the bound
	}
	if len(pp.free) < idle {
		pp.free = append(pp.free, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	pp.discard(p)
}

// discard closes a pipe that is not to be reused.
func (pp *pipePool) discard(p *pipe) {
	p.close()
	pp.mu.Lock()
	pp.open--
	pp.mu.Unlock()
}

// limitPipes bounds the pipes open at once, within the descriptor budget.
func limitPipes(n int) {
	pipes.mu.Lock()
	pipes.max = n
	pipes.mu.Unlock()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
