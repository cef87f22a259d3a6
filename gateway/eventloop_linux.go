package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/sni"
	"golang.org/x/sys/unix"
)

// The event loops. Each is a goroutine that waits, through Go's poller,
// on an epoll set of its own holding the listener and the raw sockets of
// its connections, and runs every step of them (accept, ClientHello,
// Router, connect, forwarding, close) as their sockets become ready, with
// system calls of its own instead of the net package's. What it cannot do
// itself (a Route.Serve, a Server.Dial, a target that is not ip:port, a
// connection that moves more than handOverAfter bytes) it hands to the
// goroutine path as a net.Conn.

// loopTick is how often a loop checks its connections' deadlines (the
// ClientHello's, the dial's, the idle timeout) and retries accepting when
// a limit held it back.
const loopTick = 200 * time.Millisecond

// handOverAfter is how many bytes a direction moves through the loop
// before the connection goes to the Forwarder, which splices.
const handOverAfter = 64 << 10

// Event tags: the epoll data of the listener and of the wake-up eventfd;
// a socket's is its descriptor, with its sequence number beside it.
const (
	tagListener = -1
	tagWake     = -2
)

// The phases of a loop connection.
const (
	phaseHello = iota
	phaseDial
	phaseForward
)

const sockEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// evloop is one event loop of a Server.
type evloop struct {
	s         *Server
	ep        int
	epfile    *os.File
	epoll     syscall.RawConn
	ready     int
	events    []unix.EpollEvent
	wake      int             // an eventfd: Close and Shutdown write to it
	lrc       syscall.RawConn // the listener
	local     net.Addr        // the listener's address when it is one address, else nil
	listening bool
	held      bool // a limit holds accepting back: retried when a connection closes, and every tick
	backoff   bool // an accept error such as EMFILE: retried at the next tick
	seq       int32
	socks     map[int]*lsock
	conns     map[*lconn]struct{}
	buf       []byte
	now       time.Time
	nextSweep time.Time
	failed    chan<- error // where run reports a listener that failed

	// accept4Call is the call accept makes on the listener's descriptor,
	// made once so that accepting allocates no closure; it leaves its
	// results in accepted.
	accept4Call func(uintptr)
	accepted    struct {
		fd  int
		sa  syscall.Sockaddr
		err error
	}
}

// lsock is one socket of a loop connection.
type lsock struct {
	fd      int
	seq     int32
	c       *lconn
	pending []byte // bytes for this socket it could not take yet
	eof     bool   // its FIN was read
	closed  bool
}

// lconn is one connection of a loop.
type lconn struct {
	client, up *lsock   // in socks once registered; up is nil while no dial is in progress
	socks      [2]lsock // client's and up's, in the connection's own allocation
	phase      int
	gather     sni.Gatherer
	rawp       *[]byte // the pooled buffer raw started in
	raw        []byte  // what the client sent before forwarding
	hello      *sni.ClientHello
	info       ConnInfo
	st         story
	route      Route
	targets    []string
	next       int            // the next target to dial
	target     string         // the target being dialled
	targetAddr netip.AddrPort // target, parsed and unmapped
	waitFD     bool           // out of descriptors: dial target again at the next tick
	errs       []error        // each target's dial error
	deadline   time.Time
	last       time.Time // the last byte moved
	toUp       int64
	toClient   int64
	pair       tcpPair
}

// serveLoops serves tl's connections on event loops, one per GOMAXPROCS,
// until the server closes or the listener fails; ok is false when the loops
// cannot start, and the caller serves tl as usual.
func (s *Server) serveLoops(tl *net.TCPListener) (ok bool, err error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return false, nil
	}
	var local net.Addr
	if a, isTCP := tl.Addr().(*net.TCPAddr); isTCP && !a.IP.IsUnspecified() {
		local = a
	}
	failed := make(chan error, runtime.GOMAXPROCS(0))
	var loops []*evloop
	for range runtime.GOMAXPROCS(0) {
		l, err := s.newLoop(rc, local, failed)
		if err != nil {
			for _, l := range loops {
				l.close()
			}
			s.logger().Warn("gateway: event loop unavailable; serving with a goroutine per connection", "err", err.Error())
			return false, nil
		}
		loops = append(loops, l)
	}
	s.mu.Lock()
	if s.loops == nil {
		s.loops = map[*evloop]struct{}{}
	}
	for _, l := range loops {
		s.loops[l] = struct{}{}
	}
	s.mu.Unlock()
	for _, l := range loops {
		go l.run()
	}
	select {
	case <-s.done:
		return true, ErrServerClosed
	case err := <-failed:
		if s.closing() {
			return true, ErrServerClosed
		}
		return true, err
	}
}

