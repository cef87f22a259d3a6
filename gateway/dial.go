package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/meshgate/meshgate/internal/problems"
)

// connect dials the route and records the upstream connection on c (for
// Close, and for loop detection before any byte is sent on it).
func (s *Server) connect(c *conn, st *story, route Route) (upstream net.Conn, target, reason string, err error) {
	upstream, target, err = s.dial(st, route)
	if err != nil {
		reason = ReasonDialFailed
		if errors.Is(err, ErrServerClosed) {
			reason = ReasonShutdown // Close or Shutdown came while dialling
		}
		return nil, "", reason, err
	}
	if pair, ok := pairOf(upstream.LocalAddr(), upstream.RemoteAddr()); ok {
		s.mu.Lock()
		c.dialed = pair
		s.dialed[pair] = struct{}{}
		s.mu.Unlock()
	}
	c.upstream.Store(&upstream)
	if s.hardClosed.Load() {
		upstream.Close() // Close ran while we dialled
	}
	return upstream, target, "", nil
}

// ownConnection reports whether client is the far end of one of this
// server's own upstream connections: a route led back to the gateway
// itself, directly or through a name. The pair of addresses is recorded
// before the ClientHello is replayed, and the check comes after it is read,
// so a loop is always caught on its second connection and ends there,
// instead of taking one connection after another until the process runs out.
func (s *Server) ownConnection(remote, local net.Addr) bool {
	pair, ok := pairOf(remote, local)
	if !ok {
		return false
	}
	s.mu.Lock()
	_, own := s.dialed[pair]
	s.mu.Unlock()
	return own
}

// tcpPair is a TCP connection's two ends, from the dialler's side.
type tcpPair struct{ from, to netip.AddrPort }

func pairOf(from, to net.Addr) (tcpPair, bool) {
	f, ok1 := from.(*net.TCPAddr)
	t, ok2 := to.(*net.TCPAddr)
	if !ok1 || !ok2 {
		return tcpPair{}, false
	}
	unmap := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }
	return tcpPair{unmap(f.AddrPort()), unmap(t.AddrPort())}, true
}

// connectTimeout is the bound of each dial of r's targets: the route's,
// else the server's.
func (s *Server) connectTimeout(r Route) time.Duration {
	timeout := r.ConnectTimeout
	if timeout <= 0 {
		timeout = s.ConnectTimeout
	}
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	return timeout
}

// dialFunc is Dial, or a net.Dialer with TCPKeepAlive.
func (s *Server) dialFunc() func(ctx context.Context, network, address string) (net.Conn, error) {
	if s.Dial != nil {
		return s.Dial
	}
	d := net.Dialer{KeepAlive: -1}
	if s.TCPKeepAlive > 0 {
		d.KeepAlive = s.TCPKeepAlive
	}
	return d.DialContext
}

// dial tries the route's targets in order, each within the connect timeout
// (the route's, else the server's); st hears of each failure.
func (s *Server) dial(st *story, r Route) (net.Conn, string, error) {
	timeout := s.connectTimeout(r)
	dial := s.dialFunc()
	var errs []error
	for _, t := range s.health.order(r.Targets) {
		if s.closing() {
			errs = append(errs, ErrServerClosed)
			break
		}
		up, err := dialRetryingEMFILE(dial, t, timeout)
		if err == nil {
			ka := r.KeepAlive
			if !ka.Enable && r.Remote {
				ka = s.RemoteKeepAlive
			}
			if ka.Enable {
				if tc, ok := up.(*net.TCPConn); ok {
					if err := tc.SetKeepAliveConfig(ka); err != nil {
						s.logger().Debug("gateway: setting upstream keepalive", "target", t, "err", err.Error())
					}
				}
			}
			s.health.succeeded(t)
			return up, t, nil
		}
		if s.health.failed(t) {
			s.logger().Warn("gateway: target ejected: later connections try the route's other targets first, until a probe connects to it",
				"target", t, "consecutive_failures", s.health.after, "err", err.Error())
		}
		s.observer().DialFailed(r.Name, t, err)
		st.dialFailed(t, err)
		errs = append(errs, err)
	}
	return nil, "", problems.Join(errs...)
}

// dialRetryingEMFILE dials addr within timeout; while the process is out of
// file descriptors it waits and retries (5 ms doubling), so a connection
// accepted at the limit is not lost when another one frees a descriptor.
func dialRetryingEMFILE(dial func(context.Context, string, string) (net.Conn, error), addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	wait := 5 * time.Millisecond
	for {
		up, err := dial(ctx, "tcp", addr)
		if err == nil || !outOfDescriptors(err) {
			return up, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}
