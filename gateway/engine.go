package gateway

import (
	"fmt"
	"runtime"

	"github.com/meshgate/meshgate/gateway/internal/iouring"
)

// Engine names a way for a Server to carry the connections of a
// *net.TCPListener (Server.Engine).
type Engine string

// The engines. Every engine keeps the same contracts (Router, observers
// and ConnRecord, MaxConns and the open-file budget, loop detection,
// Shutdown with drain, deadlines, long streams in the Forwarder); they
// differ in what a connection costs.
const (
	// EngineGoroutines carries each connection on a goroutine of its own
	// through the net package.
	EngineGoroutines Engine = "goroutines"
	// EngineEpoll carries connections on event loops, one per GOMAXPROCS,
	// each on an epoll set of its own (Linux; what EventLoop turns on).
	EngineEpoll Engine = "epoll"
	// EngineIOUring carries connections on io_uring loops, one per
	// GOMAXPROCS, each a goroutine locked to its thread with a ring of its
	// own: accepts, receives into kernel-chosen buffers, the upstream
	// connect and the ClientHello's replay, sends and closes are submitted
	// to the ring, and the loop waits for their completions in the same
	// system call that submits the next batch (Linux 6.1 and later).
	EngineIOUring Engine = "io_uring"
)

// Engines lists every engine, the fastest first.
var Engines = []Engine{EngineIOUring, EngineEpoll, EngineGoroutines}

// CheckEngine reports whether e can serve here: nil, or why not (for
// EngineIOUring, what refused it: the kernel, the sysctl
// /proc/sys/kernel/io_uring_disabled, a seccomp filter).
func CheckEngine(e Engine) error {
	switch e {
	case EngineGoroutines:
		return nil
	case EngineEpoll:
		if runtime.GOOS != "linux" {
			return fmt.Errorf("gateway: engine %q needs Linux, and this is %s", e, runtime.GOOS)
		}
		return nil
	case EngineIOUring:
		if err := iouring.Check(); err != nil {
			return fmt.Errorf("gateway: engine %q: %w", e, err)
		}
		return nil
	}
	return fmt.Errorf("gateway: unknown engine %q (want one of %q)", string(e), Engines)
}

// FastestEngine returns the first of Engines that can serve here.
func FastestEngine() Engine {
	for _, e := range Engines {
		if CheckEngine(e) == nil {
			return e
		}
	}
	return EngineGoroutines
}

// engine returns the engine Serve uses for a TCP listener: Engine, or
// what EventLoop says when it is empty.
func (s *Server) engine() (Engine, error) {
	switch {
	case s.Engine == "" && s.EventLoop:
		return EngineEpoll, nil
	case s.Engine == "":
		return EngineGoroutines, nil
	case s.Engine == EngineGoroutines || s.Engine == EngineEpoll || s.Engine == EngineIOUring:
		return s.Engine, nil
	}
	return "", fmt.Errorf("gateway: Server.Engine %q is not an engine (want one of %q)", string(s.Engine), Engines)
}