func (s *Server) newLoop(lrc syscall.RawConn, local net.Addr, failed chan<- error) (*evloop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	l := &evloop{s: s, ep: ep, wake: wake, lrc: lrc, local: local, listening: true, failed: failed,
		socks: map[int]*lsock{}, conns: map[*lconn]struct{}{}, events: make([]unix.EpollEvent, 256), buf: make([]byte, 32<<10)}
	// syscall's accept4, not unix's: x/sys/unix asks each IPv4 and IPv6
	// address's socket for its protocol, a getsockopt per call.
	l.accept4Call = func(lfd uintptr) {
		a := &l.accepted
		a.fd, a.sa, a.err = syscall.Accept4(int(lfd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
	}
	fail := func(err error) (*evloop, error) {
		unix.Close(ep)
		unix.Close(wake)
		return nil, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: tagWake}); err != nil {
		return fail(os.NewSyscallError("epoll_ctl", err))
	}
	// Every loop waits for the listener; EPOLLEXCLUSIVE wakes one of them
	// per new connection rather than all.
	var lerr error
	if err := lrc.Control(func(fd uintptr) {
		lerr = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET | unix.EPOLLEXCLUSIVE, Fd: tagListener})
	}); err != nil {
		return fail(err)
	}
	if lerr != nil {
		return fail(os.NewSyscallError("epoll_ctl", lerr))
	}
	// The epoll descriptor is itself pollable: Go's poller wakes the loop
	// when the set has events, so no thread blocks in epoll_wait.
	if err := unix.SetNonblock(ep, true); err != nil {
		return fail(os.NewSyscallError("fcntl", err))
	}
	l.epfile = os.NewFile(uintptr(ep), "epoll")
	if l.epoll, err = l.epfile.SyscallConn(); err != nil {
		l.epfile.Close()
		unix.Close(wake)
		return nil, err
	}
	return l, nil
}

// close releases the loop's own descriptors.
func (l *evloop) close() {
	l.epfile.Close()
	unix.Close(l.wake)
}

// wakeUp makes the loop look at the server's state. The caller holds s.mu,
// under which a loop leaves s.loops before it closes its eventfd.
func (l *evloop) wakeUp() {
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
}

// run waits for events and handles them, until the server is closed and
// the loop has no connection left.
func (l *evloop) run() {
	l.now = time.Now()
	l.sweep() // sets the first tick
	wait := func(uintptr) bool {
		n, err := unix.EpollWait(l.ep, l.events, 0)
		if err != nil || n == 0 {
			return false
		}
		l.ready = n
		return true
	}
	for {
		l.ready = 0
		err := l.epoll.Read(wait)
		l.now = time.Now()
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.failed <- err
			l.exit()
			return
		}
		for _, ev := range l.events[:l.ready] {
			switch ev.Fd {
			case tagListener:
				l.accept()
			case tagWake:
				var b [8]byte
				unix.Read(l.wake, b[:])
			default:
				if k := l.socks[int(ev.Fd)]; k != nil && k.seq == ev.Pad {
					l.handle(k, ev.Events)
				}
			}
		}
		if l.s.hardClosed.Load() {
			l.closeAll()
		}
		if !l.now.Before(l.nextSweep) {
			l.sweep()
		}
		if (l.s.closing() || !l.listening) && len(l.conns) == 0 {
			l.exit()
			return
		}
	}
}

