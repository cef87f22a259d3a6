package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/freelist"
)

// DefaultIdleTimeout is Envoy's TCP idle timeout, which Consul leaves as is.
const DefaultIdleTimeout = time.Hour

// ErrIdleTimeout ends a connection on which nothing moved, in either
// direction, for the idle timeout.
var ErrIdleTimeout = errors.New("gateway: idle timeout")

// Forwarder moves bytes both ways between two connections. The zero value is
// ready to use.
//
// On Linux, when both connections are bare *net.TCPConn, each direction
// copies its first 64 KiB through a pooled buffer (a short exchange costs
// less that way) and then moves the rest with splice(2), in the kernel,
// without copying through user space. Unlike io.Copy, which
// holds a pipe pair while it waits in splice, a direction takes a pipe from a
// shared pool only while data is ready and gives it back as soon as the
// socket has nothing more. A direction that has had no data for a second
// parks in a shared epoll set and its goroutine ends; a new one starts when
// data, EOF or an error arrives. An idle forwarded connection therefore
// costs its two sockets and no goroutine. Other connections, and all of them
// on other systems, are copied through a pooled 32 KiB buffer by a goroutine
// per direction, with the same half-close and idle-timeout behaviour.
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
	done := make(chan Stats, 1)
	f.Start(client, upstream, replay, func(s Stats) { done <- s })
	return <-done
}

// ErrStopped is the Stats.Err of a connection ended by Start's stop function.
var ErrStopped = errors.New("gateway: forwarding stopped")

// ErrMaxConnectionLifetime is the Stats.Err of a connection the Server
// closed at its MaxConnectionLifetime.
var ErrMaxConnectionLifetime = errors.New("gateway: max connection lifetime reached")

// Start forwards both ways like Forward but returns at once, once replay is
// written; done is called once, with the stats, after both directions have
// ended and both connections are closed (at once, from Start, if replay
// could not be written). No goroutine waits for them. stop ends the
// connection at once (done is still called, with ErrStopped); it must be used
// instead of closing the connections directly, which would leave a parked
// direction unfinished.
func (f *Forwarder) Start(client, upstream net.Conn, replay []byte, done func(Stats)) (stop func()) {
	abort, runDown := f.start(client, upstream, replay, done)
	go runDown()
	return func() { abort(ErrStopped) }
}

// start is Start, except that the direction from upstream to client is left
// for the caller to run, on a goroutine it already has: runDown returns when
// that direction ends or parks. The Server runs it on the connection's own
// goroutine, which saves starting one per connection. abort ends the
// connection at once with err as its Stats.Err (Start's stop is
// abort(ErrStopped)).
func (f *Forwarder) start(client, upstream net.Conn, replay []byte, done func(Stats)) (abort func(error), runDown func()) {
	start := time.Now()
	var replayed int64
	if len(replay) > 0 {
		n, err := upstream.Write(replay)
		replayed = int64(n)
		if err != nil {
			client.Close()
			upstream.Close()
			done(Stats{ClientToUpstream: replayed, Err: err, Duration: time.Since(start)})
			return func(error) {}, func() {}
		}
	}
	idle := f.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	p := &pumps{idle: idle, a: client, b: upstream, done: done, start: start, replayed: replayed}
	p.touch()
	p.remaining.Store(2)
	abort = p.abort
	ct, ok1 := client.(*net.TCPConn)
	ut, ok2 := upstream.(*net.TCPConn)
	if ok1 && ok2 {
		if runDown, ok := p.startSplice(ct, ut); ok {
			return abort, runDown
		}
	}
	if idle > 0 {
		client.SetReadDeadline(p.start.Add(idle))
		upstream.SetReadDeadline(p.start.Add(idle))
	}
	go p.copyUp()
	return abort, p.copyDown
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
	replayed  int64 // bytes of replay written before forwarding started

	spliceState // the splice path's, on Linux

	copied    [2]int64 // the copy path: up, down
	copiedErr [2]error
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
	})
	if p.spliced {
		p.closeSpliced()
	}
}

// end finishes a direction: a clean EOF half-closes dst; anything else aborts.
// When the other direction has already finished, the close that follows at
// once (in finish) sends dst its FIN, so the half-close is skipped: one
// system call fewer per connection.
func (p *pumps) end(dst net.Conn, err error) error {
	if err == nil || err == io.EOF {
		if p.remaining.Load() == 1 {
			return nil
		}
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
		var upErr, downErr error
		s.ClientToUpstream, s.UpstreamToClient, upErr, downErr = p.splicedTotals()
		s.Err = firstReal(cause, upErr, downErr)
	} else {
		s.ClientToUpstream, s.UpstreamToClient = p.copied[0], p.copied[1]
		s.Err = firstReal(cause, p.copiedErr[0], p.copiedErr[1])
	}
	s.ClientToUpstream += p.replayed
	p.done(s)
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

// copyBuffers are the 32 KiB buffers of directions that copy; a direction
// holds one only while it has bytes to move.
var copyBuffers = freelist.New(128, func() *[]byte { b := make([]byte, 32<<10); return &b })

// copyDirection moves src's bytes to dst through a pooled buffer, for
// connections that are not bare TCP.
func (l *pumps) copyDirection(dst, src net.Conn) (int64, error) {
	bp := copyBuffers.Get()
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
