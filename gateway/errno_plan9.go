package gateway

import "errors"

// temporary reports whether an Accept error is worth retrying: on Plan 9,
// which has no errno, only a timeout.
func temporary(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// outOfDescriptors reports false: Plan 9 has no descriptor limit to hit.
func outOfDescriptors(error) bool { return false }
