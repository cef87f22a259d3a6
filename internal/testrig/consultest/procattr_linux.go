package consultest

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// dieWithParent makes the kernel kill an agent whose test binary died, so
// that no agent outlives a crashed or killed test.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// Pdeathsig fires when the thread that forked the child ends, not the
// process: a goroutine that locks its thread and returns without unlocking
// it (the io_uring engine's loops do) ends that thread, and an agent
// forked on it earlier would be killed with it, mid-test. So agents are
// forked on one thread that lives as long as the test binary.
var (
	spawnOnce sync.Once
	spawns    chan func()
)

// startCmd starts cmd on the spawning thread.
func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawns = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives until the process ends
			for f := range spawns {
				f()
			}
		}()
	})
	done := make(chan error, 1)
	spawns <- func() { done <- cmd.Start() }
	return <-done
}