// exit takes the loop out of the server and closes it.
func (l *evloop) exit() {
	l.s.mu.Lock()
	delete(l.s.loops, l)
	l.s.mu.Unlock()
	l.close()
}

// sweep ends the connections past their deadlines, retries the dials that
// waited for a descriptor, and accepts again if a limit held it back; then
// it sets when it runs next.
func (l *evloop) sweep() {
	s := l.s
	idle := s.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	for c := range l.conns {
		switch c.phase {
		case phaseHello:
			if !c.deadline.IsZero() && l.now.After(c.deadline) {
				l.refuse(c, ReasonPeekTimeout, fmt.Errorf("%w after %d bytes: no whole ClientHello within %s", sni.ErrTimeout, len(c.raw), c.deadline.Sub(c.st.start).Round(time.Millisecond)))
			}
		case phaseDial:
			switch {
			case c.waitFD:
				c.waitFD = false
				c.next--
				l.dialNext(c)
			case c.up != nil && l.now.After(c.deadline):
				l.dropUp(c)
				l.dialFailed(c, dialError(c.targetAddr, "connect", os.ErrDeadlineExceeded))
				l.dialNext(c)
			}
		case phaseForward:
			if idle > 0 && l.now.Sub(c.last) > idle {
				l.finish(c, ErrIdleTimeout)
			}
		}
	}
	if l.held || l.backoff {
		l.backoff = false
		l.accept()
	}
	l.nextSweep = l.now.Add(loopTick)
	l.epfile.SetReadDeadline(l.nextSweep)
}

// closeAll ends every connection at once, for Close.
func (l *evloop) closeAll() {
	for c := range l.conns {
		if c.phase == phaseForward {
			l.finish(c, ErrStopped)
		} else {
			l.refuse(c, ReasonShutdown, ErrServerClosed)
		}
	}
}

// accept takes the new connections off the listener while the limits let
// it.
func (l *evloop) accept() {
	s := l.s
	for l.listening && !l.backoff && !s.closing() {
		// A LimitObserver hears when accepting starts to wait, not of
		// every retry.
		if !s.trySlot(!l.held) {
			l.held = true
			return
		}
		l.held = false
		if cerr := l.lrc.Control(l.accept4Call); cerr != nil {
			s.releaseSlot()
			l.listening = false
			select {
			case l.failed <- cerr:
			default:
			}
			return
		}
		fd, sa, err := l.accepted.fd, l.accepted.sa, l.accepted.err
		if err != nil {
			s.releaseSlot()
			switch {
			case err == unix.EAGAIN:
			case err == unix.ECONNABORTED || err == unix.EINTR:
				continue
			case temporary(err):
				s.logger().Warn("gateway: accept error; retrying", "err", os.NewSyscallError("accept4", err).Error(), "retry_in", loopTick)
				l.backoff = true
			default:
				l.listening = false
				select {
				case l.failed <- os.NewSyscallError("accept4", err):
				default:
				}
			}
			return
		}
		l.open(fd, sa)
	}
}

// open starts a connection the loop accepted.
func (l *evloop) open(fd int, sa syscall.Sockaddr) {
	s := l.s
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if s.TCPKeepAlive > 0 {
		setKeepAlive(fd, net.KeepAliveConfig{Enable: true, Idle: s.TCPKeepAlive})
	}
	remote := tcpAddrOf(sa)
	local := l.local
	if local == nil {
		if lsa, err := syscall.Getsockname(fd); err == nil {
			local = tcpAddrOf(lsa)
		}
	}
	c := &lconn{info: ConnInfo{ID: s.lastID.Add(1), Remote: remote, Local: local}}
	c.st = story{info: &c.info, start: l.now, to: connObserverOf(s.Observer), up: upstreamObserverOf(s.Observer),
		dial: dialObserverOf(s.Observer)}
	s.active.Add(1)
	l.conns[c] = struct{}{}
	s.observer().Accepted(remote)
	c.client = l.addSock(c, &c.socks[0], fd)
	if c.client == nil {
		l.refuse(c, ReasonClosed, fmt.Errorf("gateway: registering the connection with epoll failed"))
		return
	}
	if t := s.PeekTimeout; t >= 0 {
		if t == 0 {
			t = sni.DefaultTimeout
		}
		c.deadline = l.now.Add(t)
	}
	c.rawp = helloBuffers.get()
	c.raw = (*c.rawp)[:0]
	c.hello = helloPool.get()
	c.gather.MaxSize = s.MaxHelloSize
	l.readHello(c) // the hello usually came with the handshake's last ACK
}

