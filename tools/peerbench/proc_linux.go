package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes cmd's process end when peerbench does, so that an
// interrupted run leaves no proxy behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
