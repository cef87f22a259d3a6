//go:build unix

package gateway

import "syscall"

// openFileLimit returns the soft limit on open descriptors, or 0 if it is
// unknown or effectively unlimited (RLIM_INFINITY included).
func openFileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || uint64(lim.Cur) > 1<<30 {
		return 0
	}
	return int(lim.Cur)
}
