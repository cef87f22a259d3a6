package engine

import "errors"

// Temporary reports whether an Accept error is worth retrying: on Plan 9,
// which has no errno, only a timeout.
func Temporary(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// OutOfDescriptors reports false: Plan 9 has no descriptor limit to hit.
func OutOfDescriptors(error) bool { return false }
