// Package l7 terminates a cluster peer's connections to exported services
// whose protocol is http, http2 or grpc, as Consul's mesh gateway does.
//
// Consul's gateway does not pass such a connection through: it completes
// the peer's mTLS with its own certificate
// (spiffe://<td>/gateway/mesh/dc/<dc>), accepting only clients whose
// certificates chain to that peer's CA bundle; it replaces the
// X-Forwarded-Client-Cert header with the peer client's certificate and
// identity, which the destination's L7 intentions read; it sends each
// request along the service's discovery chain; and it opens its own mTLS,
// with the same certificate, to the instance, expecting the target
// service's identity. A Terminator does that, with HTTP/1.1 and HTTP/2
// (and so gRPC) from net/http.
//
// The gateway's routing.PeeringRouter hands a Terminator these connections
// whole, ClientHello included, in the same process (its Terminate, which
// calls ServeConn), or sends them to the socket it Serves (its L7); either
// way the gateway's accept, limits, metrics and access log apply to them
// as to every other connection.
package l7

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sni"
)

// handshakeTimeout bounds a peer's TLS handshake.
const handshakeTimeout = 10 * time.Second

// Terminator serves a peer's connections to exported L7 services. Source
// and Certs are required; the zero value of the rest works.
type Terminator struct {
	// Source provides the view: what is exported to which peer, with what
	// protocol and discovery chain, the instances, and each peer's CA roots
	// and trust domain.
	Source mesh.Source
	// Certs is the gateway's own identity and the cluster's roots
	// (gatewaycert.Watch).
	Certs *sidecar.Certs
	// Logger receives a line per connection that fails its handshake and
	// per request that finds no instance; nil means slog.Default().
	Logger *slog.Logger

	http     http.Server
	conns    chan net.Conn // to http
	done     chan struct{} // closed by Close
	initOnce sync.Once
	upstream upstreams
	routes   atomic.Pointer[routeCache]

	mu     sync.Mutex
	open   map[io.Closer]struct{} // connections and listeners
	closed bool
}

// connKey carries a connection's export in its context.
type connKey struct{}

// peerConn is one terminated connection: which export it reaches, from
// which peer, and the client's XFCC element.
type peerConn struct {
	name sni.Name // the exported service's SNI, parsed
	xfcc string
}

// Serve accepts connections on ln until ln is closed or Close is called
// (which closes ln). It returns nil after Close, else ln's error.
func (t *Terminator) Serve(ln net.Listener) error {
	t.init()
	if !t.track(ln, true) {
		ln.Close()
		return nil
	}
	defer t.track(ln, false)
	for {
		c, err := ln.Accept()
		if err != nil {
			if t.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		if !t.track(c, true) {
			c.Close()
			return nil
		}
		go t.serveConn(c)
	}
}

// Close closes every connection the Terminator serves; Serve returns.
func (t *Terminator) Close() error {
	t.init()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	open := t.open
	t.open = nil
	close(t.done)
	t.mu.Unlock()
	for c := range open {
		c.Close()
	}
	err := t.http.Close()
	t.upstream.closeIdle()
	return err
}

func (t *Terminator) init() {
	t.initOnce.Do(func() {
		t.conns, t.done = make(chan net.Conn), make(chan struct{})
		t.http = http.Server{
			Handler:           http.HandlerFunc(t.serveHTTP),
			ReadHeaderTimeout: time.Minute,
			IdleTimeout:       time.Hour, // Envoy's, as Consul leaves it
			ErrorLog:          slog.NewLogLogger(t.logger().Handler(), slog.LevelDebug),
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				return context.WithValue(ctx, connKey{}, c.(*termConn).pc)
			},
			Protocols: new(http.Protocols),
		}
		t.http.Protocols.SetHTTP1(true)
		t.http.Protocols.SetUnencryptedHTTP2(true)
		go t.http.Serve(chanListener{t.conns, t.done})
		t.upstream.t = t
	})
}

func (t *Terminator) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.Default()
}

