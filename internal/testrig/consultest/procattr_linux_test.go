package consultest

import (
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A child started from a goroutine that locks its thread and ends without
// unlocking it (as the io_uring engine's loops do) outlives that thread:
// Pdeathsig ties it to the spawning thread, which lives as long as the
// test binary. Before, every agent forked on such a thread was killed when
// a gateway on the io_uring engine stopped.
func TestChildOutlivesTheThreadThatStartedIt(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = dieWithParent()
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread ends with the goroutine
		started <- startCmd(cmd)
	}()
	require.NoError(t, <-started)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("the child died with the thread that started it: %v", err)
	case <-time.After(2 * time.Second): // it dies within milliseconds when it does
	}
	cmd.Process.Kill()
	<-exited
}
