package consultest

import "syscall"

// dieWithParent makes the kernel kill an agent whose test binary died, so
// that no agent outlives a crashed or killed test.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
