package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"runtime"
	"strings"

	"github.com/meshgate/meshgate/internal/uring"
	"github.com/meshgate/meshgate/sni"
	"golang.org/x/sys/unix"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address to listen on")
	routes := routeFlag{}
	flag.Var(routes, "route", "SERVER_NAME=ADDR: where a ClientHello for that exact name goes (repeatable)")
	flag.Parse()
	log.SetFlags(0)
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		log.Fatalf("gouring: -listen %q: %v", *listen, err)
	}
	if len(routes) == 0 {
		log.Fatal("gouring: no -route")
	}
	loops := runtime.GOMAXPROCS(0)
	errs := make(chan error, loops)
	for range loops {
		l, err := startLoop(addr, routes, errs)
		if err != nil {
			log.Fatalf("gouring: %v", err)
		}
		addr = l.addr() // the port the first one bound, for port 0
	}
	log.Fatalf("gouring: %v", <-errs)
}

// routeFlag maps server names to upstream addresses.
type routeFlag map[string]netip.AddrPort

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
	r[name] = ap
	return nil
}

// The operations a completion's user data names; a connection's also
// carry its slot, its generation and which of its two sockets.
const (
	opAccept = iota + 1
	opWake
	opIgnore // a shutdown or close that posts only its failure
	opRecv
	opSend
	opConnect
)

const (
	client   = 0
	upstream = 1
)

// Sizes: the provided buffers (a TLS record is at most 16 KiB), and the
// rings.
const (
	bufSize    = 16 << 10
	bufEntries = 256
	sqEntries  = 1024
)

func userData(slot uint32, gen uint16, side, op int) uint64 {
	return uint64(slot)<<32 | uint64(gen)<<16 | uint64(side)<<8 | uint64(op)
}

// chunk is bytes for a socket: a provided buffer's, or the loop's own
// copy of a ClientHello that came in pieces (bid -1).
type chunk struct {
	bid  int32
	data []byte
}

// side is one socket of a proxied connection.
type side struct {
	fd      int
	open    bool
	armed   bool    // its multishot recv is in flight
	eof     bool    // its FIN was read
	shut    bool    // shutdown(SHUT_WR) was sent to it
	sending bool    // a send to it is in flight: queue[0]
	queue   []chunk // bytes for it, in order
}

// conn is a client and its upstream.
type conn struct {
	slot      uint32
	gen       uint16
	s         [2]side
	hello     []byte // a ClientHello that came in pieces
	routed    bool
	connected bool
	closing   bool
	inflight  int // operations that will still post a completion
	sa        unix.RawSockaddrAny
}

// loop is one event loop: a listening socket, a ring and the connections
// it accepted.
type loop struct {
	lfd, wake int
	routes    map[string]netip.AddrPort
	ring      *uring.Ring
	bufs      *uring.BufRing
	conns     []*conn
	free      []uint32
	starved   []uint64 // sockets whose recv ended for want of buffers: slot<<32|gen<<16|side
	put       bool     // buffers were put back since the last Publish
	cqes      []uring.CQE
	hello     sni.ClientHello
	wakeBuf   [8]byte
}

var errClosed = errors.New("the loop was closed")

// startLoop starts a loop listening on addr; run's error goes to errs.
func startLoop(addr netip.AddrPort, routes map[string]netip.AddrPort, errs chan<- error) (*loop, error) {
	l := &loop{routes: routes, cqes: make([]uring.CQE, 512)}
	if err := l.listen(addr); err != nil {
		return nil, err
	}
	var err error
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		unix.Close(l.lfd)
		return nil, err
	}
	ready := make(chan error)
	go func() {
		// The ring is the thread's (SingleIssuer): created, submitted to
		// and waited on by this goroutine on this thread only.
		runtime.LockOSThread()
		r, err := uring.New(uring.Params{Entries: sqEntries, SingleIssuer: true})
		if err == nil {
			l.ring = r
			l.bufs, err = r.NewBufRing(0, bufEntries, bufSize)
		}
		ready <- err
		if err != nil {
			return
		}
		errs <- l.run()
	}()
	if err := <-ready; err != nil {
		unix.Close(l.lfd)
		unix.Close(l.wake)
		return nil, err
	}
	return l, nil
}

func (l *loop) listen(addr netip.AddrPort) error {
	family := unix.AF_INET
	if !addr.Addr().Is4() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	// Accepted sockets inherit TCP_NODELAY from their listener: no
	// setsockopt per connection.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return fmt.Errorf("SO_REUSEPORT: %w", err)
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return err
	}
	l.lfd = fd
	return nil
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

// close makes run return errClosed; connections in flight are left as
// they are.
func (l *loop) close() {
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
}

