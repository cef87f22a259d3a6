//go:build !linux

package epoll

import (
	"net"

	"github.com/meshgate/meshgate/gateway/internal/engine"
)

// Serve reports that there are no event loops here: the caller serves tl
// otherwise.
func Serve(engine.Lifecycle, *net.TCPListener) (served bool, err error) { return false, nil }
