package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultIdleTimeout is Envoy's TCP idle timeout, which Consul leaves as is.
const DefaultIdleTimeout = time.Hour

// ErrIdleTimeout ends a connection on which nothing moved, in either
// direction, for the idle timeout.
var ErrIdleTimeout = errors.New("gateway: idle timeout")

// Forwarder moves bytes both ways between two connections. The zero value is
// ready to use.
//
// When both connections are bare *net.TCPConn it moves them with splice(2),
// in the kernel, without copying through user space. Unlike io.Copy, which
// holds a pipe pair while it waits in splice, a direction takes a pipe from a
// shared pool only while data is ready and gives it back as soon as the
// socket has nothing more. A direction that has had no data for a second
// parks in a shared epoll set and its goroutine ends; a new one starts when
// data, EOF or an error arrives. An idle forwarded connection therefore
// costs its two sockets and no goroutine. Other connections are copied
// through a pooled 32 KiB buffer by a goroutine per direction.
type Forwarder struct {
	// IdleTimeout closes the connection when no byte has moved in either
	// direction for this long. Zero means DefaultIdleTimeout; negative means
	// never.
	IdleTimeout time.Duration
}

// Forward writes replay (the bytes already read from client, such as its
// ClientHello) to upstream, then forwards both ways until both directions
// have ended, and closes both connections. When one side ends its writing
// (EOF), Forward half-closes the other side's writing (CloseWrite) and keeps
// the opposite direction going. An error in either direction, or the idle
// timeout, closes both at once. Forward owns client and upstream from the
// call on.
func (f *Forwarder) Forward(client, upstream net.Conn, replay []byte) Stats {
	start := time.Now()
	var replayed int64
	if len(replay) > 0 {
		n, err := upstream.Write(replay)
		replayed = int64(n)
		if err != nil {
			client.Close()
			upstream.Close()
			return Stats{ClientToUpstream: replayed, Err: err, Duration: time.Since(start)}
		}
	}
	done := make(chan Stats, 1)
	f.Start(client, upstream, func(s Stats) { done <- s })
	s := <-done
	s.ClientToUpstream += replayed
	s.Duration = time.Since(start)
	return s
}

// ErrStopped is the Stats.Err of a connection ended by Start's stop function.
var ErrStopped = errors.New("gateway: forwarding stopped")

// Start forwards both ways like Forward but returns at once; done is called
// once, with the stats, after both directions have ended and both
// connections are closed. No goroutine waits for them. stop ends the
// connection at once (done is still called, with ErrStopped); it must be used
// instead of closing the connections directly, which would leave a parked
// direction unfinished.
func (f *Forwarder) Start(client, upstream net.Conn, done func(Stats)) (stop func()) {
	idle := f.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	p := &pumps{idle: idle, a: client, b: upstream, done: done, start: time.Now()}
	p.touch()
	p.remaining.Store(2)
	ct, ok1 := client.(*net.TCPConn)
	ut, ok2 := upstream.(*net.TCPConn)
	if p.spliced = ok1 && ok2; p.spliced {
		p.up = direction{p: p, src: ct, dst: ut, lastOwn: p.start.UnixNano()}
		p.down = direction{p: p, src: ut, dst: ct, lastOwn: p.start.UnixNano()}
		first := p.start.Add(idleGrace)
		if idle > 0 && idle < idleGrace {
			first = p.start.Add(idle)
		}
		ct.SetReadDeadline(first)
		ut.SetReadDeadline(first)
		go p.up.run()
		go p.down.run()
	} else {
		if idle > 0 {
			client.SetReadDeadline(p.start.Add(idle))
			upstream.SetReadDeadline(p.start.Add(idle))
		}
		go p.copyUp()
		go p.copyDown()
	}
	return func() { p.abort(ErrStopped) }
}

