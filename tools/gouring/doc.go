// Command gouring is tools/goepoll on io_uring: the smallest SNI proxy Go
// allows when the kernel does the waiting and the I/O. One loop per core
// (GOMAXPROCS), each a goroutine locked to its thread with a ring of its
// own (internal/uring) and a listening socket of its own (SO_REUSEPORT).
// A multishot accept takes the connections; a multishot recv per socket
// reads into buffers the kernel picks from a provided-buffer ring as data
// arrives; the upstream connect, the replay of the ClientHello, every send,
// the half-close and the close go through the ring, and the loop waits for
// their completions in one io_uring_enter, which also submits what the last
// batch queued. A socket and its TCP_NODELAY are the only other system
// calls per connection.
//
//	go run ./tools/gouring -listen 127.0.0.1:8443 -route api.default.dc1.internal.<trust-domain>.consul=127.0.0.1:21000
//
// Like goepoll it is not a gateway: no peek, connect or idle timeout, no
// limit on connections, no splice, no metrics, no logs. tools/peerbench
// runs it beside goepoll, meshgate, nginx and HAProxy as the yardstick of
// what Go with io_uring reaches on the machine. It runs on Linux only.
package main
