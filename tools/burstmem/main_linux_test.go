package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// 3,000 clients opening one connection each at the same instant, then
// idling, cost examples/meshgateway at most 8 KiB of resident memory per
// connection 3 s later (19 KiB before its hello buffers came from a
// bounded pool, its directions parked sooner in a crowd and it released
// memory a second after a burst, instead of five); once they close, the
// memory they held is given back, but for what Go's runtime keeps for good
// after any burst (goroutine and poll descriptors, the metadata of the
// peak heap). The gateway is built without the race detector, whose
// shadow memory would be measured too.
func TestIdleBurstMemory(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "meshgateway")
	build := exec.Command("go", "build", "-o", bin, "../../examples/meshgateway")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building examples/meshgateway: %s", out)

	const n = 3000
	r, err := measure(bin, n, n, nil, schedule{early: 3 * time.Second, afterClose: 4 * time.Second})
	require.NoError(t, err)
	t.Logf("%d connections opened in %v by %d clients: %.1f KiB each after 3 s; 4 s after closing, %d KiB above the starting %d KiB (%d KiB anonymous)",
		n, r.opened.Round(time.Millisecond), n, r.perConn(r.early), r.closed-r.start, r.start, r.closedAnon-r.startAnon)
	assert.LessOrEqual(t, r.perConn(r.early), 8.0, "KiB of resident memory per idle connection")
	assert.Less(t, r.closed, r.early, "closing the connections gives memory back")
}
