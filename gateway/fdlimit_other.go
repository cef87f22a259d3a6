//go:build !unix

package gateway

// openFileLimit returns 0: this platform has no per-process descriptor
// limit the server can read, so connections are bounded by MaxConns only.
func openFileLimit() int { return 0 }
