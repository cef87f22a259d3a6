// Command goepoll is the smallest SNI proxy Go allows: one epoll event loop
// per core (GOMAXPROCS), each on a listening socket of its own
// (SO_REUSEPORT), raw system calls, no goroutine per connection, no timers,
// no metrics, no logs. It reads the ClientHello's server name, connects to
// the address routed to that exact name, replays what it read and copies
// both ways, half-closing as the gateway does.
//
//	go run ./tools/goepoll -listen 127.0.0.1:8443 -route api.default.dc1.internal.<trust-domain>.consul=127.0.0.1:21000
//
// It is not a gateway: it has no peek, connect or idle timeout, no limit on
// connections and no splice. tools/peerbench runs it beside meshgate,
// nginx and HAProxy as a yardstick: what any proxy written in Go can reach
// on the machine, so that the distance between meshgate and nginx can be
// split into what the gateway's design costs and what Go's runtime costs.
// It runs on Linux only.
package main