// addSock registers fd with the loop's epoll set as k, one of c's two
// sockets, and returns k; or it closes fd and returns nil.
func (l *evloop) addSock(c *lconn, k *lsock, fd int) *lsock {
	l.seq++
	*k = lsock{fd: fd, seq: l.seq, c: c}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: sockEvents, Fd: int32(fd), Pad: k.seq}); err != nil {
		unix.Close(fd)
		return nil
	}
	l.socks[fd] = k
	return k
}

// closeSock closes k (which also takes it out of the epoll set).
func (l *evloop) closeSock(k *lsock) {
	if k == nil || k.closed {
		return
	}
	k.closed = true
	delete(l.socks, k.fd)
	unix.Close(k.fd)
}

func (l *evloop) handle(k *lsock, ev uint32) {
	c := k.c
	switch c.phase {
	case phaseHello:
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.readHello(c)
		}
	case phaseDial:
		// A client's events wait: connected reads it. An upstream's that
		// completes the connect may also say it sent something already.
		if k == c.up && ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.connectDone(c)
			if c.phase == phaseForward && !k.closed && ev&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
				l.pump(k, false)
			}
		}
	case phaseForward:
		if ev&unix.EPOLLOUT != 0 && len(k.pending) > 0 && l.flush(k) {
			l.pump(l.peer(k), false) // k took everything: read its peer again
		}
		// Whatever came for k's peer, k's own bytes are read: with
		// edge-triggered events this one will not come again.
		if c.phase == phaseForward && ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.pump(k, ev&(unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0)
		}
	}
}

func (l *evloop) peer(k *lsock) *lsock {
	if k == k.c.client {
		return k.c.up
	}
	return k.c.client
}

// readHello reads the client's bytes until its ClientHello is whole, then
// routes the connection.
func (l *evloop) readHello(c *lconn) {
	for c.phase == phaseHello {
		if len(c.raw) == cap(c.raw) {
			c.raw = append(c.raw, 0)[:len(c.raw)]
		}
		n, err := unix.Read(c.client.fd, c.raw[len(c.raw):cap(c.raw)])
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.refuse(c, ReasonClosed, fmt.Errorf("sni: reading ClientHello: %w", os.NewSyscallError("read", err)))
			return
		case n == 0:
			err := c.gather.Closed(c.raw)
			l.refuse(c, peekReason(err), err)
			return
		}
		c.raw = c.raw[:len(c.raw)+n]
		msg, need, err := c.gather.Next(c.raw)
		if err != nil {
			l.refuse(c, peekReason(err), err)
			return
		}
		if msg == nil {
			if need > cap(c.raw) {
				c.raw = append(make([]byte, 0, max(need, 2*cap(c.raw))), c.raw...)
			}
			continue
		}
		err = sni.ParseClientHello(msg, c.hello)
		if c.st.to != nil || c.st.up != nil {
			c.st.peek = time.Since(c.st.start)
		}
		if err != nil {
			l.refuse(c, peekReason(err), err)
			return
		}
		l.routeConn(c)
		return
	}
}

// routeConn asks the Router and dials the route, or hands the connection to
// the goroutine path for what the loop does not do itself.
func (l *evloop) routeConn(c *lconn) {
	s := l.s
	c.st.serverName = c.hello.ServerName
	ctx := context.WithValue(context.Background(), connInfoKey{}, &c.info)
	route, reason, err := s.route(ctx, c.info.Remote, c.info.Local, c.hello)
	c.st.route, c.st.kind = route.Name, route.Kind
	if err != nil {
		l.refuse(c, reason, err)
		return
	}
	if route.Serve != nil || s.Dial != nil || !allAddrPorts(route.Targets) {
		l.handOver(c, route)
		return
	}
	c.route, c.targets, c.phase = route, s.health.order(route.Targets), phaseDial
	l.dialNext(c)
}

