//go:build !linux

package uring

import (
	"fmt"
	"runtime"
)

// Check reports why this process cannot have an io_uring: on systems other
// than Linux, always.
func Check() error {
	return fmt.Errorf("%w: it is a Linux interface and this is %s", ErrUnavailable, runtime.GOOS)
}
