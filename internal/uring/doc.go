// Package uring drives Linux's io_uring with raw system calls: a Ring is
// one submission queue and one completion queue shared with the kernel
// (io_uring_setup, mmap of the rings, io_uring_enter), and a BufRing is a
// ring of provided buffers the kernel picks from as data arrives
// (IORING_REGISTER_PBUF_RING). It holds only what a socket proxy needs:
// multishot accept, multishot recv into provided buffers, socket, connect,
// send, shutdown, close, splice, poll, timeouts and cancellation, and the
// probe that tells whether the kernel has each of them.
//
// A Ring is not safe for concurrent use: one goroutine submits and reaps,
// and with [Params.SingleIssuer] that goroutine is locked to its thread
// (runtime.LockOSThread) before [New] and stays locked while the ring is
// open. Memory handed to the kernel in an SQE (a buffer to send, a socket
// address to connect to) must stay reachable from Go until its completion
// arrives: the kernel's reference is invisible to the garbage collector.
//
// Where io_uring cannot be had, because the kernel lacks it, it is
// disabled (/proc/sys/kernel/io_uring_disabled), a seccomp filter refuses
// it, or the system is not Linux, [Check] and [New] return an error that
// wraps [ErrUnavailable] and says which.
package uring

import "errors"

// ErrUnavailable is wrapped by the error of [Check] and [New] when this
// system will not give the process an io_uring, or one without the
// operations a proxy needs.
var ErrUnavailable = errors.New("uring: io_uring is unavailable")