// allAddrPorts reports whether every target is ip:port, which the loop
// dials itself.
func allAddrPorts(targets []string) bool {
	for _, t := range targets {
		if _, err := netip.ParseAddrPort(t); err != nil {
			return false
		}
	}
	return true
}

// dialNext dials the next target of c's route; when none is left it
// refuses c.
func (l *evloop) dialNext(c *lconn) {
	s := l.s
	for c.next < len(c.targets) {
		if s.closing() {
			c.errs = append(c.errs, ErrServerClosed)
			break
		}
		c.target = c.targets[c.next]
		c.next++
		ap, _ := netip.ParseAddrPort(c.target) // routeConn checked it parses
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		c.targetAddr = ap
		var family int
		var sa unix.Sockaddr
		if ap.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		} else {
			family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if outOfDescriptors(err) && (c.deadline.IsZero() || l.now.Before(c.deadline)) {
				if c.deadline.IsZero() {
					c.deadline = l.now.Add(s.connectTimeout(c.route))
				}
				c.waitFD = true // not the target's fault: try it again at the next tick
				return
			}
			l.dialFailed(c, dialError(c.targetAddr, "socket", err))
			continue
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		err = unix.Connect(fd, sa)
		if err != nil && err != unix.EINPROGRESS {
			unix.Close(fd)
			l.dialFailed(c, dialError(c.targetAddr, "connect", err))
			continue
		}
		if c.up = l.addSock(c, &c.socks[1], fd); c.up == nil {
			l.dialFailed(c, dialError(c.targetAddr, "epoll_ctl", unix.ENOMEM))
			continue
		}
		c.deadline = l.now.Add(s.connectTimeout(c.route))
		if err == nil {
			l.connected(c)
		}
		return
	}
	reason := ReasonDialFailed
	if len(c.errs) > 0 && errors.Is(c.errs[len(c.errs)-1], ErrServerClosed) {
		reason = ReasonShutdown
	}
	l.refuse(c, reason, problems.Join(c.errs...))
}

// dialError is the error net.Dial would give for a dial of target that
// failed in op.
func dialError(target netip.AddrPort, op string, err error) error {
	if errno, ok := err.(unix.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(target), Err: err}
}

// dialFailed records a target's failure, as Server.dial does.
func (l *evloop) dialFailed(c *lconn, err error) {
	s := l.s
	c.deadline = time.Time{}
	if s.health.failed(c.target) {
		s.logger().Warn("gateway: target ejected: later connections try the route's other targets first, until a probe connects to it",
			"target", c.target, "consecutive_failures", s.health.after, "err", err.Error())
	}
	s.observer().DialFailed(c.route.Name, c.target, err)
	c.st.dialFailed(c.target, err)
	c.errs = append(c.errs, err)
}

// dropUp closes the upstream socket of a dial that failed.
func (l *evloop) dropUp(c *lconn) {
	l.closeSock(c.up)
	c.up = nil
}

