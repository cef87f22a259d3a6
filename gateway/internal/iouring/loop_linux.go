package iouring

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
	"github.com/meshgate/meshgate/internal/uring"
	"github.com/meshgate/meshgate/sni"
	"golang.org/x/sys/unix"
)

// loopTick is how often a loop checks its connections' deadlines (the
// ClientHello's, the dial's, the idle timeout) and retries accepting when
// a limit held it back.
const loopTick = 200 * time.Millisecond

// handOverAfter is how many bytes a direction moves through the ring
// before the connection goes to the Forwarder, which splices; 0 keeps every
// connection on the ring.
const handOverAfter = 64 << 10

// Sizes. acceptsInFlight accepts wait on the listener per loop, each with
// a slot taken for the connection it will bring. A socket's receives take
// bufSize buffers from a ring of bufEntries; a direction stops receiving
// while maxQueued of them wait to be sent on.
const (
	acceptsInFlight = 16
	bufSize         = 16 << 10
	bufEntries      = 256
	sqEntries       = 1024
	maxQueued       = 4
)

// The operations a completion's user data names, in its low byte. A
// connection's also carry the connection's slot and generation, the dial
// attempt and which socket (see userData).
const (
	opAccept = iota + 1 // with the accept's index
	opWake
	opIgnore // a cancel or close that posts only its failure
	opRecv
	opSend
	opConnect
	opUnlistened // the close of the loop's descriptor of the listener
)

const (
	client   = 0
	upstream = 1
)

// The phases of a connection.
const (
	phaseHello = iota
	phaseDial
	phaseForward
	phaseClosed
)

// userData packs a connection operation's identity: the slot (24 bits),
// its generation (16), the dial attempt (8), the socket (8) and the
// operation (8).
func userData(c *rconn, side, op int) uint64 {
	return uint64(c.slot)<<40 | uint64(c.gen)<<24 | uint64(c.attempt)<<16 | uint64(side)<<8 | uint64(op)
}

// chunk is bytes for a socket: a provided buffer's (bid), or the
// connection's ClientHello (bid -1).
type chunk struct {
	bid  int32
	data []byte
}

// rsock is one socket of a connection.
type rsock struct {
	fd         int
	open       bool
	armed      bool // a recv is in flight (one in the hello phase, multishot after)
	paused     bool // its recv was cancelled while its peer's queue is full
	connecting bool
	eof        bool // its FIN was read
	shut       bool // shutdown(SHUT_WR) was submitted
	sending    bool // queue[0] is in flight
	queue      []chunk
}

// rconn is one connection of a loop: its engine.Sockets.
type rconn struct {
	l              *loop
	lc             engine.Conn
	slot           uint32
	gen            uint16
	attempt        uint8
	phase          int
	inflight       int // operations that will still post a completion
	s              [2]rsock
	gather         sni.Gatherer
	rawp           *[]byte // the pooled buffer raw started in
	raw            []byte  // what the client sent before forwarding
	hello          *sni.ClientHello
	connectTimeout time.Duration       // the route's
	keepAlive      net.KeepAliveConfig // the route's own, for the upstream socket
	targetAddr     netip.AddrPort      // the target being dialled, unmapped
	sa             unix.RawSockaddrAny // its address, where the kernel reads it
	timedOut       bool                // the connect was cancelled at its deadline
	freed          bool                // its slot is free
	handing        bool                // going to the Forwarder once nothing is in flight
	waitFD         bool                // out of descriptors: dial target again at the next tick
	deadline       time.Time
	last           time.Time // the last byte moved
	toUp           int64
	toClient       int64
}

// acceptOp is one accept in flight and where the kernel writes the peer's
// address.
type acceptOp struct {
	busy bool
	sa   unix.RawSockaddrAny
	n    uint32
}

