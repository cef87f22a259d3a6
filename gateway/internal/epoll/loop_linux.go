package epoll

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/engine"
	"github.com/meshgate/meshgate/gateway/internal/rawsock"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/sni"
	"golang.org/x/sys/unix"
)

// The event loops. Each is a goroutine that waits, through Go's poller,
// on an epoll set of its own holding the listener and the raw sockets of
// its connections, and runs every step of them (accept, ClientHello,
// connect, forwarding, close) as their sockets become ready, with system
// calls of its own instead of the net package's; at each step it tells the
// server's lifecycle (engine.Conn), which decides. What it cannot do itself
// (a Route.Serve, a Server.Dial, a target that is not ip:port, a
// connection that moves more than handOverAfter bytes) it hands over as a
// net.Conn.

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

// evloop is one event loop of a server.
type evloop struct {
	lc        engine.Lifecycle
	set       *engine.Settings
	peek      time.Duration // the peek timeout; negative: none
	ep        int
	epfile    *os.File
	epoll     syscall.RawConn
	ready     int
	events    []unix.EpollEvent
	wake      int             // an eventfd: Close and Shutdown write to it
	lrc       syscall.RawConn // the listener
	lfd       int             // the loop's own descriptor of the listener, in its epoll set; -1 once taken out
	local     net.Addr        // the listener's address when it is one address, else nil
	listening bool
	released  chan struct{} // closed once the loop has let go of the listener
	held      bool          // a limit holds accepting back: retried after each batch of events, and every tick
	backoff   bool          // an accept error such as EMFILE: retried at the next tick
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

// lconn is one connection of a loop: its engine.Sockets.
type lconn struct {
	l              *evloop
	lc             engine.Conn
	client, up     *lsock   // in socks once registered; up is nil while no dial is in progress
	socks          [2]lsock // client's and up's, in the connection's own allocation
	phase          int
	gather         sni.Gatherer
	rawp           *[]byte // the pooled buffer raw started in
	raw            []byte  // what the client sent before forwarding
	hello          *sni.ClientHello
	connectTimeout time.Duration       // the route's
	keepAlive      net.KeepAliveConfig // the route's own, for the upstream socket
	targetAddr     netip.AddrPort      // the target being dialled, unmapped
	waitFD         bool                // out of descriptors: dial target again at the next tick
	deadline       time.Time
	last           time.Time // the last byte moved
	toUp           int64
	toClient       int64
}

// Serve serves tl's connections on event loops, one per GOMAXPROCS, until
// the server closes (err is nil) or the listener fails (err says how);
// served is false when the loops cannot start, and the caller serves tl
// otherwise.
func Serve(lc engine.Lifecycle, tl *net.TCPListener) (served bool, err error) {
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
		l, err := newLoop(lc, rc, local, failed)
		if err != nil {
			for _, l := range loops {
				l.close()
			}
			lc.Settings().Logger.Warn("gateway: event loop unavailable; serving with a goroutine per connection", "err", err.Error())
			return false, nil
		}
		loops = append(loops, l)
	}
	for i, l := range loops {
		if !lc.Attach(l) { // the server closed meanwhile
			for _, l := range loops[:i] {
				lc.Detach(l)
			}
			for _, l := range loops {
				l.close()
			}
			return true, nil
		}
	}
	for _, l := range loops {
		go l.run()
	}
	select {
	case <-lc.Done():
		return true, nil
	case err := <-failed:
		if lc.Closing() {
			return true, nil
		}
		if errors.Is(err, net.ErrClosed) {
			// Its owner closed the listener: every loop lets go of it
			// at its next tick, and then the address is free again.
			for _, l := range loops {
				<-l.released
			}
		}
		return true, err
	}
}

