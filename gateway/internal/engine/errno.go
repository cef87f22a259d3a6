//go:build !plan9

package engine

import (
	"errors"
	"syscall"
)

// Temporary reports whether an Accept error is worth retrying: the process
// or the system is out of descriptors or buffers, or a timeout.
func Temporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Temporary() || errno == syscall.ENOBUFS || errno == syscall.ENOMEM
	}
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// OutOfDescriptors reports whether err says the process or the system has
// no descriptor left.
func OutOfDescriptors(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
