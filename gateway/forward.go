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
// socket has nothing more, so an idle forwarded connection costs its two
// sockets and nothing else. Other connections are copied through a pooled
// 32 KiB buffer.
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

// Start forwards both ways like Forward but returns at once: the two
// directions run in goroutines of their own, and the last one to end closes
// both connections and calls done with the stats. No goroutine waits for
// them, so an idle connection costs two small goroutines.
func (f *Forwarder) Start(client, upstream net.Conn, done func(Stats)) {
	idle := f.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	p := &pumps{link: link{idle: idle, a: client, b: upstream}, done: done, start: time.Now()}
	p.touch()
	ct, ok1 := client.(*net.TCPConn)
	ut, ok2 := upstream.(*net.TCPConn)
	p.spliced = ok1 && ok2
	if idle > 0 {
		client.SetReadDeadline(p.start.Add(idle))
		upstream.SetReadDeadline(p.start.Add(idle))
	}
	p.remaining.Store(2)
	if p.spliced {
		p.ct, p.ut = ct, ut
		go p.spliceUp()
		go p.spliceDown()
	} else {
		go p.copyUp()
		go p.copyDown()
	}
}

// pumps is one forwarded connection: its two directions and what they found.
type pumps struct {
	link
	done      func(Stats)
	start     time.Time
	spliced   bool
	ct, ut    *net.TCPConn
	remaining atomic.Int32
	up, down  int64
	upErr     error
	downErr   error
}

// The four goroutine entry points are plain methods, so a parked direction's
// stack holds as few frames as possible.
func (p *pumps) spliceUp() {
	p.up, p.upErr = p.spliceDirection(p.ut, p.ct)
	p.finish()
}

func (p *pumps) spliceDown() {
	p.down, p.downErr = p.spliceDirection(p.ct, p.ut)
	p.finish()
}

func (p *pumps) copyUp() {
	p.up, p.upErr = p.copyDirection(p.b, p.a)
	p.finish()
}

func (p *pumps) copyDown() {
	p.down, p.downErr = p.copyDirection(p.a, p.b)
	p.finish()
}

// finish runs in whichever direction ends last: it closes both sides and
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
	p.done(Stats{
		ClientToUpstream: p.up,
		UpstreamToClient: p.down,
		Spliced:          p.spliced,
		Duration:         time.Since(p.start),
		Err:              firstReal(cause, p.upErr, p.downErr),
	})
}

// link is the state both directions of one connection share.
type link struct {
	idle  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last byte moved either way
	a, b  net.Conn
	once  sync.Once
	cause atomic.Pointer[error] // why closeBoth was called early
}

func (l *link) touch() { l.last.Store(time.Now().UnixNano()) }

// renew decides, once a deadline has fired, whether the connection is idle;
// if it is not, it returns the new deadline.
func (l *link) renew() (time.Time, bool) {
	next := time.Unix(0, l.last.Load()).Add(l.idle)
	return next, time.Now().Before(next)
}

// abort records why the connection ends early and closes both sides, which
// unblocks the other direction.
func (l *link) abort(err error) {
	l.cause.CompareAndSwap(nil, &err)
	l.closeBoth()
}

func (l *link) closeBoth() {
	l.once.Do(func() {
		l.a.Close()
		l.b.Close()
	})
}

// end finishes a direction: a clean EOF half-closes dst; anything else aborts.
func (l *link) end(dst net.Conn, n int64, err error) (int64, error) {
	if err == nil || err == io.EOF {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cerr := cw.CloseWrite(); cerr == nil {
				return n, nil
			}
		}
		l.closeBoth()
		return n, nil
	}
	l.abort(err)
	return n, err
}

const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

// spliceDirection moves src's bytes to dst with splice(2) until src's EOF.
func (l *link) spliceDirection(dst, src *net.TCPConn) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return l.end(dst, 0, err)
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return l.end(dst, 0, err)
	}
	var total int64
	var p *pipe
	for {
		var n int64
		var serr error
		noPipe := false
		err := srcRC.Read(func(fd uintptr) bool {
			n, serr, noPipe = 0, nil, false // called again after each wait
			if p == nil {
				var perr error
				if p, perr = pipes.get(); perr != nil {
					noPipe = true // out of descriptors: copy this chunk instead
					return true
				}
			}
			for {
				n, serr = syscall.Splice(int(fd), nil, p.w, nil, p.size, spliceFlags)
				if serr != syscall.EINTR {
					break
				}
			}
			if serr == syscall.EAGAIN {
				// Nothing to move: give the (empty) pipe back before waiting.
				pipes.put(p)
				p = nil
				return false
			}
			return true
		})
		if err == nil && serr != nil {
			err = os.NewSyscallError("splice from socket", serr)
		}
		if err == nil && noPipe {
			var m int64
			m, err = l.copyChunk(dst, src)
			if err == nil {
				total += m
				continue
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
			if p != nil {
				p.close() // may hold bytes; never reuse it
			}
			return l.end(dst, total, err)
		}
		if n == 0 { // EOF
			pipes.put(p)
			return l.end(dst, total, nil)
		}
		l.touch()
		if err := l.drain(dst, dstRC, p, n); err != nil {
			p.close()
			return l.end(dst, total, err)
		}
		total += n
	}
}

// drain splices n bytes from p into dst, waiting for dst to be writable (with
// the idle timeout as write deadline) when its buffer is full.
func (l *link) drain(dst *net.TCPConn, dstRC syscall.RawConn, p *pipe, n int64) error {
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
func (l *link) copyChunk(dst, src net.Conn) (int64, error) {
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

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyDirection moves src's bytes to dst through a pooled buffer, for
// connections that are not bare TCP.
func (l *link) copyDirection(dst, src net.Conn) (int64, error) {
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
				return l.end(dst, total, werr)
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
			return l.end(dst, total, err)
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