// connectDone finishes a dial that was in progress.
func (l *evloop) connectDone(c *lconn) {
	e, err := unix.GetsockoptInt(c.up.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && e != 0 {
		err = unix.Errno(e)
	}
	if err != nil {
		l.dropUp(c)
		l.dialFailed(c, dialError(c.targetAddr, "connect", err))
		l.dialNext(c)
		return
	}
	l.connected(c)
}

// connected starts forwarding once the upstream is connected: its
// addresses are recorded for loop detection, and the ClientHello is
// written to it.
func (l *evloop) connected(c *lconn) {
	s := l.s
	if lsa, err := syscall.Getsockname(c.up.fd); err == nil {
		c.pair = tcpPair{addrPortOf(lsa), c.targetAddr}
		s.mu.Lock()
		s.dialed[c.pair] = struct{}{}
		s.mu.Unlock()
	}
	ka := c.route.KeepAlive
	if !ka.Enable && c.route.Remote {
		ka = s.RemoteKeepAlive
	}
	if !ka.Enable && s.TCPKeepAlive > 0 {
		ka = net.KeepAliveConfig{Enable: true, Idle: s.TCPKeepAlive}
	}
	if ka.Enable {
		setKeepAlive(c.up.fd, ka)
	}
	s.health.succeeded(c.target)
	c.st.target = c.target
	c.st.connected()
	s.logForwarding(c.info.Remote, &c.st)
	c.phase, c.last, c.deadline = phaseForward, l.now, time.Time{}
	c.up.pending = c.raw
	if !l.flush(c.up) {
		return
	}
	// The sockets are edge-triggered. Nothing was read from upstream yet,
	// so its first bytes will come with an event; the client may have sent
	// more, or its FIN, with the hello's edge, and is read now.
	l.pump(c.client, false)
}

// pump copies what src has to its peer until src has no more, the peer
// cannot take more (its pending bytes wait for EPOLLOUT) or src ends. A
// read shorter than the buffer drained src; when the event carried no
// hang-up, the next data comes with a new edge, and the read that would
// return EAGAIN is skipped.
func (l *evloop) pump(src *lsock, shortDrains bool) {
	c := src.c
	dst := l.peer(src)
	if src.closed || len(dst.pending) > 0 || src.eof {
		// A socket is not read after its FIN: reading again would pass it on
		// again, and a second shutdown fails once the peer has closed too.
		return
	}
	for {
		n, err := unix.Read(src.fd, l.buf)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.finish(c, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)})
			return
		case n == 0:
			src.eof = true
			if dst.eof {
				l.finish(c, nil)
			} else if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil {
				l.finish(c, nil)
			}
			return
		}
		c.last = l.now
		dst.pending = l.buf[:n]
		if !l.flush(dst) {
			if !dst.closed {
				dst.pending = append([]byte(nil), dst.pending...) // the buffer is the loop's
			}
			return
		}
		if (c.toUp >= handOverAfter || c.toClient >= handOverAfter) && l.handOverForwarding(c) {
			return
		}
		if shortDrains && n < len(l.buf) {
			return
		}
	}
}

// flush writes k's pending bytes and reports whether they are all out.
func (l *evloop) flush(k *lsock) bool {
	c := k.c
	for len(k.pending) > 0 {
		n, err := unix.Write(k.fd, k.pending)
		if err == unix.EAGAIN {
			return false
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.finish(c, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", err)})
			return false
		}
		if k == c.up {
			c.toUp += int64(n)
		} else {
			c.toClient += int64(n)
		}
		k.pending = k.pending[n:]
	}
	k.pending = nil
	if k == c.up {
		l.putHello(c) // the replayed hello is out
	}
	return true
}

// putHello gives c's hello buffers back to their pools, once.
func (l *evloop) putHello(c *lconn) {
	if c.rawp == nil {
		return
	}
	l.s.putHello(c.rawp, c.raw, c.hello)
	c.rawp, c.raw, c.hello = nil, nil, nil
}

// finish closes a forwarded connection and reports it.
func (l *evloop) finish(c *lconn, err error) {
	s := l.s
	l.closeSock(c.client)
	l.closeSock(c.up)
	s.forwarded(&c.st, Stats{ClientToUpstream: c.toUp, UpstreamToClient: c.toClient, Duration: l.now.Sub(c.st.start), Err: err})
	l.forget(c)
}

// refuse rejects a connection that will not be forwarded, as
// Server.refuse does.
func (l *evloop) refuse(c *lconn, reason string, err error) {
	s := l.s
	s.observer().Rejected(reason, err) // counted before the client can see the close
	l.closeSock(c.client)
	l.closeSock(c.up)
	s.logRejection(c.info.Remote, c.st.serverName, reason, err)
	c.st.closed(reason, Stats{}, err)
	l.forget(c)
}

// forget drops a finished connection and frees its slot; a loop that a
// limit held back accepts again.
func (l *evloop) forget(c *lconn) {
	s := l.s
	if _, ok := l.conns[c]; !ok {
		return
	}
	delete(l.conns, c)
	if c.pair.from.IsValid() {
		s.mu.Lock()
		delete(s.dialed, c.pair)
		s.mu.Unlock()
	}
	l.putHello(c)
	c.gather.Reset()
	s.ended.Add(1)
	s.active.Add(-1)
	s.releaseSlot()
	if l.held {
		l.accept()
	}
}

// release takes c out of the loop without closing its sockets or freeing
// its slot: the goroutine path takes them over.
func (l *evloop) release(c *lconn) {
	for _, k := range [2]*lsock{c.client, c.up} {
		if k != nil && !k.closed {
			unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, k.fd, nil)
			delete(l.socks, k.fd)
			k.closed = true
		}
	}
	delete(l.conns, c)
	c.gather.Reset()
}