func newLoop(lc engine.Lifecycle, lrc syscall.RawConn, local net.Addr, failed chan<- error) (*evloop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	set := lc.Settings()
	peek := set.PeekTimeout
	if peek == 0 {
		peek = sni.DefaultTimeout
	}
	l := &evloop{lc: lc, set: set, peek: peek, ep: ep, wake: wake, lrc: lrc, lfd: -1, local: local, listening: true, failed: failed, released: make(chan struct{}),
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
	// per new connection rather than all. It registers a descriptor of its
	// own (a dup), so that when the server stops it can take the listener
	// out of its set after the server closed the listener: closing a
	// descriptor does not take its socket out of an epoll set while another
	// one (a process the listener was handed to, in a binary upgrade) still
	// holds it, and a set that keeps it would take that process's wake-ups.
	var lerr error
	if err := lrc.Control(func(fd uintptr) {
		l.lfd, lerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return fail(err)
	}
	if lerr != nil {
		return fail(os.NewSyscallError("fcntl", lerr))
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, l.lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET | unix.EPOLLEXCLUSIVE, Fd: tagListener}); err != nil {
		unix.Close(l.lfd)
		return fail(os.NewSyscallError("epoll_ctl", err))
	}
	// The epoll descriptor is itself pollable: Go's poller wakes the loop
	// when the set has events, so no thread blocks in epoll_wait.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(l.lfd)
		return fail(os.NewSyscallError("fcntl", err))
	}
	l.epfile = os.NewFile(uintptr(ep), "epoll")
	if l.epoll, err = l.epfile.SyscallConn(); err != nil {
		l.epfile.Close()
		unix.Close(l.lfd)
		unix.Close(wake)
		return nil, err
	}
	return l, nil
}

// close releases the loop's own descriptors.
func (l *evloop) close() {
	l.unlisten()
	l.epfile.Close()
	unix.Close(l.wake)
}

// unlisten takes the listener out of the loop's epoll set and closes the
// loop's descriptor of it, once.
func (l *evloop) unlisten() {
	if l.lfd < 0 {
		return
	}
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, l.lfd, nil)
	unix.Close(l.lfd)
	l.lfd = -1
	close(l.released)
}

// Wake makes the loop look at the server's state. The lifecycle does not
// call it once Detach has returned, and a loop detaches before it closes
// its eventfd.
func (l *evloop) Wake() {
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
		if l.lc.HardClosed() {
			l.closeAll()
		}
		if !l.now.Before(l.nextSweep) {
			l.sweep()
		} else if l.held {
			l.accept() // a connection that ended may have freed a slot
		}
		if l.lc.Closing() || !l.listening {
			l.unlisten()
			if len(l.conns) == 0 {
				l.exit()
				return
			}
		}
	}
}

// exit takes the loop out of the server and closes it.
func (l *evloop) exit() {
	l.lc.Detach(l)
	l.close()
}

// sweep ends the connections past their deadlines, retries the dials that
// waited for a descriptor, and accepts again if a limit held it back; then
// it sets when it runs next.
func (l *evloop) sweep() {
	for c := range l.conns {
		switch c.phase {
		case phaseHello:
			if !c.deadline.IsZero() && l.now.After(c.deadline) {
				c.lc.Fail(fmt.Errorf("%w after %d bytes: no whole ClientHello within %s", sni.ErrTimeout, len(c.raw), l.peek.Round(time.Millisecond)))
			}
		case phaseDial:
			switch {
			case c.waitFD:
				l.dialNext(c) // the same target again
			case c.up != nil && l.now.After(c.deadline):
				l.dropUp(c)
				l.dialFailed(c, rawsock.DialError(c.targetAddr, "connect", os.ErrDeadlineExceeded))
				l.dialNext(c)
			}
		case phaseForward:
			if err := c.lc.Expired(l.now, c.last); err != nil {
				l.finish(c, err)
			}
		}
	}
	l.checkListener()
	if l.held || l.backoff {
		l.backoff = false
		l.accept()
	}
	l.nextSweep = l.now.Add(loopTick)
	l.epfile.SetReadDeadline(l.nextSweep)
}

// checkListener stops accepting, and tells Serve, once the listener's
// owner has closed it while the server runs on (a bind address dropped):
// the loop's own descriptor would keep the socket listening, and with it
// queueing connections no one accepts.
func (l *evloop) checkListener() {
	if !l.listening {
		return
	}
	if err := l.lrc.Control(func(uintptr) {}); err != nil {
		l.listening = false
		select {
		case l.failed <- err:
		default:
		}
	}
}

