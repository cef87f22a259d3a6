//go:build !linux

package consultest

import (
	"os/exec"
	"syscall"
)

// dieWithParent returns nil: only Linux can tie an agent's life to its
// parent's, so elsewhere an agent of a killed test binary outlives it.
func dieWithParent() *syscall.SysProcAttr { return nil }

// startCmd starts cmd.
func startCmd(cmd *exec.Cmd) error { return cmd.Start() }
