package gateway

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/engine"
)

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

// unmap returns ap with an IPv4 address in IPv6 unmapped.
func unmap(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }

// engineRoute is what an engine needs of r (see engine.Route).
func (s *Server) engineRoute(r Route) engine.Route {
	ka := r.KeepAlive
	if !ka.Enable && r.Remote {
		ka = s.RemoteKeepAlive
	}
	return engine.Route{Targets: r.Targets, InProcess: r.Serve != nil, ConnectTimeout: s.connectTimeout(r), KeepAlive: ka}
}
