//go:build !linux

package gateway

import "net"

// evloop is an event loop, on Linux only.
type evloop struct{}

// serveLoops reports that there are no event loops here.
func (s *Server) serveLoops(*net.TCPListener) (bool, error) { return false, nil }

func (l *evloop) wakeUp() {}
