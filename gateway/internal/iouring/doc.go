// Package iouring is the gateway's io_uring engine (Server.Engine
// EngineIOUring, on Linux): one loop per GOMAXPROCS, each a goroutine
// locked to its thread with a ring of its own (internal/uring), carrying
// connections on raw sockets without a goroutine, a timer or a system call
// of their own for most steps. Accepts, receives (into buffers the kernel
// picks from a provided-buffer ring as data arrives), the upstream connect
// with the ClientHello's replay linked to it, sends, half-closes and closes
// are submitted to the ring, and the loop waits for their completions in
// the same io_uring_enter that submits the next batch. It reaches the server
// only through the engine contract (gateway/internal/engine). Where
// io_uring cannot be had, Check says why, and the server serves with
// another engine.
package iouring