func (t *Terminator) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// track adds c (a connection or a listener) to, or with add false removes
// it from, what Close closes; it reports false once the Terminator is
// closed.
func (t *Terminator) track(c io.Closer, add bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.open == nil {
		t.open = map[io.Closer]struct{}{}
	}
	if add {
		t.open[c] = struct{}{}
	} else {
		delete(t.open, c)
	}
	return true
}

// serveConn completes the peer's handshake and serves HTTP on it.
// ServeConn serves one connection, the peer's ClientHello unread, and
// returns once it is closed: the way a gateway hands the Terminator a
// connection in the same process (gateway.Route.Serve; routing.PeeringRouter's
// Terminate field), without a listener in between.
func (t *Terminator) ServeConn(c net.Conn) {
	t.init()
	if !t.track(c, true) {
		c.Close()
		return
	}
	if closed := t.serveConn(c); closed != nil {
		<-closed
	}
}

// serveConn completes the peer's handshake and hands the connection to the
// HTTP server; it returns a channel closed once the connection is, or nil
// if it was closed at once.
func (t *Terminator) serveConn(raw net.Conn) <-chan struct{} {
	pc := &peerConn{}
	tc := tls.Server(raw, &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return t.configFor(hello.ServerName, pc)
		},
	})
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		t.logger().Info("l7: peer handshake failed", "remote", raw.RemoteAddr().String(), "error", err)
		tc.Close()
		t.track(raw, false)
		return nil
	}
	tc.SetDeadline(time.Time{})
	// The HTTP server sees a plain connection, so that it takes the peer's
	// HTTP/2 by its preface whether ALPN named it or not (a peer's Envoy
	// speaks HTTP/2 to an http2 or grpc export without ALPN).
	c := &termConn{Conn: tc, pc: pc, closed: make(chan struct{}), done: func() { t.track(raw, false) }}
	select {
	case t.conns <- c:
	case <-t.done:
		c.Close()
	}
	return c.closed
}

// configFor is the TLS configuration for a peer's connection to
// serverName: the gateway's certificate, and the client's chain checked
// against the roots of the peer serverName names.
func (t *Terminator) configFor(serverName string, pc *peerConn) (*tls.Config, error) {
	v := t.Source.View()
	name, err := sni.ParseName(serverName, v.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("l7: server name %q: %w", serverName, err)
	}
	if name.Kind != sni.KindPeeredService || !v.ExportedTo(name.Service, name.Namespace, name.Peer) {
		return nil, fmt.Errorf("l7: server name %q is not a service exported to a peer", serverName)
	}
	peer, ok := v.Peers[name.Peer]
	if !ok || len(peer.Roots) == 0 || peer.TrustDomain == "" {
		return nil, fmt.Errorf("l7: no CA roots or trust domain known for peer %q", name.Peer)
	}
	cert := t.Certs.Certificate()
	if cert == nil {
		return nil, fmt.Errorf("l7: no certificate for this gateway yet: %w", t.Certs.Err())
	}
	roots := x509.NewCertPool()
	for _, r := range peer.Roots {
		roots.AppendCertsFromPEM([]byte(r))
	}
	pc.name = name
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{"h2", "http/1.1"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := sidecar.VerifyPeerChain(raw, roots)
			if err != nil {
				return fmt.Errorf("l7: a client of peer %q: %w", name.Peer, err)
			}
			if !inTrustDomain(leaf, peer.TrustDomain) {
				return fmt.Errorf("l7: a client of peer %q names %v, outside its trust domain %s", name.Peer, leaf.URIs, peer.TrustDomain)
			}
			pc.xfcc = clientCertElement(cert, raw, leaf)
			return nil
		},
	}, nil
}

// inTrustDomain reports whether leaf carries a SPIFFE ID of trustDomain.
func inTrustDomain(leaf *x509.Certificate, trustDomain string) bool {
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" && strings.EqualFold(u.Host, trustDomain) {
			return true
		}
	}
	return false
}

