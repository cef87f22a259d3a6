package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/meshgate/meshgate/sni"
	"golang.org/x/sys/unix"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address to listen on")
	var routes routeFlag = map[string]unix.Sockaddr{}
	flag.Var(routes, "route", "SERVER_NAME=ADDR: where a ClientHello for that exact name goes (repeatable)")
	flag.Parse()
	log.SetFlags(0)
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		log.Fatalf("goepoll: -listen %q: %v", *listen, err)
	}
	if len(routes) == 0 {
		log.Fatal("goepoll: no -route")
	}
	loops := runtime.GOMAXPROCS(0)
	errs := make(chan error, loops)
	for range loops {
		l, err := newLoop(addr, routes)
		if err != nil {
			log.Fatalf("goepoll: %v", err)
		}
		addr = l.addr() // the port the first one bound, for port 0
		go func() { errs <- l.run() }()
	}
	log.Fatalf("goepoll: %v", <-errs)
}

// routeFlag maps server names to upstream addresses.
type routeFlag map[string]unix.Sockaddr

func (r routeFlag) String() string { return fmt.Sprint(len(r), " routes") }

func (r routeFlag) Set(v string) error {
	name, a, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q is not SERVER_NAME=ADDR", v)
	}
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return fmt.Errorf("%q: %v", v, err)
	}
	r[name] = sockaddr(ap)
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// sock is one side of a proxied connection.
type sock struct {
	fd         int
	peer       *sock  // nil while a client's hello is being read
	read       []byte // a client's bytes read before its upstream is connected
	pending    []byte // bytes for this socket that it could not take yet
	connecting bool   // an upstream whose connect has not completed
	eof        bool   // this socket's peer sent its FIN (read returned 0)
	closed     bool
}

// loop is one event loop: a listening socket and the connections it
// accepted, in an epoll set that Go's own poller waits on, so that no
// thread blocks in epoll_wait.
type loop struct {
	ep, lfd int
	epfile  *os.File
	epoll   syscall.RawConn
	routes  map[string]unix.Sockaddr
	socks   map[int]*sock
	events  []unix.EpollEvent
	ready   int
	buf     []byte
	hello   sni.ClientHello
}

const edge = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

func newLoop(addr netip.AddrPort, routes map[string]unix.Sockaddr) (*loop, error) {
	family := unix.AF_INET
	if !addr.Addr().Is4() {
		family = unix.AF_INET6
	}
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return nil, fmt.Errorf("SO_REUSEPORT: %w", err)
	}
	if err := unix.Bind(lfd, sockaddr(addr)); err != nil {
		return nil, fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return nil, err
	}
	// An epoll descriptor is itself pollable: Go's poller wakes the loop
	// when the set has events, and each epoll_wait returns at once.
	if err := unix.SetNonblock(ep, true); err != nil {
		return nil, err
	}
	epfile := os.NewFile(uintptr(ep), "epoll")
	epoll, err := epfile.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &loop{ep: ep, lfd: lfd, epfile: epfile, epoll: epoll, routes: routes, socks: map[int]*sock{},
		events: make([]unix.EpollEvent, 256), buf: make([]byte, 32<<10)}, nil
}

// addr returns the address the loop listens on.
func (l *loop) addr() netip.AddrPort {
	sa, err := unix.Getsockname(l.lfd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// close stops run (it returns an error) and closes the listening socket;
// connections in flight are left as they are.
func (l *loop) close() {
	l.epfile.Close()
	unix.Close(l.lfd)
}

// run waits for events and handles them, until close.
func (l *loop) run() error {
	wait := func(uintptr) bool {
		var err error
		l.ready, err = unix.EpollWait(l.ep, l.events, 0)
		return err == nil && l.ready > 0
	}
	for {
		if err := l.epoll.Read(wait); err != nil {
			return err
		}
		for _, ev := range l.events[:l.ready] {
			if int(ev.Fd) == l.lfd {
				l.accept()
			} else if s := l.socks[int(ev.Fd)]; s != nil {
				l.handle(s, ev.Events)
			}
		}
	}
}

func (l *loop) accept() {
	for {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or out of descriptors: the backlog holds the rest
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &sock{fd: fd}
		if unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: edge, Fd: int32(fd)}) != nil {
			unix.Close(fd)
			continue
		}
		l.socks[fd] = c
		l.readHello(c) // the hello usually came with the handshake's last ACK
	}
}

