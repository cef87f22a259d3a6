//go:build !linux

package consultest

import "syscall"

// dieWithParent returns nil: only Linux can tie an agent's life to its
// parent's, so elsewhere an agent of a killed test binary outlives it.
func dieWithParent() *syscall.SysProcAttr { return nil }
