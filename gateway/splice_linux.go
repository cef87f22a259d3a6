package gateway

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceState is what a spliced connection adds to its pumps.
type spliceState struct {
	up, down direction
	parkedN  atomic.Int32 // directions parked
	timerMu  sync.Mutex
	timer    *time.Timer // idle timeout while both directions are parked
}

// startSplice starts the direction from client to upstream on the splice
// path and returns the other one for the caller to run, and true.
func (p *pumps) startSplice(ct, ut *net.TCPConn) (runDown func(), ok bool) {
	p.spliced = true
	p.up = direction{p: p, src: ct, dst: ut, lastOwn: p.start.UnixNano()}
	p.down = direction{p: p, src: ut, dst: ct, lastOwn: p.start.UnixNano()}
	g := grace()
	first := p.start.Add(g)
	if p.idle > 0 && p.idle < g {
		first = p.start.Add(p.idle)
	}
	ct.SetReadDeadline(first)
	ut.SetReadDeadline(first)
	go p.up.run()
	return p.down.run, true
}

// closeSpliced stops the parked idle timer and finishes any parked
// direction, which closing the sockets would otherwise leave asleep.
func (p *pumps) closeSpliced() {
	p.timerMu.Lock()
	if p.timer != nil {
		p.timer.Stop()
	}
	p.timerMu.Unlock()
	for _, d := range [2]*direction{&p.up, &p.down} {
		if idlePark.remove(d) {
			p.parkedN.Add(-1)
			d.err = net.ErrClosed
			p.finish()
		}
	}
}

// splicedTotals returns the bytes moved and the error of each direction.
func (p *pumps) splicedTotals() (up, down int64, upErr, downErr error) {
	return p.up.total, p.down.total, p.up.err, p.down.err
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

	// The state of the splice in progress, in the direction rather than
	// in variables a closure captures, so that neither the callbacks given
	// to RawConn nor that state is allocated on each call.
	pp             *pipe // the pipe while data is in flight
	n              int64 // bytes spliced into pp, then bytes left to drain
	serr           error // the splice's error
	noPipe         bool  // no pipe could be had: copy instead
	blocked, armed bool  // drain: dst's buffer was full; its write deadline is set
	fromSrc, toDst func(fd uintptr) bool

	// The copy path, for a direction's first copyFirst bytes: a pooled
	// buffer while data is in flight, and how much of it is written.
	buf *[]byte
	off int
}

// copyFirst is how many bytes a direction moves with read(2) and write(2)
// before it turns to splice(2). A short exchange (a health check, a
// handshake, a request and its reply) is cheaper to copy than to splice
// through a pipe; a long stream is cheaper to splice.
const copyFirst = 64 << 10

// run is a direction's goroutine: it pumps until the direction ends, or
// parks (and a later goroutine resumes it).
func (d *direction) run() {
	awake.Add(1)
	parked := d.pump()
	awake.Add(-1)
	if parked {
		return
	}
	d.p.finish()
}

// resume continues a parked direction whose socket became readable.
func (d *direction) resume() {
	d.p.parkedN.Add(-1)
	next := time.Now().Add(grace())
	if d.p.idle > 0 {
		if end := time.Unix(0, d.p.last.Load()).Add(d.p.idle); end.Before(next) {
			next = end
		}
	}
	d.src.SetReadDeadline(next)
	d.run()
}

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

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
	if d.fromSrc == nil {
		d.fromSrc, d.toDst = d.readFromSrc, d.writeToDst
	}
	for {
		err := d.srcRC.Read(d.fromSrc)
		n := d.n
		if err == nil && d.serr != nil {
			err = d.serr
		}
		if err == nil && d.noPipe {
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
			d.release(true)
			d.err = p.end(d.dst, err)
			return false
		}
		if n == 0 { // EOF
			d.release(false)
			d.err = p.end(d.dst, nil)
			return false
		}
		now := time.Now().UnixNano()
		p.last.Store(now)
		d.lastOwn = now
		if err := d.drain(); err != nil {
			d.release(true)
			d.err = p.end(d.dst, err)
			return false
		}
		d.release(false)
		d.total += n
	}
}

// release gives back the pipe or the buffer the direction holds, if any. A
// pipe that may still hold bytes (after an error) is closed, never reused.
func (d *direction) release(dirty bool) {
	if d.pp != nil {
		if dirty {
			pipes.discard(d.pp)
		} else {
			pipes.put(d.pp)
		}
		d.pp = nil
	}
	if d.buf != nil {
		copyBuffers.Put(d.buf)
		d.buf = nil
	}
}

// readFromSrc is the callback of src's RawConn.Read: it copies the
// direction's first copyFirst bytes and splices the rest.
func (d *direction) readFromSrc(fd uintptr) bool {
	if d.total < copyFirst {
		return d.copyFromSrc(fd)
	}
	return d.spliceFromSrc(fd)
}