// netConn turns a raw socket into a net.Conn (which takes its own
// descriptor) and closes fd.
func netConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	return nc, err
}

// handOver gives a routed connection to the goroutine path: for a
// Route.Serve, a Server.Dial, or a target that needs a name resolved.
func (l *evloop) handOver(c *lconn, route Route) {
	s := l.s
	raw := append([]byte(nil), c.raw...)
	l.putHello(c)
	l.release(c)
	nc, err := netConn(c.client.fd)
	if err != nil {
		l.conns[c] = struct{}{} // the socket is closed: refuse reports and forgets it
		l.refuse(c, ReasonDialFailed, err)
		return
	}
	gc := &conn{client: nc}
	s.mu.Lock()
	s.conns[gc] = struct{}{} // counted in active since accept
	s.mu.Unlock()
	st := c.st
	go func() {
		if run := s.openRouted(gc, st, route, raw); run != nil {
			run()
		}
	}()
}

// handOverForwarding gives a connection that moves more than
// handOverAfter bytes to the Forwarder, which splices, if nothing waits in
// the loop's hands and neither side has ended; it reports whether the loop
// let go of c.
func (l *evloop) handOverForwarding(c *lconn) bool {
	s := l.s
	if c.client.eof || c.up.eof || c.client.pending != nil || c.up.pending != nil {
		return false
	}
	l.release(c)
	client, err1 := netConn(c.client.fd)
	up, err2 := netConn(c.up.fd)
	if err := errors.Join(err1, err2); err != nil {
		if client != nil {
			client.Close()
		}
		if up != nil {
			up.Close()
		}
		l.conns[c] = struct{}{}
		l.finish(c, err)
		return true
	}
	gc := &conn{client: client, dialed: c.pair}
	gc.upstream.Store(&up)
	s.mu.Lock()
	s.conns[gc] = struct{}{} // counted in active since accept
	s.mu.Unlock()
	runDown := s.forward(gc, c.st, up, nil, Stats{ClientToUpstream: c.toUp, UpstreamToClient: c.toClient})
	go runDown()
	return true
}

// setKeepAlive turns on TCP keepalive on fd as net.TCPConn.SetKeepAliveConfig
// does, with its defaults (15 s, 15 s, 9 probes).
func setKeepAlive(fd int, ka net.KeepAliveConfig) {
	secs := func(d time.Duration) int {
		if d == 0 {
			d = 15 * time.Second
		}
		return max(1, int((d+time.Second-1)/time.Second))
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	if ka.Idle >= 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(ka.Idle))
	}
	if ka.Interval >= 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(ka.Interval))
	}
	if ka.Count >= 0 {
		count := ka.Count
		if count == 0 {
			count = 9
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, count)
	}
}

// addrPortOf converts a socket address to an address and port, an IPv4
// address in IPv6 unmapped.
func addrPortOf(sa syscall.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// tcpAddrOf converts a socket address to a *net.TCPAddr.
func tcpAddrOf(sa syscall.Sockaddr) *net.TCPAddr { return net.TCPAddrFromAddrPort(addrPortOf(sa)) }
