package gateway

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An engine leaves the process's threads alive when its Server closes: a
// thread that ends takes with it every child process started from it with
// a Pdeathsig (Go starts processes from whichever thread it is on), as the
// io_uring loops' locked threads once did to the Consul agents of the
// program that embedded the gateway.
func TestEnginesEndNoThread(t *testing.T) {
	for _, e := range Engines {
		if CheckEngine(e) != nil {
			continue
		}
		t.Run(string(e), func(t *testing.T) {
			b := startBackend(t, echo)
			hello := helloBytes(t, longName)
			var before []string
			// Three servers in turn, each closed and its loops gone
			// before the next: the threads of the first have ended by
			// the last, if an engine ends its threads.
			for i := range 3 {
				s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Engine: e}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				errc := make(chan error, 1)
				go func() { errc <- s.Serve(ln) }()
				echoed(t, ln.Addr().String(), hello).Close()
				if i == 0 {
					before = threads(t)
				}
				require.NoError(t, s.Close())
				require.ErrorIs(t, <-errc, ErrServerClosed)
				waitFor(t, "the engine's loops to end", func() bool {
					buf := make([]byte, 1<<20)
					stacks := string(buf[:runtime.Stack(buf, true)])
					return !strings.Contains(stacks, "gateway/internal/iouring.") && !strings.Contains(stacks, "gateway/internal/epoll.")
				})
			}
			after := threads(t)
			for _, tid := range before {
				assert.Contains(t, after, tid, "a thread that ended with a server")
			}
		})
	}
}

// threads lists the process's threads by their IDs, leaving out the
// kernel's io_uring workers (named iou-wrk-N and iou-sqp-N), which come
// and go as the kernel needs them.
func threads(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	var ids []string
	for _, e := range entries {
		comm, err := os.ReadFile("/proc/self/task/" + e.Name() + "/comm")
		if err == nil && strings.HasPrefix(string(comm), "iou-") {
			continue
		}
		ids = append(ids, e.Name())
	}
	return ids
}