// loop is one io_uring loop of a server.
type loop struct {
	lc         engine.Lifecycle
	set        *engine.Settings
	peek       time.Duration // the peek timeout; negative: none
	lrc        syscall.RawConn
	lfd        int      // the loop's own descriptor of the listener; -1 once closed
	local      net.Addr // the listener's address when it is one address, else nil
	ring       *uring.Ring
	bufs       *uring.BufRing
	wake       int // an eventfd: Wake writes to it, a read waits on it in the ring
	wakeBuf    [8]byte
	wakeArmed  bool
	accepts    [acceptsInFlight]acceptOp
	accepting  int           // accepts in flight
	listening  bool          // accepting, until the server closes or the listener fails
	released   chan struct{} // closed once the loop has let go of the listener (unreleased: not yet)
	unreleased bool
	held       bool // a limit holds accepting back: retried after each batch, and every tick
	backoff    bool // an accept error such as EMFILE: retried at the next tick
	conns      []*rconn
	free       []uint32
	gen        uint16
	exiting    bool                // run is returning: the wake-up's read is not armed again
	begin      chan bool           // Serve's word: true once the loop is attached, false if it may not start
	live       map[*rconn]struct{} // the connections not yet closed
	starved    []*rconn            // receives that found no buffer: armed again once some are put back
	put        bool                // buffers were put back since the last Publish
	cqes       []uring.CQE
	now        time.Time
	nextSweep  time.Time
	failed     chan<- error
}

// Check reports whether this process can run the io_uring loops: nil, or
// why not (an error wrapping uring.ErrUnavailable).
func Check() error { return uring.Check() }

