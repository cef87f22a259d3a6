// Package rawsock holds what the engines that drive raw sockets themselves
// (gateway/internal/epoll, and an io_uring one) share: socket options as
// the net package sets them, socket addresses as net's types, the errors
// net.Dial would give, and the hand-over of a raw socket as a net.Conn.
// Linux only; it knows nothing of the server.
package rawsock