// copyFromSrc reads what src has into a pooled buffer, and asks to wait
// when there is nothing.
func (d *direction) copyFromSrc(fd uintptr) bool {
	d.n, d.serr, d.noPipe, d.off = 0, nil, false, 0
	if d.buf == nil {
		d.buf = copyBuffers.Get()
	}
	var m int
	for {
		m, d.serr = unix.Read(int(fd), *d.buf)
		if d.serr != unix.EINTR {
			break
		}
	}
	if d.serr == unix.EAGAIN {
		copyBuffers.Put(d.buf) // nothing to move: hold no buffer while waiting
		d.buf = nil
		return false
	}
	if d.serr == nil {
		d.n = int64(m)
	} else {
		d.serr = os.NewSyscallError("read from socket", d.serr)
	}
	return true
}

// spliceFromSrc splices what src has into the direction's pipe (taking one from the pool), and asks to wait
// when there is nothing.
func (d *direction) spliceFromSrc(fd uintptr) bool {
	d.n, d.serr, d.noPipe = 0, nil, false // called again after each wait
	if d.pp == nil {
		var perr error
		if d.pp, perr = pipes.get(); perr != nil {
			d.noPipe = true // out of descriptors: copy this chunk instead
			return true
		}
	}
	for {
		m, err := unix.Splice(int(fd), nil, d.pp.w, nil, d.pp.size, spliceFlags) // int on 32-bit systems
		d.n, d.serr = int64(m), err
		if err != unix.EINTR {
			break
		}
	}
	if d.serr == unix.EAGAIN {
		// Nothing to move: give the (empty) pipe back before waiting.
		pipes.put(d.pp)
		d.pp = nil
		return false
	}
	if d.serr != nil {
		d.serr = os.NewSyscallError("splice from socket", d.serr)
	}
	return true
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
	g := grace()
	if now.Sub(own) >= g && idlePark.ready() {
		return parkNow
	}
	next := own.Add(g)
	if !next.After(now) {
		next = now.Add(g)
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
	op := unix.EPOLL_CTL_MOD
	if !d.registered {
		op = unix.EPOLL_CTL_ADD
	}
	d.registered = true
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var cerr error
	err := d.srcRC.Control(func(fd uintptr) {
		// Level-triggered: data that came since the last read fires at once.
		cerr = unix.EpollCtl(idlePark.epfd, op, int(fd), &ev)
	})
	if err == nil && cerr == nil {
		return true
	}
	if !idlePark.remove(d) {
		return true // a closer took it and finishes it
	}
	p.parkedN.Add(-1)
	d.src.SetReadDeadline(time.Now().Add(grace()))
	return false
}

// drain writes the d.n bytes in d.pp (or d.buf) to dst, waiting for dst to be
// writable (with the idle timeout as write deadline) when its buffer is full.
func (d *direction) drain() error {
	l := d.p
	d.armed = false
	defer func() {
		if d.armed && l.idle > 0 {
			d.dst.SetWriteDeadline(time.Time{})
		}
	}()
	for d.n > 0 {
		d.serr, d.blocked = nil, false
		err := d.dstRC.Write(d.toDst)
		if err == nil {
			err = d.serr
		}
		if err != nil {
			if l.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if next, busy := l.renew(); busy {
					d.dst.SetWriteDeadline(next)
					continue
				}
				return ErrIdleTimeout
			}
			return err
		}
		if d.blocked {
			// dst's buffer is full: arm the write deadline once, then wait.
			if l.idle > 0 {
				d.dst.SetWriteDeadline(time.Now().Add(l.idle))
			}
			d.armed = true
		}
	}
	l.touch()
	return nil
}

// writeToDst is the callback of dst's RawConn.Write: it writes the bytes in
// flight (in the pipe, or in the buffer on the copy path) into dst until they
// are all out or dst's buffer is full.
func (d *direction) writeToDst(fd uintptr) bool {
	for d.n > 0 {
		var m int
		var err error
		if d.buf != nil {
			m, err = unix.Write(int(fd), (*d.buf)[d.off:d.off+int(d.n)])
		} else {
			k, serr := unix.Splice(d.pp.r, nil, int(fd), nil, int(d.n), spliceFlags) // int on 32-bit systems
			m, err = int(k), serr
		}
		switch err {
		case nil:
			d.n -= int64(m)
			d.off += m
		case unix.EINTR:
		case unix.EAGAIN:
			if d.armed {
				return false // wait for dst to be writable
			}
			d.blocked = true
			return true
		default:
			op := "splice to socket"
			if d.buf != nil {
				op = "write to socket"
			}
			d.serr = os.NewSyscallError(op, err)
			return true
		}
	}
	return true
}

// copyChunk moves what src has ready through a pooled buffer: the fallback
// when no pipe can be had (the process is out of descriptors). EOF is
// returned as io.EOF.
func (l *pumps) copyChunk(dst, src net.Conn) (int64, error) {
	bp := copyBuffers.Get()
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
