//go:build !linux

package iouring

import (
	"net"

	"github.com/meshgate/meshgate/gateway/internal/engine"
	"github.com/meshgate/meshgate/internal/uring"
)

// Check reports why there is no io_uring here.
func Check() error { return uring.Check() }

// Serve reports that there are no io_uring loops here: the caller serves
// tl otherwise.
func Serve(engine.Lifecycle, *net.TCPListener) (served bool, err error) { return false, nil }