// serveHTTP sends one request along the exported service's chain.
func (t *Terminator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	pc, _ := r.Context().Value(connKey{}).(*peerConn)
	if pc == nil {
		http.Error(w, "l7: no export for this connection", http.StatusInternalServerError)
		return
	}
	v := t.Source.View()
	name := pc.name
	if !v.ExportedTo(name.Service, name.Namespace, name.Peer) {
		// Unexported while the connection stayed open: as Consul's gateway
		// drops the filter chain, this connection serves no more.
		w.Header().Set("Connection", "close")
		http.Error(w, fmt.Sprintf("l7: service %q is no longer exported to peer %q", name.Service, name.Peer), http.StatusForbidden)
		return
	}
	dest := resolve.RouteHTTP(v, name.Service, name.Namespace, r, rand.Float32()*100)
	route := t.routeOf(v, dest.Service, dest.Subset, dest.Namespace)
	target, ok := firstWithEndpoints(route.Local)
	if !ok {
		msg := fmt.Sprintf("exported service %q has no healthy instance in %s for this request (its chain's target: %s)", name.Service, v.Local(), route.Target)
		if len(route.Skipped) > 0 {
			msg += "; left out, as Consul's gateway leaves them: " + strings.Join(route.Skipped, ", ")
		}
		t.logger().Info("l7: "+msg, "peer", name.Peer, "reason", routing.ReasonUnknownService, "decided", dest.Decided)
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	if dest.PrefixRewrite != "" {
		r.URL.Path = dest.PrefixRewrite + strings.TrimPrefix(r.URL.Path, dest.MatchedPrefix)
		r.URL.RawPath = ""
	}
	for _, m := range dest.RequestHeaders {
		modify(r.Header, m)
	}
	if dest.RequestTimeout > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), dest.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	protocol := v.Protocol(target.Service, target.Namespace, target.Partition)
	t.upstream.proxy(w, r, target, protocol, pc.xfcc, route.ConnectTimeout, dest.ResponseHeaders)
}

// modify applies a route's or split's header modifiers to h: Add appends,
// Set replaces, Remove deletes.
func modify(h http.Header, m *api.HTTPHeaderModifiers) {
	for k, v := range m.Add {
		h.Add(k, v)
	}
	for k, v := range m.Set {
		h.Set(k, v)
	}
	for _, k := range m.Remove {
		h.Del(k)
	}
}

// firstWithEndpoints returns the first target with an instance: the
// primary, else the first local failover target that has one; it points
// into targets, which the route cache keeps.
func firstWithEndpoints(targets []resolve.Target) (*resolve.Target, bool) {
	for i := range targets {
		if len(targets[i].Dial) > 0 {
			return &targets[i], true
		}
	}
	return nil, false
}

// routeCache holds the routes of one view's exports, by service, subset
// and namespace: *resolve.ExportedRoute, never changed once stored.
type routeCache struct {
	view   *mesh.View
	routes sync.Map
}

// routeOf returns the route to subset of service name in namespace,
// worked out once per view.
func (t *Terminator) routeOf(v *mesh.View, name, subset, namespace string) *resolve.ExportedRoute {
	rc := t.routes.Load()
	if rc == nil || rc.view != v {
		rc = &routeCache{view: v}
		t.routes.Store(rc)
	}
	key := [3]string{name, subset, namespace}
	if r, ok := rc.routes.Load(key); ok {
		return r.(*resolve.ExportedRoute)
	}
	r := resolve.RouteExportedTo(v, name, subset, namespace)
	stored, _ := rc.routes.LoadOrStore(key, &r)
	return stored.(*resolve.ExportedRoute)
}

// termConn is a terminated connection handed to the HTTP server,
// carrying its export; done runs once when the server closes it.
type termConn struct {
	net.Conn
	pc     *peerConn
	once   sync.Once
	done   func()
	closed chan struct{} // closed with the connection
}

func (c *termConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.done(); close(c.closed) })
	return err
}

// chanListener hands the HTTP server the connections sent on its
// channel.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
}

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