// pumps is one forwarded connection: what both directions share.
type pumps struct {
	idle      time.Duration
	last      atomic.Int64 // unix nanoseconds of the last byte moved either way
	a, b      net.Conn     // client, upstream
	once      sync.Once
	cause     atomic.Pointer[error] // why the connection was ended early
	done      func(Stats)
	start     time.Time
	spliced   bool
	remaining atomic.Int32

	up, down direction // the splice path

	copied    [2]int64 // the copy path: up, down
	copiedErr [2]error

	parkedN atomic.Int32
	timerMu sync.Mutex
	timer   *time.Timer // idle timeout while both directions are parked
}

func (p *pumps) touch() { p.last.Store(time.Now().UnixNano()) }

// abort records why the connection ends early and closes it.
func (p *pumps) abort(err error) {
	p.cause.CompareAndSwap(nil, &err)
	p.closeBoth()
}

// closeBoth closes both sides (which ends any running direction) and
// finishes any parked one, which closing would otherwise leave asleep.
func (p *pumps) closeBoth() {
	p.once.Do(func() {
		p.a.Close()
		p.b.Close()
		p.timerMu.Lock()
		if p.timer != nil {
			p.timer.Stop()
		}
		p.timerMu.Unlock()
	})
	if !p.spliced {
		return
	}
	for _, d := range [2]*direction{&p.up, &p.down} {
		if idlePark.remove(d) {
			p.parkedN.Add(-1)
			d.err = net.ErrClosed
			p.finish()
		}
	}
}

// end finishes a direction: a clean EOF half-closes dst; anything else aborts.
func (p *pumps) end(dst net.Conn, err error) error {
	if err == nil || err == io.EOF {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cerr := cw.CloseWrite(); cerr == nil {
				return nil
			}
		}
		p.closeBoth()
		return nil
	}
	p.abort(err)
	return err
}

// finish runs when a direction ends; the last one closes both sides and
// reports.
func (p *pumps) finish() {
	if p.remaining.Add(-1) != 0 {
		return
	}
	p.closeBoth()
	var cause error
	if c := p.cause.Load(); c != nil {
		cause = *c
	}
	s := Stats{Spliced: p.spliced, Duration: time.Since(p.start)}
	if p.spliced {
		s.ClientToUpstream, s.UpstreamToClient = p.up.total, p.down.total
		s.Err = firstReal(cause, p.up.err, p.down.err)
	} else {
		s.ClientToUpstream, s.UpstreamToClient = p.copied[0], p.copied[1]
		s.Err = firstReal(cause, p.copiedErr[0], p.copiedErr[1])
	}
	p.done(s)
}

// armIdleTimer watches the idle timeout while both directions are parked,
// when no goroutine's read deadline does.
func (p *pumps) armIdleTimer() {
	if p.idle <= 0 {
		return
	}
	wait := time.Until(time.Unix(0, p.last.Load()).Add(p.idle))
	p.timerMu.Lock()
	defer p.timerMu.Unlock()
	if p.timer == nil {
		p.timer = time.AfterFunc(wait, p.idleCheck)
	} else {
		p.timer.Reset(wait)
	}
}

func (p *pumps) idleCheck() {
	if p.parkedN.Load() < 2 {
		return // a direction is awake; its read deadline watches
	}
	if time.Since(time.Unix(0, p.last.Load())) >= p.idle {
		p.abort(ErrIdleTimeout)
		return
	}
	p.armIdleTimer()
}

// direction is one way of a spliced connection.
type direction struct {
	p            *pumps
	src, dst     *net.TCPConn
	srcRC, dstRC syscall.RawConn
	total        int64
	err          error
	lastOwn      int64 // unix nanoseconds of this direction's last byte
	registered   bool  // src is in the parker's epoll set
	parkID       uint64
}

// run is a direction's goroutine: it pumps until the direction ends, or
// parks (and a later goroutine resumes it).
func (d *direction) run() {
	if parked := d.pump(); parked {
		return
	}
	d.p.finish()
}

