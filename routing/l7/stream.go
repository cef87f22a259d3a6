package l7

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Envoy's timeouts that Consul leaves at their defaults on a gateway's
// routes and HTTP connection manager.
const (
	// DefaultRouteTimeout is Envoy's route timeout when the route sets
	// none: from the end of the request to the end of the answer.
	DefaultRouteTimeout = 15 * time.Second
	// DefaultStreamIdleTimeout is the HTTP connection manager's
	// stream_idle_timeout: a request whose stream moves no byte either way
	// for this long ends. A route's IdleTimeout replaces it.
	DefaultStreamIdleTimeout = 5 * time.Minute
)

// Why a request's context ends early, as its cause.
var (
	errRouteTimeout = errors.New("l7: upstream request timeout")
	errIdleTimeout  = errors.New("l7: stream idle timeout")
)

// streamKey carries a request's stream in its context.
type streamKey struct{}

// stream is one request's passage through the terminator: what the route
// decided for it and what happened to it.
type stream struct {
	xfcc     string
	response []*api.HTTPHeaderModifiers
	retry    retryPolicy
	hash     uint64
	hashed   bool
	cookie   string // a Set-Cookie for the answer: a generated hash cookie

	connectTimeout time.Duration

	cancel       context.CancelCauseFunc
	routeTimeout time.Duration // 0: none
	idleTimeout  time.Duration // 0: none
	lastActive   atomic.Int64  // unix nanoseconds
	route        *time.Timer
	idle         *time.Timer
	mu           sync.Mutex
	bodyDone     bool
	upgraded     bool
	finished     bool

	// Set by the transport for the error handler and the count.
	retries  int
	failure  failure
	reported atomic.Bool // the outcome was counted
}

// start arms the idle timer; the route timer waits for the end of the
// request body (requestDone).
func (s *stream) start() {
	s.touch()
	if s.idleTimeout > 0 {
		s.idle = time.AfterFunc(s.idleTimeout, s.checkIdle)
	}
}

// touch notes that bytes moved.
func (s *stream) touch() { s.lastActive.Store(time.Now().UnixNano()) }

// checkIdle ends the stream if it has been idle for idleTimeout, else
// waits for the rest.
func (s *stream) checkIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	quiet := time.Since(time.Unix(0, s.lastActive.Load()))
	if quiet >= s.idleTimeout {
		s.cancel(errIdleTimeout)
		return
	}
	s.idle.Reset(s.idleTimeout - quiet)
}

// requestDone starts the route timeout: Envoy counts it from the end of
// the request. It runs once.
func (s *stream) requestDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bodyDone || s.finished {
		return
	}
	s.bodyDone = true
	if s.routeTimeout > 0 && !s.upgraded {
		s.route = time.AfterFunc(s.routeTimeout, func() { s.cancel(errRouteTimeout) })
	}
}

// upgrade stops the route timeout once the instance accepts an upgrade:
// the stream is a tunnel from then on, ended by idleness only.
func (s *stream) upgrade() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upgraded = true
	if s.route != nil {
		s.route.Stop()
	}
}

// finish stops the timers.
func (s *stream) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finished = true
	if s.route != nil {
		s.route.Stop()
	}
	if s.idle != nil {
		s.idle.Stop()
	}
}

// watchedBody is a request or answer body that tells its stream when
// bytes move and when it ends.
type watchedBody struct {
	io.ReadCloser
	s     *stream
	onEnd func() // once, at EOF or Close
	once  sync.Once
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.s.touch()
	}
	if err == io.EOF {
		b.end()
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	b.end()
	return err
}

func (b *watchedBody) end() {
	if b.onEnd != nil {
		b.once.Do(b.onEnd)
	}
}

// watchedTunnel is the instance's side of an upgraded connection (an
// answer body that is also written to): both directions are activity.
type watchedTunnel struct {
	watchedBody
	w io.Writer
}

func (t *watchedTunnel) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		t.s.touch()
	}
	return n, err
}