// run submits, waits and handles completions until close.
func (l *loop) run() error {
	defer func() {
		l.bufs.Close()
		l.ring.Close()
		unix.Close(l.lfd)
		unix.Close(l.wake)
	}()
	l.armAccept()
	sqe := l.ring.Next()
	sqe.PrepRead(l.wake, l.wakeBuf[:])
	sqe.UserData = opWake
	for {
		if _, err := l.ring.SubmitAndWait(1, 0); err != nil && err != unix.EBUSY && err != unix.EAGAIN {
			return fmt.Errorf("io_uring_enter: %w", err)
		}
		n := l.ring.Reap(l.cqes)
		for _, cqe := range l.cqes[:n] {
			if cqe.UserData == opWake {
				return errClosed
			}
			l.handle(cqe)
		}
		if l.put {
			l.put = false
			l.bufs.Publish()
			l.feedStarved()
		}
	}
}

func (l *loop) armAccept() {
	sqe := l.ring.Next()
	sqe.PrepMultishotAccept(l.lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	sqe.UserData = opAccept
}

func (l *loop) handle(cqe uring.CQE) {
	op := int(cqe.UserData & 0xff)
	switch op {
	case opAccept:
		if cqe.Res >= 0 {
			l.open(int(cqe.Res))
		}
		if cqe.Flags&uring.CQEMore == 0 {
			l.armAccept()
		}
		return
	case opIgnore:
		return
	}
	slot, gen, k := uint32(cqe.UserData>>32), uint16(cqe.UserData>>16), int(cqe.UserData>>8&0xff)
	c := l.conns[slot]
	if c.gen != gen || c.closing && c.inflight == 0 {
		l.recycle(cqe) // cannot happen: a slot is reused only when nothing is in flight
		return
	}
	if cqe.Flags&uring.CQEMore == 0 {
		c.inflight--
	}
	switch op {
	case opRecv:
		l.received(c, k, cqe)
	case opSend:
		l.sent(c, k, cqe)
	case opConnect:
		l.connected(c, cqe)
	}
	if c.closing && c.inflight == 0 {
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

// open starts a connection on an accepted socket, in a free slot (whose
// conn is reused with the next generation) or a new one.
func (l *loop) open(fd int) {
	var c *conn
	if n := len(l.free); n > 0 {
		c = l.conns[l.free[n-1]]
		l.free = l.free[:n-1]
		*c = conn{slot: c.slot, gen: c.gen + 1, hello: c.hello[:0],
			s: [2]side{{queue: c.s[client].queue[:0]}, {queue: c.s[upstream].queue[:0]}}}
	} else {
		c = &conn{slot: uint32(len(l.conns))}
		l.conns = append(l.conns, c)
	}
	c.s[client].fd, c.s[client].open = fd, true
	l.arm(c, client)
}

// arm starts the multishot recv of one of c's sockets.
func (l *loop) arm(c *conn, k int) {
	sqe := l.ring.Next()
	sqe.PrepRecv(c.s[k].fd, l.bufs.Group(), true)
	sqe.UserData = userData(c.slot, c.gen, k, opRecv)
	c.s[k].armed = true
	c.inflight++
}

func (l *loop) received(c *conn, k int, cqe uring.CQE) {
	s := &c.s[k]
	final := cqe.Flags&uring.CQEMore == 0
	if final {
		s.armed = false
	}
	if c.closing {
		l.recycle(cqe)
		return
	}
	switch {
	case cqe.Res > 0:
		bid := int32(cqe.BufferID())
		data := l.bufs.Bytes(uint16(bid), int(cqe.Res))
		if k == client && !c.routed {
			l.readHello(c, bid, data)
		} else {
			l.forward(c, 1-k, chunk{bid, data})
		}
		if final && !c.closing {
			l.arm(c, k)
		}
	case cqe.Res == 0:
		s.eof = true
		if !c.routed {
			l.abort(c)
			return
		}
		l.passFIN(c, 1-k)
	case cqe.Res == -int32(unix.ENOBUFS):
		l.starved = append(l.starved, uint64(c.slot)<<32|uint64(c.gen)<<16|uint64(k))
	default:
		l.abort(c)
	}
}

// feedStarved arms again the recvs that ran out of buffers.
func (l *loop) feedStarved() {
	starved := l.starved
	l.starved = l.starved[len(l.starved):]
	for _, v := range starved {
		c := l.conns[uint32(v>>32)]
		if c.gen == uint16(v>>16) && !c.closing {
			l.arm(c, int(v&0xff))
		}
	}
	if len(l.starved) == 0 {
		l.starved = starved[:0]
	}
}

// readHello gathers the client's ClientHello; once it is whole, it dials
// the route of its server name, or closes the client if there is none.
func (l *loop) readHello(c *conn, bid int32, data []byte) {
	buf := data
	if len(c.hello) > 0 {
		c.hello = append(c.hello, data...)
		buf = c.hello
	}
	msg, err := helloMessage(buf)
	if err == errShort {
		if len(c.hello) == 0 {
			c.hello = append([]byte(nil), data...)
		}
		l.putBuf(bid)
		if len(c.hello) > sni.DefaultMaxSize {
			l.abort(c)
		}
		return
	}
	if err == nil {
		err = sni.ParseClientHello(msg, &l.hello)
	}
	to, ok := l.routes[l.hello.ServerName]
	if err != nil || !ok {
		l.putBuf(bid)
		l.abort(c)
		return
	}
	replay := chunk{bid, data}
	if len(c.hello) > 0 {
		l.putBuf(bid)
		replay = chunk{-1, c.hello}
	}
	c.routed = true
	l.dial(c, to, replay)
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

// dial connects c's upstream through the ring, with the send of the
// replayed hello linked to the connect.
func (l *loop) dial(c *conn, to netip.AddrPort, replay chunk) {
	n, family := uring.Sockaddr(to, &c.sa)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.putBuf(replay.bid)
		l.abort(c)
		return
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	u := &c.s[upstream]
	*u = side{fd: fd, open: true, sending: true, queue: append(u.queue[:0], replay)}
	if !l.ring.Reserve(2) {
		l.abort(c)
		return
	}
	sqe := l.ring.Next()
	sqe.PrepConnect(fd, &c.sa, n)
	sqe.Flags |= uring.FlagLink
	sqe.UserData = userData(c.slot, c.gen, upstream, opConnect)
	sqe = l.ring.Next()
	sqe.PrepSend(fd, replay.data)
	sqe.UserData = userData(c.slot, c.gen, upstream, opSend)
	c.inflight += 2
}

func (l *loop) connected(c *conn, cqe uring.CQE) {
	if c.closing {
		return
	}
	if cqe.Res < 0 {
		l.abort(c) // the linked send completes with ECANCELED
		return
	}
	c.connected = true
	l.arm(c, upstream)
}

// forward queues bytes for socket k and sends them if nothing is in
// flight to it.
func (l *loop) forward(c *conn, k int, ch chunk) {
	d := &c.s[k]
	d.queue = append(d.queue, ch)
	if !d.sending {
		l.send(c, k)
	}
}

func (l *loop) send(c *conn, k int) {
	d := &c.s[k]
	d.sending = true
	sqe := l.ring.Next()
	sqe.PrepSend(d.fd, d.queue[0].data)
	sqe.UserData = userData(c.slot, c.gen, k, opSend)
	c.inflight++
}

func (l *loop) sent(c *conn, k int, cqe uring.CQE) {
	d := &c.s[k]
	d.sending = false
	if c.closing || cqe.Res < 0 {
		for _, ch := range d.queue {
			l.putBuf(ch.bid)
		}
		d.queue = d.queue[:0]
		l.abort(c)
		return
	}
	if int(cqe.Res) < len(d.queue[0].data) {
		d.queue[0].data = d.queue[0].data[cqe.Res:]
		l.send(c, k)
		return
	}
	l.putBuf(d.queue[0].bid)
	d.queue = append(d.queue[:0], d.queue[1:]...)
	if len(d.queue) > 0 {
		l.send(c, k)
		return
	}
	l.passFIN(c, k)
}

// passFIN half-closes socket k once its peer's FIN was read and every
// byte before it was sent to k; once both directions are done, it closes
// both sockets.
func (l *loop) passFIN(c *conn, k int) {
	d, src := &c.s[k], &c.s[1-k]
	if !src.eof || d.sending || len(d.queue) > 0 || d.shut {
		return
	}
	if d.eof {
		l.finish(c)
		return
	}
	d.shut = true
	sqe := l.ring.Next()
	sqe.PrepShutdown(d.fd, unix.SHUT_WR)
	sqe.Flags |= uring.FlagSkipSuccess
	sqe.UserData = opIgnore
}

// finish closes both sockets of a connection whose two directions ended.
func (l *loop) finish(c *conn) {
	c.closing = true
	for k := range c.s {
		if s := &c.s[k]; s.open {
			s.open = false
			sqe := l.ring.Next()
			sqe.PrepClose(s.fd)
			sqe.Flags |= uring.FlagSkipSuccess
			sqe.UserData = opIgnore
		}
	}
}

// abort closes both sockets at once, cancelling what is in flight on them.
func (l *loop) abort(c *conn) {
	if c.closing {
		return
	}
	c.closing = true
	for k := range c.s {
		s := &c.s[k]
		if !s.open {
			continue
		}
		s.open = false
		if !s.sending {
			for _, ch := range s.queue {
				l.putBuf(ch.bid)
			}
			s.queue = s.queue[:0]
		}
		l.ring.Reserve(2)
		sqe := l.ring.Next()
		sqe.PrepCancelFD(s.fd)
		sqe.Flags |= uring.FlagHardLink | uring.FlagSkipSuccess
		sqe.UserData = opIgnore
		sqe = l.ring.Next()
		sqe.PrepClose(s.fd)
		sqe.Flags |= uring.FlagSkipSuccess
		sqe.UserData = opIgnore
	}
}