// Serve serves tl's connections on io_uring loops, one per GOMAXPROCS,
// until the server closes (err is nil) or the listener fails (err says
// how); served is false when the loops cannot start, and the caller serves
// tl otherwise (Check says why).
func Serve(lc engine.Lifecycle, tl *net.TCPListener) (served bool, err error) {
	if Check() != nil {
		return false, nil
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return false, nil
	}
	var local net.Addr
	if a, isTCP := tl.Addr().(*net.TCPAddr); isTCP && !a.IP.IsUnspecified() {
		local = a
	}
	n := runtime.GOMAXPROCS(0)
	failed := make(chan error, n)
	var loops []*loop
	for range n {
		l, err := start(lc, rc, local, failed)
		if err != nil {
			for _, l := range loops {
				l.begin <- false
			}
			lc.Settings().Logger.Warn("gateway: io_uring loop unavailable", "err", err.Error())
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
				l.begin <- false
			}
			return true, nil
		}
	}
	for _, l := range loops {
		l.begin <- true
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

// start sets a loop up on a goroutine locked to its thread (the ring is
// that thread's: IORING_SETUP_SINGLE_ISSUER) and returns it once its ring
// works; the loop runs once Serve has attached it and woken it.
func start(lc engine.Lifecycle, lrc syscall.RawConn, local net.Addr, failed chan<- error) (*loop, error) {
	set := lc.Settings()
	peek := set.PeekTimeout
	if peek == 0 {
		peek = sni.DefaultTimeout
	}
	l := &loop{lc: lc, set: set, peek: peek, lrc: lrc, lfd: -1, local: local, listening: true, failed: failed, released: make(chan struct{}), unreleased: true,
		live: map[*rconn]struct{}{}, cqes: make([]uring.CQE, 512), begin: make(chan bool, 1)}
	var err error
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	// The loop accepts on a descriptor of its own (a dup), so that when the
	// server stops it can let go of the listener after the server closed
	// it: an accept in flight holds the socket open.
	var lerr error
	if err := lrc.Control(func(fd uintptr) {
		l.lfd, lerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		unix.Close(l.wake)
		return nil, err
	}
	if lerr != nil {
		unix.Close(l.wake)
		return nil, os.NewSyscallError("fcntl", lerr)
	}
	// Accepted sockets inherit TCP_NODELAY from their listener: no
	// setsockopt per connection.
	unix.SetsockoptInt(l.lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	ready := make(chan error)
	go func() {
		// The ring is this thread's from New to Close; then the thread
		// goes back to the runtime. Were it left locked, it would end
		// with the loop, and the kernel would kill every child process
		// started from it with a Pdeathsig (Go runs exec on any thread:
		// a program's Consul agents died when its gateway closed).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		r, err := uring.New(uring.Params{Entries: sqEntries, SingleIssuer: true})
		if err == nil {
			l.ring = r
			if l.bufs, err = r.NewBufRing(0, bufEntries, bufSize); err != nil {
				r.Close()
			}
		}
		ready <- err
		if err != nil {
			return
		}
		if <-l.begin {
			l.run()
		} else {
			l.close()
		}
	}()
	if err := <-ready; err != nil {
		unix.Close(l.lfd)
		unix.Close(l.wake)
		return nil, err
	}
	return l, nil
}

// Wake makes the loop look at the server's state. The lifecycle does not
// call it once Detach has returned, and a loop detaches before it closes
// its eventfd.
func (l *loop) Wake() {
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
}

// run submits, waits and handles completions until the server is closed
// and the loop has no connection left, or it could not start.
func (l *loop) run() {
	defer l.close()
	l.now = time.Now()
	if l.lc.Closing() {
		l.stopListening()
	}
	l.armWake()
	l.sweep() // accepts, and sets the first tick
	for {
		wait := l.nextSweep.Sub(l.now)
		if _, err := l.ring.SubmitAndWait(1, max(wait, time.Millisecond)); err != nil && err != unix.EBUSY && err != unix.EAGAIN {
			l.listening = false
			select {
			case l.failed <- os.NewSyscallError("io_uring_enter", err):
			default:
			}
			l.lc.Detach(l)
			l.exiting = true
			return // closing the ring ends what is in flight
		}
		l.now = time.Now()
		for {
			n := l.ring.Reap(l.cqes)
			for _, cqe := range l.cqes[:n] {
				l.handle(cqe)
			}
			if n < len(l.cqes) {
				break
			}
		}
		if l.put {
			l.put = false
			l.bufs.Publish()
			l.feedStarved()
		}
		if l.lc.HardClosed() {
			l.closeAll()
		}
		if !l.now.Before(l.nextSweep) {
			l.sweep()
		} else if l.held {
			l.refill() // a connection that ended may have freed a slot
		}
		if l.lc.Closing() || !l.listening {
			l.stopListening()
			if len(l.live) == 0 && l.accepting == 0 {
				l.lc.Detach(l)
				l.exiting = true
				l.drain()
				return
			}
		}
	}
}

// drain waits for what is still in flight (closes, the wake-up's read),
// so that the kernel writes to no memory of the loop's after it returns.
func (l *loop) drain() {
	sqe := l.ring.Next()
	sqe.PrepCancelFD(l.wake)
	sqe.UserData = opIgnore
	for i := 0; i < 100 && (l.wakeArmed || l.busy()); i++ {
		l.ring.SubmitAndWait(1, 10*time.Millisecond)
		for {
			n := l.ring.Reap(l.cqes)
			for _, cqe := range l.cqes[:n] {
				l.handle(cqe)
			}
			if n < len(l.cqes) {
				break
			}
		}
	}
}

// busy reports whether a connection still waits for a completion.
func (l *loop) busy() bool {
	for _, c := range l.conns {
		if c != nil && c.inflight > 0 {
			return true
		}
	}
	return false
}

// close releases the loop's own descriptors and its ring.
func (l *loop) close() {
	if l.lfd >= 0 {
		unix.Close(l.lfd)
		l.lfd = -1
	}
	l.bufs.Close()
	l.ring.Close() // ends the accepts in flight
	unix.Close(l.wake)
	l.release()
}

// release tells Serve that the loop has let go of the listener, once.
func (l *loop) release() {
	if l.unreleased {
		l.unreleased = false
		close(l.released)
	}
}

func (l *loop) armWake() {
	sqe := l.ring.Next()
	sqe.PrepRead(l.wake, l.wakeBuf[:])
	sqe.UserData = opWake
	l.wakeArmed = true
}

// stopListening cancels the accepts in flight and lets go of the loop's
// descriptor of the listener, once.
func (l *loop) stopListening() {
	l.listening = false
	if l.lfd < 0 {
		return
	}
	l.ring.Reserve(2)
	sqe := l.ring.Next()
	sqe.PrepCancelFD(l.lfd)
	sqe.Flags |= uring.FlagHardLink | uring.FlagSkipSuccess
	sqe.UserData = opIgnore
	sqe = l.ring.Next()
	sqe.PrepClose(l.lfd) // after the cancel, whether it found accepts or not (a hard link)
	sqe.UserData = opUnlistened
	l.lfd = -1
}

// sweep ends the connections past their deadlines, retries the dials that
// waited for a descriptor, and accepts again if a limit held it back; then
// it sets when it runs next.
func (l *loop) sweep() {
	for c := range l.live {
		switch c.phase {
		case phaseHello:
			if !c.deadline.IsZero() && l.now.After(c.deadline) {
				c.lc.Fail(fmt.Errorf("%w after %d bytes: no whole ClientHello within %s", sni.ErrTimeout, len(c.raw), l.peek.Round(time.Millisecond)))
			}
		case phaseDial:
			switch {
			case c.waitFD:
				l.dialNext(c) // the same target again
			case c.s[upstream].connecting && !c.timedOut && l.now.After(c.deadline):
				c.timedOut = true
				sqe := l.ring.Next()
				sqe.PrepCancel(userData(c, upstream, opConnect))
				sqe.Flags |= uring.FlagSkipSuccess
				sqe.UserData = opIgnore
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
	}
	l.refill()
	l.nextSweep = l.now.Add(loopTick)
}

// checkListener stops accepting, and tells Serve, once the listener's
// owner has closed it while the server runs on (a bind address dropped):
// the accepts in flight on the loop's own descriptor would keep the
// socket listening, and taking connections.
func (l *loop) checkListener() {
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
func (l *loop) closeAll() {
	for c := range l.live {
		c.lc.Stop(c.toUp, c.toClient)
	}
}

// refill arms accepts while the limits let it, each with a slot taken for
// the connection it brings.
func (l *loop) refill() {
	for l.listening && !l.backoff && l.accepting < acceptsInFlight && !l.lc.Closing() {
		// A LimitObserver hears when accepting starts to wait, not of
		// every retry.
		if !l.lc.TrySlot(!l.held) {
			l.held = true
			return
		}
		l.held = false
		i := 0
		for l.accepts[i].busy {
			i++
		}
		a := &l.accepts[i]
		a.busy, a.n = true, unix.SizeofSockaddrAny
		sqe := l.ring.Next()
		sqe.PrepAccept(l.lfd, &a.sa, &a.n, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		sqe.UserData = uint64(i)<<8 | opAccept
		l.accepting++
	}
}

func (l *loop) accepted(cqe uring.CQE) {
	a := &l.accepts[cqe.UserData>>8]
	a.busy = false
	l.accepting--
	if cqe.Res >= 0 {
		l.open(int(cqe.Res), uring.AddrPortOf(&a.sa))
		return
	}
	l.lc.ReleaseSlot()
	err := cqe.Err()
	switch {
	case err == unix.ECANCELED || err == unix.EAGAIN || err == unix.ECONNABORTED || err == unix.EINTR:
	case !l.listening:
	case engine.Temporary(err):
		if !l.backoff {
			l.set.Logger.Warn("gateway: accept error; retrying", "err", os.NewSyscallError("accept4", err).Error(), "retry_in", loopTick)
		}
		l.backoff = true
	default:
		l.listening = false
		select {
		case l.failed <- os.NewSyscallError("accept4", err):
		default:
		}
	}
}

func (l *loop) handle(cqe uring.CQE) {
	op := int(cqe.UserData & 0xff)
	switch op {
	case opAccept:
		l.accepted(cqe)
		if !l.held {
			l.refill()
		}
		return
	case opWake:
		l.wakeArmed = false
		if !l.exiting {
			l.armWake()
		}
		return
	case opIgnore:
		return
	case opUnlistened:
		l.release()
		return
	}
	slot, gen := uint32(cqe.UserData>>40), uint16(cqe.UserData>>24)
	c := l.conns[slot]
	if c == nil || c.gen != gen {
		l.recycle(cqe) // cannot happen: a slot is reused only when nothing is in flight
		return
	}
	final := cqe.Flags&uring.CQEMore == 0
	if final {
		c.inflight--
	}
	side, attempt := int(cqe.UserData>>8&0xff), uint8(cqe.UserData>>16)
	switch {
	case side == upstream && attempt != c.attempt:
		l.recycle(cqe) // an earlier dial's: its socket is closed
	case op == opRecv:
		l.received(c, side, cqe, final)
	case op == opSend:
		l.sent(c, side, cqe)
	case op == opConnect:
		l.connected(c, cqe)
	}
	if c.handing {
		l.tryHandOver(c)
	}
	l.maybeFree(c)
}

// maybeFree frees a closed connection's slot once nothing is in flight
// for it, once.
func (l *loop) maybeFree(c *rconn) {
	if c.phase == phaseClosed && c.inflight == 0 && !c.freed {
		c.freed = true
		l.conns[c.slot] = nil
		l.free = append(l.free, c.slot)
	}
}

// recycle puts back the buffer a completion used, if any.
func (l *loop) recycle(cqe uring.CQE) {
	if cqe.Flags&uring.CQEBuffer != 0 {
		l.putBuf(int32(cqe.BufferID()))
	}
}

func (l *loop) putBuf(bid int32) {
	if bid >= 0 {
		l.bufs.Put(uint16(bid))
		l.put = true
	}
}

// open starts a connection the loop accepted, in a free slot.
func (l *loop) open(fd int, remoteAddr netip.AddrPort) {
	if l.set.TCPKeepAlive > 0 {
		rawsock.SetKeepAlive(fd, net.KeepAliveConfig{Enable: true, Idle: l.set.TCPKeepAlive})
	}
	remote := net.TCPAddrFromAddrPort(remoteAddr)
	local := l.local
	if local == nil {
		if lsa, err := syscall.Getsockname(fd); err == nil {
			local = rawsock.TCPAddrOf(lsa)
		}
	}
	c := &rconn{l: l}
	if c.lc = l.lc.Open(c, remote, local, false); c.lc == nil {
		unix.Close(fd) // the server is closing
		return
	}
	if n := len(l.free); n > 0 {
		c.slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		c.slot = uint32(len(l.conns))
		l.conns = append(l.conns, nil)
	}
	l.gen++
	c.gen = l.gen
	l.conns[c.slot] = c
	l.live[c] = struct{}{}
	c.s[client] = rsock{fd: fd, open: true}
	if l.peek >= 0 {
		c.deadline = l.now.Add(l.peek)
	}
	c.rawp, c.hello = engine.GetHello()
	c.raw = (*c.rawp)[:0]
	c.gather.MaxSize = l.set.MaxHelloSize
	l.arm(c, client, false)
}

// arm submits a recv on one of c's sockets: one, for the hello, or
// multishot, for forwarding.
func (l *loop) arm(c *rconn, k int, multishot bool) {
	sqe := l.ring.Next()
	sqe.PrepRecv(c.s[k].fd, l.bufs.Group(), multishot)
	sqe.UserData = userData(c, k, opRecv)
	c.s[k].armed = true
	c.inflight++
}

func (l *loop) received(c *rconn, k int, cqe uring.CQE, final bool) {
	s := &c.s[k]
	if final {
		s.armed = false
	}
	if c.phase == phaseClosed {
		l.recycle(cqe)
		return
	}
	if cqe.Res > 0 {
		bid := int32(cqe.BufferID())
		data := l.bufs.Bytes(uint16(bid), int(cqe.Res))
		if c.phase == phaseHello {
			c.raw = append(c.raw, data...)
			l.putBuf(bid)
			l.readHello(c)
			return
		}
		c.last = l.now
		l.forward(c, 1-k, chunk{bid, data})
		if final && !s.paused && !c.handing && c.phase == phaseForward {
			l.arm(c, k, true)
		}
		return
	}
	err := cqe.Err()
	switch {
	case cqe.Res == 0:
		s.eof = true
		if c.phase == phaseHello {
			c.lc.Fail(c.gather.Closed(c.raw))
			return
		}
		l.passFIN(c, 1-k)
	case err == unix.ENOBUFS:
		l.starved = append(l.starved, c)
	case err == unix.ECANCELED:
		// paused; armed again when its peer's queue drains
	case c.phase == phaseHello:
		c.lc.Fail(fmt.Errorf("sni: reading ClientHello: %w", os.NewSyscallError("read", err)))
	default:
		l.finish(c, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)})
	}
}

// feedStarved arms again the receives that found no buffer.
func (l *loop) feedStarved() {
	starved := l.starved
	l.starved = nil
	for _, c := range starved {
		if c.phase == phaseClosed {
			continue
		}
		for k := range c.s {
			s := &c.s[k]
			if s.open && !s.armed && !s.paused && !s.eof && (c.phase == phaseForward || c.phase == phaseHello && k == client) {
				l.arm(c, k, c.phase == phaseForward)
			}
		}
	}
}

// readHello parses the client's bytes once its ClientHello is whole and
// routes the connection, or reads on.
func (l *loop) readHello(c *rconn) {
	msg, _, err := c.gather.Next(c.raw)
	if err != nil {
		c.lc.Fail(err)
		return
	}
	if msg == nil {
		l.arm(c, client, false)
		return
	}
	if err := sni.ParseClientHello(msg, c.hello); err != nil {
		c.lc.Fail(err)
		return
	}
	route, ok := c.lc.Route(c.hello)
	if !ok {
		return
	}
	if route.InProcess || l.set.CustomDial || !rawsock.AllAddrPorts(route.Targets) {
		l.handOver(c, route)
		return
	}
	c.connectTimeout, c.keepAlive, c.phase, c.deadline = route.ConnectTimeout, route.KeepAlive, phaseDial, time.Time{}
	l.dialNext(c)
}

// dialNext dials the next target of c's route (the same one again after
// waiting for a descriptor): a socket, then its connect and the replay of
// the hello, linked, through the ring. When no target is left, the
// lifecycle refuses c.
func (l *loop) dialNext(c *rconn) {
	for {
		if c.waitFD {
			c.waitFD = false
		} else {
			target, ok := c.lc.NextTarget()
			if !ok {
				return
			}
			ap, _ := netip.ParseAddrPort(target) // readHello checked it parses
			c.targetAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		n, family := uring.Sockaddr(c.targetAddr, &c.sa)
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
		c.attempt++
		c.timedOut = false
		c.s[upstream] = rsock{fd: fd, open: true, connecting: true, sending: true, queue: append(c.s[upstream].queue[:0], chunk{-1, c.raw})}
		c.deadline = l.now.Add(c.connectTimeout)
		l.ring.Reserve(2)
		sqe := l.ring.Next()
		sqe.PrepConnect(fd, &c.sa, n)
		sqe.Flags |= uring.FlagLink
		sqe.UserData = userData(c, upstream, opConnect)
		sqe = l.ring.Next()
		sqe.PrepSend(fd, c.raw)
		sqe.UserData = userData(c, upstream, opSend)
		c.inflight += 2
		return
	}
}

// dialFailed tells the lifecycle that the target failed; the next one
// gets a connect timeout of its own.
func (l *loop) dialFailed(c *rconn, err error) {
	c.deadline = time.Time{}
	c.lc.DialFailed(err)
}

// connected finishes a dial: on success the upstream's addresses are
// recorded for loop detection and both sockets are read; on failure the
// next target is dialled.
func (l *loop) connected(c *rconn, cqe uring.CQE) {
	u := &c.s[upstream]
	u.connecting = false
	if c.phase != phaseDial {
		return
	}
	if err := cqe.Err(); err != nil {
		if err == unix.ECANCELED && c.timedOut {
			err = os.ErrDeadlineExceeded
		}
		l.closeSock(c, upstream) // its linked send completes with ECANCELED
		l.dialFailed(c, rawsock.DialError(c.targetAddr, "connect", err))
		l.dialNext(c)
		return
	}
	var local netip.AddrPort
	if lsa, err := syscall.Getsockname(u.fd); err == nil {
		local = rawsock.AddrPortOf(lsa)
	}
	ka := c.keepAlive
	if !ka.Enable && l.set.TCPKeepAlive > 0 {
		ka = net.KeepAliveConfig{Enable: true, Idle: l.set.TCPKeepAlive}
	}
	if ka.Enable {
		rawsock.SetKeepAlive(u.fd, ka)
	}
	c.lc.Connected(local, c.targetAddr)
	if c.phase != phaseDial {
		return // refused (a loop): closed
	}
	c.phase, c.last, c.deadline = phaseForward, l.now, time.Time{}
	l.arm(c, upstream, true)
	l.arm(c, client, true)
}

// forward queues bytes for socket k and sends them if nothing is in
// flight to it; a source whose bytes queue up stops receiving for a while.
func (l *loop) forward(c *rconn, k int, ch chunk) {
	d := &c.s[k]
	d.queue = append(d.queue, ch)
	if !d.sending {
		l.send(c, k)
	}
	if src := &c.s[1-k]; len(d.queue) >= maxQueued && src.armed && !src.paused {
		src.paused = true
		sqe := l.ring.Next()
		sqe.PrepCancel(userData(c, 1-k, opRecv))
		sqe.Flags |= uring.FlagSkipSuccess
		sqe.UserData = opIgnore
	}
}

func (l *loop) send(c *rconn, k int) {
	d := &c.s[k]
	d.sending = true
	sqe := l.ring.Next()
	sqe.PrepSend(d.fd, d.queue[0].data)
	sqe.UserData = userData(c, k, opSend)
	c.inflight++
}

func (l *loop) sent(c *rconn, k int, cqe uring.CQE) {
	d := &c.s[k]
	d.sending = false
	if c.phase == phaseClosed {
		l.dropQueue(c, d)
		return
	}
	if cqe.Res < 0 {
		if k == upstream && c.phase == phaseDial {
			return // the connect failed: connected dials on
		}
		l.finish(c, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", cqe.Err())})
		return
	}
	if k == upstream {
		c.toUp += int64(cqe.Res)
	} else {
		c.toClient += int64(cqe.Res)
	}
	head := &d.queue[0]
	if int(cqe.Res) < len(head.data) {
		head.data = head.data[cqe.Res:]
		l.send(c, k)
		return
	}
	if head.bid < 0 {
		l.putHello(c) // the replayed hello is out
	} else {
		l.putBuf(head.bid)
	}
	d.queue = append(d.queue[:0], d.queue[1:]...)
	if len(d.queue) > 0 {
		l.send(c, k)
	}
	if src := &c.s[1-k]; src.paused && len(d.queue) < maxQueued/2 && c.phase == phaseForward {
		src.paused = false
		if !src.armed && !src.eof && !c.handing {
			l.arm(c, 1-k, true)
		}
	}
	if len(d.queue) == 0 {
		l.passFIN(c, k)
	}
	if handOverAfter > 0 && !c.handing && c.phase == phaseForward && (c.toUp >= handOverAfter || c.toClient >= handOverAfter) {
		l.startHandOver(c)
	}
}

// startHandOver stops the receives of a connection that moved
// handOverAfter bytes: once what they brought is sent on, tryHandOver
// gives the connection to the Forwarder.
func (l *loop) startHandOver(c *rconn) {
	c.handing = true
	for k := range c.s {
		if c.s[k].armed {
			sqe := l.ring.Next()
			sqe.PrepCancel(userData(c, k, opRecv))
			sqe.Flags |= uring.FlagSkipSuccess
			sqe.UserData = opIgnore
		}
	}
}

// tryHandOver gives a connection to the Forwarder once nothing is in
// flight on its sockets and nothing waits to be sent; if one side ended
// meanwhile, the connection stays on the ring, which passes the FIN on.
func (l *loop) tryHandOver(c *rconn) {
	if c.phase != phaseForward {
		return
	}
	for k := range c.s {
		if s := &c.s[k]; s.armed || s.sending || len(s.queue) > 0 {
			return
		}
	}
	if c.s[client].eof || c.s[upstream].eof {
		c.handing = false
		for k := range c.s {
			if s := &c.s[k]; !s.eof && !s.paused {
				l.arm(c, k, true)
			}
		}
		return
	}
	c.phase = phaseClosed
	c.s[client].open, c.s[upstream].open = false, false
	delete(l.live, c)
	l.putHello(c)
	c.gather.Reset()
	l.maybeFree(c)
	client, err1 := rawsock.NetConn(c.s[client].fd)
	up, err2 := rawsock.NetConn(c.s[upstream].fd)
	if err := problems.Join(err1, err2); err != nil {
		if client != nil {
			client.Close()
		}
		if up != nil {
			up.Close()
		}
		c.lc.End(c.toUp, c.toClient, err) // its sockets are closed already
		return
	}
	runDown := c.lc.Forward(client, up, nil, c.toUp, c.toClient)
	go runDown()
}

// dropQueue gives back the buffers of what waited for d.
func (l *loop) dropQueue(c *rconn, d *rsock) {
	for _, ch := range d.queue {
		if ch.bid < 0 {
			l.putHello(c)
		} else {
			l.putBuf(ch.bid)
		}
	}
	d.queue = d.queue[:0]
}

// passFIN half-closes socket k once its peer's FIN was read and every byte
// before it was sent to k; once both directions are done, the connection
// ends.
func (l *loop) passFIN(c *rconn, k int) {
	d, src := &c.s[k], &c.s[1-k]
	if !src.eof || d.sending || len(d.queue) > 0 || d.shut || c.phase != phaseForward {
		return
	}
	if d.eof {
		l.finish(c, nil)
		return
	}
	d.shut = true
	// A system call, not the ring's IORING_OP_SHUTDOWN: the kernel always
	// runs that one on a worker thread, where it looks the descriptor up
	// only when it runs, after the close the connection's end may have
	// submitted behind it: the number could by then be a new
	// connection's, and that connection was half-closed (about 1 % of
	// short connections ended with EOF under 8 concurrent clients).
	if err := unix.Shutdown(d.fd, unix.SHUT_WR); err != nil {
		l.finish(c, nil) // the peer is gone: nothing more to pass on
	}
}

// putHello gives c's hello buffers back to their pools, once.
func (l *loop) putHello(c *rconn) {
	if c.rawp == nil {
		return
	}
	engine.PutHello(c.rawp, c.raw, c.hello)
	c.rawp, c.raw, c.hello = nil, nil, nil
}

// finish ends a forwarded connection: the lifecycle closes and reports it.
func (l *loop) finish(c *rconn, err error) {
	if c.phase == phaseClosed {
		return
	}
	c.lc.End(c.toUp, c.toClient, err)
}

// closeSock closes socket k through the ring, cancelling what is in flight
// on it first. The two are not linked: the kernel issues a linked request
// only after the batch it came in, so the accepts later in that batch
// could take descriptors the close had not given back yet (EMFILE at the
// open-file budget's edge, when the lifecycle has freed the connection's
// slot). Unlinked, both run in order as they are submitted; an operation
// the cancel did not reach in time keeps its socket, not its descriptor,
// until it ends.
func (l *loop) closeSock(c *rconn, k int) {
	s := &c.s[k]
	if !s.open {
		return
	}
	s.open = false
	if s.armed || s.sending || s.connecting {
		l.ring.Reserve(2)
		sqe := l.ring.Next()
		sqe.PrepCancelFD(s.fd)
		sqe.Flags |= uring.FlagSkipSuccess
		sqe.UserData = opIgnore
	}
	sqe := l.ring.Next()
	sqe.PrepClose(s.fd)
	sqe.Flags |= uring.FlagSkipSuccess
	sqe.UserData = opIgnore
}

// Close closes c's sockets and lets go of it (engine.Sockets): the
// lifecycle calls it when it refuses or ends c, on the loop.
func (c *rconn) Close() {
	l := c.l
	if c.phase == phaseClosed {
		return
	}
	c.phase = phaseClosed
	l.closeSock(c, client)
	l.closeSock(c, upstream)
	for k := range c.s {
		if d := &c.s[k]; !d.sending {
			l.dropQueue(c, d)
		}
	}
	if !c.s[upstream].sending {
		l.putHello(c) // else the send in flight still reads it
	}
	c.gather.Reset()
	delete(l.live, c)
	l.maybeFree(c)
}

// handOver gives a routed connection to the goroutine engine: for a
// Route.Serve, a Server.Dial, or a target that needs a name resolved. No
// operation is in flight on the client's socket: its hello's recv was the
// last.
func (l *loop) handOver(c *rconn, route engine.Route) {
	raw := append([]byte(nil), c.raw...)
	l.putHello(c)
	c.phase = phaseClosed
	c.s[client].open = false
	delete(l.live, c)
	l.maybeFree(c)
	nc, err := rawsock.NetConn(c.s[client].fd)
	if err != nil {
		c.lc.Fail(err) // its socket is closed already
		return
	}
	c.lc.HandOver(nc, route, raw)
}

var _ engine.Sockets = (*rconn)(nil)