func (l *loop) handle(s *sock, ev uint32) {
	if s.closed {
		return
	}
	if s.peer == nil {
		l.readHello(s)
		return
	}
	if s.connecting {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if e, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			l.closePair(s)
			return
		}
		s.connecting = false
		ev |= unix.EPOLLOUT
	}
	if ev&unix.EPOLLOUT != 0 && len(s.pending) > 0 {
		if !l.flush(s) {
			return
		}
		l.pump(s.peer, false) // s took everything: read its peer again
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		l.pump(s, ev&(unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0)
	}
}

// readHello reads a client's ClientHello; once it is whole, it connects to
// the upstream of its server name, or closes the client if there is none.
func (l *loop) readHello(c *sock) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 || len(c.read)+n > sni.DefaultMaxSize {
			l.closePair(c)
			return
		}
		c.read = append(c.read, l.buf[:n]...)
		msg, err := helloMessage(c.read)
		if err == errShort {
			continue
		}
		if err == nil {
			err = sni.ParseClientHello(msg, &l.hello)
		}
		if err != nil {
			l.closePair(c)
			return
		}
		to, ok := l.routes[l.hello.ServerName]
		if !ok {
			l.closePair(c)
			return
		}
		l.connect(c, to)
		return
	}
}

var errShort = errors.New("the hello is not whole yet")

// helloMessage returns the handshake message of a ClientHello carried in
// one TLS record (a yardstick need not reassemble several).
func helloMessage(b []byte) ([]byte, error) {
	if len(b) < 5 {
		return nil, errShort
	}
	if b[0] != 22 {
		return nil, sni.ErrNotTLS
	}
	n := int(b[3])<<8 | int(b[4])
	if len(b) < 5+n {
		return nil, errShort
	}
	return b[5 : 5+n], nil
}

func (l *loop) connect(c *sock, to unix.Sockaddr) {
	family := unix.AF_INET
	if _, ok := to.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.closePair(c)
		return
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	u := &sock{fd: fd, peer: c, pending: c.read, connecting: true}
	c.peer, c.read = u, nil
	l.socks[fd] = u
	if err := unix.Connect(fd, to); err != nil && err != unix.EINPROGRESS {
		l.closePair(c)
		return
	}
	if unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: edge, Fd: int32(fd)}) != nil {
		l.closePair(c)
	}
}

// pump copies what src has to its peer until src has no more, the peer
// cannot take more (its pending bytes wait for EPOLLOUT) or src ends. A
// read shorter than the buffer drained src; when the event carried no
// hang-up, the next data comes with a new edge, and the read that would
// return EAGAIN is skipped.
func (l *loop) pump(src *sock, shortDrains bool) {
	dst := src.peer
	if dst.connecting || len(dst.pending) > 0 {
		return // dst's EPOLLOUT resumes src
	}
	if src.eof {
		// src's FIN was read and passed on: reading again would pass it on
		// again, and a second shutdown fails once the peer has closed too,
		// which closed the pair with bytes still pending the other way.
		return
	}
	for !src.closed {
		n, err := unix.Read(src.fd, l.buf)
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil:
			l.closePair(src)
			return
		case n == 0:
			src.eof = true
			if dst.eof {
				l.closePair(src)
			} else if unix.Shutdown(dst.fd, unix.SHUT_WR) != nil {
				l.closePair(src)
			}
			return
		}
		dst.pending = l.buf[:n]
		if !l.flush(dst) {
			if !dst.closed {
				dst.pending = append([]byte(nil), dst.pending...) // the buffer is reused
			}
			return
		}
		if shortDrains && n < len(l.buf) {
			return
		}
	}
}

// flush writes s's pending bytes and reports whether they are all out.
func (l *loop) flush(s *sock) bool {
	for len(s.pending) > 0 {
		n, err := unix.Write(s.fd, s.pending)
		if err == unix.EAGAIN {
			return false
		}
		if err != nil {
			l.closePair(s)
			return false
		}
		s.pending = s.pending[n:]
	}
	s.pending = nil
	return true
}

func (l *loop) closePair(s *sock) {
	for _, x := range [2]*sock{s, s.peer} {
		if x != nil && !x.closed {
			x.closed = true
			unix.Close(x.fd) // closing also takes it out of the epoll set
			delete(l.socks, x.fd)
		}
	}
}
