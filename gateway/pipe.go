package gateway

import (
	"errors"
	"sync"
	"syscall"
)

// pipeSize is the capacity asked of each pipe (F_SETPIPE_SZ); the kernel
// may grant less. 256 KiB moved single streams 10-25% faster than 1 MiB in
// two A/B runs of peerbench (8 streams: no clear difference) and holds a
// quarter of the kernel memory per active direction.
const pipeSize = 1 << 18

// maxIdlePipes bounds the pipes the pool keeps open while unused.
const maxIdlePipes = 64

const (
	fcntlSetPipeSize = 1031 // F_SETPIPE_SZ
	fcntlGetPipeSize = 1032 // F_GETPIPE_SZ
)

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
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		pp.mu.Lock()
		pp.open--
		pp.mu.Unlock()
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1], size: 1 << 16}
	syscall.Syscall(syscall.SYS_FCNTL, uintptr(p.w), fcntlSetPipeSize, pipeSize)
	if n, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(p.w), fcntlGetPipeSize, 0); errno == 0 && n > 0 {
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

// setMax bounds the pipes open at once; 0 means no bound.
func (pp *pipePool) setMax(n int) {
	pp.mu.Lock()
	pp.max = n
	pp.mu.Unlock()
}

func (p *pipe) close() {
	syscall.Close(p.r)
	syscall.Close(p.w)
}
