package gateway

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/internal/testrig/uringtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// forbidUringEnv makes the test binary forbid io_uring (a seccomp filter,
// as in a container) before TestIOUringFallsBackToEpoll runs in it.
const forbidUringEnv = "MESHGATE_TEST_FORBID_IO_URING"

// Where a seccomp filter refuses io_uring, a Server asked for it serves
// on the event loops, and its log says why in one line, however many
// listeners it serves.
func TestIOUringFallsBackToEpoll(t *testing.T) {
	if os.Getenv(forbidUringEnv) != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIOUringFallsBackToEpoll$", "-test.v")
		cmd.Env = append(os.Environ(), forbidUringEnv+"=1", engineEnv+"="+string(EngineGoroutines))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "--- PASS: TestIOUringFallsBackToEpoll", "%s", out)
		return
	}
	require.NoError(t, uringtest.Forbid(unix.EPERM))
	require.ErrorContains(t, CheckEngine(EngineIOUring), "a seccomp filter")
	assert.Equal(t, EngineEpoll, FastestEngine())

	b := startBackend(t, echo)
	var log syncbuf.Buffer
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Engine: EngineIOUring, Logger: newTextLogger(&log)}
	for range 2 {
		gw := startGateway(t, s)
		c := echoed(t, gw, helloBytes(t, longName))
		c.Close()
	}
	lines := strings.Count(log.String(), "gateway: io_uring unavailable; serving with the epoll event loops")
	assert.Equal(t, 1, lines, "one log line:\n%s", log.String())
	assert.Contains(t, log.String(), "operation not permitted")
}