// closeAll ends every connection at once, for Close.
func (l *evloop) closeAll() {
	for c := range l.conns {
		c.lc.Stop(c.toUp, c.toClient)
	}
}

// accept takes the new connections off the listener while the limits let
// it.
func (l *evloop) accept() {
	lc := l.lc
	for l.listening && !l.backoff && !lc.Closing() {
		// A LimitObserver hears when accepting starts to wait, not of
		// every retry.
		if !lc.TrySlot(!l.held) {
			l.held = true
			return
		}
		l.held = false
		if cerr := l.lrc.Control(l.accept4Call); cerr != nil {
			lc.ReleaseSlot()
			l.listening = false
			select {
			case l.failed <- cerr:
			default:
			}
			return
		}
		fd, sa, err := l.accepted.fd, l.accepted.sa, l.accepted.err
		if err != nil {
			lc.ReleaseSlot()
			switch {
			case err == unix.EAGAIN:
			case err == unix.ECONNABORTED || err == unix.EINTR:
				continue
			case engine.Temporary(err):
				l.set.Logger.Warn("gateway: accept error; retrying", "err", os.NewSyscallError("accept4", err).Error(), "retry_in", loopTick)
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
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if l.set.TCPKeepAlive > 0 {
		rawsock.SetKeepAlive(fd, net.KeepAliveConfig{Enable: true, Idle: l.set.TCPKeepAlive})
	}
	remote := rawsock.TCPAddrOf(sa)
	local := l.local
	if local == nil {
		if lsa, err := syscall.Getsockname(fd); err == nil {
			local = rawsock.TCPAddrOf(lsa)
		}
	}
	c := &lconn{l: l}
	if c.lc = l.lc.Open(c, remote, local, false); c.lc == nil {
		unix.Close(fd) // the server is closing
		return
	}
	l.conns[c] = struct{}{}
	c.client = l.addSock(c, &c.socks[0], fd)
	if c.client == nil {
		c.lc.Fail(fmt.Errorf("gateway: registering the connection with epoll failed"))
		return
	}
	if l.peek >= 0 {
		c.deadline = l.now.Add(l.peek)
	}
	c.rawp, c.hello = engine.GetHello()
	c.raw = (*c.rawp)[:0]
	c.gather.MaxSize = l.set.MaxHelloSize
	l.readHello(c) // the hello usually came with the handshake's last ACK
}

// Close closes c's sockets and lets go of it (engine.Sockets): the
// lifecycle calls it when it refuses or ends c.
func (c *lconn) Close() {
	l := c.l
	l.closeSock(c.client)
	l.closeSock(c.up)
	delete(l.conns, c)
	l.putHello(c)
	c.gather.Reset()
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
			c.lc.Fail(fmt.Errorf("sni: reading ClientHello: %w", os.NewSyscallError("read", err)))
			return
		case n == 0:
			c.lc.Fail(c.gather.Closed(c.raw))
			return
		}
		c.raw = c.raw[:len(c.raw)+n]
		msg, need, err := c.gather.Next(c.raw)
		if err != nil {
			c.lc.Fail(err)
			return
		}
		if msg == nil {
			if need > cap(c.raw) {
				c.raw = append(make([]byte, 0, max(need, 2*cap(c.raw))), c.raw...)
			}
			continue
		}
		if err := sni.ParseClientHello(msg, c.hello); err != nil {
			c.lc.Fail(err)
			return
		}
		l.routeConn(c)
		return
	}
}

// routeConn asks the Router and dials the route, or hands the connection to
// the goroutine engine for what the loop does not do itself.
func (l *evloop) routeConn(c *lconn) {
	route, ok := c.lc.Route(c.hello)
	if !ok {
		return
	}
	if route.InProcess || l.set.CustomDial || !rawsock.AllAddrPorts(route.Targets) {
		l.handOver(c, route)
		return
	}
	c.connectTimeout, c.keepAlive, c.phase = route.ConnectTimeout, route.KeepAlive, phaseDial
	l.dialNext(c)
}

// dialNext dials the next target of c's route (the same one again after
// waiting for a descriptor); when none is left, the lifecycle refuses c.
func (l *evloop) dialNext(c *lconn) {
	for {
		if c.waitFD {
			c.waitFD = false
		} else {
			target, ok := c.lc.NextTarget()
			if !ok {
				return
			}
			ap, _ := netip.ParseAddrPort(target) // routeConn checked it parses
			c.targetAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		ap := c.targetAddr
		var family int
		var sa unix.Sockaddr
		if ap.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		} else {
			family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if engine.OutOfDescriptors(err) && (c.deadline.IsZero() || l.now.Before(c.deadline)) {
				if c.deadline.IsZero() {
					c.deadline = l.now.Add(c.connectTimeout)
				}
				c.waitFD = true // not the target's fault: try it again at the next tick
				return
			}
			l.dialFailed(c, rawsock.DialError(c.targetAddr, "socket", err))
			continue
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		err = unix.Connect(fd, sa)
		if err != nil && err != unix.EINPROGRESS {
			unix.Close(fd)
			l.dialFailed(c, rawsock.DialError(c.targetAddr, "connect", err))
			continue
		}
		if c.up = l.addSock(c, &c.socks[1], fd); c.up == nil {
			l.dialFailed(c, rawsock.DialError(c.targetAddr, "epoll_ctl", unix.ENOMEM))
			continue
		}
		c.deadline = l.now.Add(c.connectTimeout)
		if err == nil {
			l.connected(c)
		}
		return
	}
}

// dialFailed tells the lifecycle that the target failed; the next one
// gets a connect timeout of its own.
func (l *evloop) dialFailed(c *lconn, err error) {
	c.deadline = time.Time{}
	c.lc.DialFailed(err)
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
		l.dialFailed(c, rawsock.DialError(c.targetAddr, "connect", err))
		l.dialNext(c)
		return
	}
	l.connected(c)
}

// connected starts forwarding once the upstream is connected: its
// addresses are recorded for loop detection, and the ClientHello is
// written to it.
func (l *evloop) connected(c *lconn) {
	var local netip.AddrPort
	if lsa, err := syscall.Getsockname(c.up.fd); err == nil {
		local = rawsock.AddrPortOf(lsa)
	}
	ka := c.keepAlive
	if !ka.Enable && l.set.TCPKeepAlive > 0 {
		ka = net.KeepAliveConfig{Enable: true, Idle: l.set.TCPKeepAlive}
	}
	if ka.Enable {
		rawsock.SetKeepAlive(c.up.fd, ka)
	}
	c.lc.Connected(local, c.targetAddr)
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
	engine.PutHello(c.rawp, c.raw, c.hello)
	c.rawp, c.raw, c.hello = nil, nil, nil
}

// finish ends a forwarded connection: the lifecycle closes and reports it.
func (l *evloop) finish(c *lconn, err error) {
	c.lc.End(c.toUp, c.toClient, err)
}

// release takes c out of the loop without closing its sockets or freeing
// its slot: the goroutine engine or the Forwarder takes them over.
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

// handOver gives a routed connection to the goroutine engine: for a
// Route.Serve, a Server.Dial, or a target that needs a name resolved.
func (l *evloop) handOver(c *lconn, route engine.Route) {
	raw := append([]byte(nil), c.raw...)
	l.putHello(c)
	l.release(c)
	nc, err := rawsock.NetConn(c.client.fd)
	if err != nil {
		c.lc.Fail(err) // its socket is closed already
		return
	}
	c.lc.HandOver(nc, route, raw)
}

// handOverForwarding gives a connection that moves more than
// handOverAfter bytes to the Forwarder, which splices, if nothing waits in
// the loop's hands and neither side has ended; it reports whether the loop
// let go of c.
func (l *evloop) handOverForwarding(c *lconn) bool {
	if c.client.eof || c.up.eof || c.client.pending != nil || c.up.pending != nil {
		return false
	}
	l.release(c)
	client, err1 := rawsock.NetConn(c.client.fd)
	up, err2 := rawsock.NetConn(c.up.fd)
	if err := problems.Join(err1, err2); err != nil {
		if client != nil {
			client.Close()
		}
		if up != nil {
			up.Close()
		}
		l.finish(c, err) // its sockets are closed already
		return true
	}
	runDown := c.lc.Forward(client, up, nil, c.toUp, c.toClient)
	go runDown()
	return true
}