// resume continues a parked direction whose socket became readable.
func (d *direction) resume() {
	d.p.parkedN.Add(-1)
	next := time.Now().Add(idleGrace)
	if d.p.idle > 0 {
		if end := time.Unix(0, d.p.last.Load()).Add(d.p.idle); end.Before(next) {
			next = end
		}
	}
	d.src.SetReadDeadline(next)
	d.run()
}

const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

// pump moves src's bytes to dst with splice(2) until src's EOF or an error
// (d.err is set, it returns false), or until the direction parks (it returns
// true and the goroutine must end).
func (d *direction) pump() (parked bool) {
	p := d.p
	if d.srcRC == nil {
		var err error
		if d.srcRC, err = d.src.SyscallConn(); err == nil {
			d.dstRC, err = d.dst.SyscallConn()
		}
		if err != nil {
			d.err = p.end(d.dst, err)
			return false
		}
	}
	var pp *pipe
	for {
		var n int64
		var serr error
		noPipe := false
		err := d.srcRC.Read(func(fd uintptr) bool {
			n, serr, noPipe = 0, nil, false // called again after each wait
			if pp == nil {
				var perr error
				if pp, perr = pipes.get(); perr != nil {
					noPipe = true // out of descriptors: copy this chunk instead
					return true
				}
			}
			for {
				n, serr = syscall.Splice(int(fd), nil, pp.w, nil, pp.size, spliceFlags)
				if serr != syscall.EINTR {
					break
				}
			}
			if serr == syscall.EAGAIN {
				// Nothing to move: give the (empty) pipe back before waiting.
				pipes.put(pp)
				pp = nil
				return false
			}
			return true
		})
		if err == nil && serr != nil {
			err = os.NewSyscallError("splice from socket", serr)
		}
		if err == nil && noPipe {
			var m int64
			m, err = p.copyChunk(d.dst, d.src)
			if err == nil {
				d.total += m
				d.lastOwn = time.Now().UnixNano()
				continue
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				switch d.onDeadline() {
				case keepWaiting:
					continue
				case parkNow:
					if d.park() {
						return true
					}
					continue
				}
				err = ErrIdleTimeout
			}
			if pp != nil {
				pipes.discard(pp) // may hold bytes; never reuse it
			}
			d.err = p.end(d.dst, err)
			return false
		}
		if n == 0 { // EOF
			pipes.put(pp)
			d.err = p.end(d.dst, nil)
			return false
		}
		now := time.Now().UnixNano()
		p.last.Store(now)
		d.lastOwn = now
		if err := p.drain(d.dst, d.dstRC, pp, n); err != nil {
			pipes.discard(pp)
			d.err = p.end(d.dst, err)
			return false
		}
		d.total += n
	}
}

type deadlineAction int

const (
	keepWaiting deadlineAction = iota
	parkNow
	idleOut
)

// onDeadline decides, when src's read deadline fires: the connection is idle
// (idleOut), this direction has waited a grace period (parkNow), or it waits
// on with a new deadline (keepWaiting).
func (d *direction) onDeadline() deadlineAction {
	p := d.p
	now := time.Now()
	last := time.Unix(0, p.last.Load())
	if p.idle > 0 && now.Sub(last) >= p.idle {
		return idleOut
	}
	own := time.Unix(0, d.lastOwn)
	if now.Sub(own) >= idleGrace && idlePark.ready() {
		return parkNow
	}
	next := own.Add(idleGrace)
	if !next.After(now) {
		next = now.Add(idleGrace)
	}
	if p.idle > 0 {
		if end := last.Add(p.idle); end.Before(next) {
			next = end
		}
	}
	d.src.SetReadDeadline(next)
	return keepWaiting
}

