// Package epoll is the gateway's event-loop engine (Server.EventLoop, on
// Linux): one loop per GOMAXPROCS, each on an epoll set of its own, carrying
// connections on raw sockets without a goroutine or a timer each. It
// reaches the server only through the engine contract
// (gateway/internal/engine). Elsewhere Serve reports that it cannot serve.
package epoll