// park puts the direction to sleep in the shared poller. It returns true if
// the direction now belongs to the poller (or to a closer); the goroutine
// must then touch nothing more of it. On false the direction goes on waiting
// in Go's poller.
func (d *direction) park() bool {
	p := d.p
	d.src.SetReadDeadline(time.Time{}) // a resumed direction sets a fresh one
	if p.parkedN.Add(1) == 2 {
		p.armIdleTimer()
	}
	id := idlePark.add(d)
	op := syscall.EPOLL_CTL_MOD
	if !d.registered {
		op = syscall.EPOLL_CTL_ADD
	}
	d.registered = true
	ev := syscall.EpollEvent{Events: epollIn | epollRDHUP | epollOneShot, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var cerr error
	err := d.srcRC.Control(func(fd uintptr) {
		// Level-triggered: data that came since the last read fires at once.
		cerr = syscall.EpollCtl(idlePark.epfd, op, int(fd), &ev)
	})
	if err == nil && cerr == nil {
		return true
	}
	if !idlePark.remove(d) {
		return true // a closer took it and finishes it
	}
	p.parkedN.Add(-1)
	d.src.SetReadDeadline(time.Now().Add(idleGrace))
	return false
}

// drain splices n bytes from p into dst, waiting for dst to be writable (with
// the idle timeout as write deadline) when its buffer is full.
func (l *pumps) drain(dst *net.TCPConn, dstRC syscall.RawConn, p *pipe, n int64) error {
	armed := false
	defer func() {
		if armed && l.idle > 0 {
			dst.SetWriteDeadline(time.Time{})
		}
	}()
	for n > 0 {
		var werr error
		blocked := false
		err := dstRC.Write(func(fd uintptr) bool {
			for n > 0 {
				m, err := syscall.Splice(p.r, nil, int(fd), nil, int(n), spliceFlags)
				switch err {
				case nil:
					n -= m
				case syscall.EINTR:
				case syscall.EAGAIN:
					if armed {
						return false // wait for dst to be writable
					}
					blocked = true
					return true
				default:
					werr = os.NewSyscallError("splice to socket", err)
					return true
				}
			}
			return true
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			if l.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if next, busy := l.renew(); busy {
					dst.SetWriteDeadline(next)
					continue
				}
				return ErrIdleTimeout
			}
			return err
		}
		if blocked {
			// dst's buffer is full: arm the write deadline once, then wait.
			if l.idle > 0 {
				dst.SetWriteDeadline(time.Now().Add(l.idle))
			}
			armed = true
		}
	}
	l.touch()
	return nil
}

// copyChunk moves what src has ready through a pooled buffer: the fallback
// when no pipe can be had (the process is out of descriptors). EOF is
// returned as io.EOF.
func (l *pumps) copyChunk(dst, src net.Conn) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	n, err := src.Read(*bp)
	if n > 0 {
		l.touch()
		if _, werr := dst.Write((*bp)[:n]); werr != nil {
			return int64(n), werr
		}
	}
	return int64(n), err
}

// renew decides, once a deadline has fired, whether the connection is idle;
// if it is not, it returns the new deadline.
func (l *pumps) renew() (time.Time, bool) {
	next := time.Unix(0, l.last.Load()).Add(l.idle)
	return next, time.Now().Before(next)
}

func (p *pumps) copyUp() {
	p.copied[0], p.copiedErr[0] = p.copyDirection(p.b, p.a)
	p.finish()
}

func (p *pumps) copyDown() {
	p.copied[1], p.copiedErr[1] = p.copyDirection(p.a, p.b)
	p.finish()
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyDirection moves src's bytes to dst through a pooled buffer, for
// connections that are not bare TCP.
func (l *pumps) copyDirection(dst, src net.Conn) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.touch()
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, l.end(dst, werr)
			}
		}
		if err != nil {
			if l.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if next, busy := l.renew(); busy {
					src.SetReadDeadline(next)
					continue
				}
				err = ErrIdleTimeout
			}
			return total, l.end(dst, err)
		}
	}
}

// firstReal returns the first error that is not the echo of a close made by
// the other direction.
func firstReal(errs ...error) error {
	for _, err := range errs {
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return nil
}
