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
// (and so gRPC) from net/http, and with what Consul's gateway configures
// in Envoy around it: the routes' retries and timeouts, the resolvers'
// load balancing and hash policies, outlier detection and circuit
// breakers on each target, the mesh entry's TLS settings, the HTTP
// connection manager's header bound, websocket-only upgrades and its
// defence against HTTP/2 reset floods (docs/peering.md lists each, with
// the Consul function it mirrors).
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/fipsmode"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sni"
)

// handshakeTimeout bounds a peer's TLS handshake.
const handshakeTimeout = 10 * time.Second

// DefaultMaxRequestHeadersKB is Envoy's max_request_headers_kb, which
// Consul leaves unset unless the gateway's Proxy.Config names it: a
// request whose headers are larger is answered 431.
const DefaultMaxRequestHeadersKB = 60

// Terminator serves a peer's connections to exported L7 services. Source
// and Certs are required; the zero value of the rest works, and gives
// Envoy's defaults where Consul's gateway leaves them.
type Terminator struct {
	// Source provides the view: what is exported to which peer, with what
	// protocol and discovery chain, the instances, each peer's CA roots and
	// trust domain, and the mesh entry's TLS settings. The terminator reads
	// it per handshake and per request, so changes apply at once.
	Source mesh.Source
	// Certs is the gateway's own identity and the cluster's roots
	// (gatewaycert.Watch).
	Certs *sidecar.Certs
	// Logger receives a line per connection that fails its handshake, per
	// request refused or failed, per ejection, and one warning per view
	// naming the fields the terminator cannot apply; nil means
	// slog.Default().
	Logger *slog.Logger
	// Observer hears each refusal with its reason, each retry and each
	// ejection; nil means none.
	Observer Observer
	// MaxRequestHeadersKB bounds a request's headers (names and values,
	// the request line's or pseudo-headers' included), as the gateway's
	// Proxy.Config max_request_headers_kb does for Consul's Envoy; zero
	// means DefaultMaxRequestHeadersKB. It is read once, when the
	// terminator serves its first connection.
	MaxRequestHeadersKB int
	// RouteTimeout is the route timeout where a route sets none; zero means
	// DefaultRouteTimeout, Envoy's. Only tests need another.
	RouteTimeout time.Duration
	// Outlier is the outlier detection of every target's instances; its
	// zero value is Envoy's defaults, which Consul's exported clusters
	// keep. Only tests need another.
	Outlier OutlierDetection

	http     http.Server
	conns    chan net.Conn // to http
	done     chan struct{} // closed by Close
	initOnce sync.Once
	upstream upstreams
	views    atomic.Pointer[viewCache]
	warned   atomic.Pointer[string]

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
			MaxHeaderBytes:    t.maxHeaderBytes(),
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

// maxHeaderBytes is the request header bound in bytes.
func (t *Terminator) maxHeaderBytes() int {
	if t.MaxRequestHeadersKB > 0 {
		return t.MaxRequestHeadersKB << 10
	}
	return DefaultMaxRequestHeadersKB << 10
}

func (t *Terminator) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.Default()
}

func (t *Terminator) observer() Observer {
	if t.Observer != nil {
		return t.Observer
	}
	return nopObserver{}
}

// refuse counts a refusal of st's request (st may be nil), once.
func (t *Terminator) refuse(st *stream, reason string) {
	if st != nil && !st.reported.CompareAndSwap(false, true) {
		return
	}
	t.observer().Refused(reason)
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
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return t.configFor(hello.ServerName, pc)
		},
	})
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		t.logger().Info("l7: peer handshake failed", "remote", raw.RemoteAddr().String(), "reason", ReasonHandshake, "error", fipsmode.Explain(err))
		t.refuse(nil, ReasonHandshake)
		tc.Close()
		t.track(raw, false)
		return nil
	}
	tc.SetDeadline(time.Time{})
	// The HTTP server sees a plain connection, so that it takes the peer's
	// HTTP/2 by its preface whether ALPN named it or not (a peer's Envoy
	// speaks HTTP/2 to an http2 or grpc export without ALPN).
	c := newTermConn(t, tc, raw, pc)
	select {
	case t.conns <- c:
	case <-t.done:
		c.Close()
	}
	return c.closed
}

// configFor is the TLS configuration for a peer's connection to
// serverName: the gateway's certificate, the mesh entry's TLS.Incoming,
// and the client's chain checked against the roots of the peer serverName
// names.
func (t *Terminator) configFor(serverName string, pc *peerConn) (*tls.Config, error) {
	v := t.Source.View()
	// Lower-cased, as the gateway's ClientHello reader reads every name.
	name, err := sni.ParseName(strings.ToLower(serverName), v.TrustDomain)
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
	cfg := &tls.Config{
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
	}
	t.cache(v).incoming.apply(cfg)
	return cfg, nil
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

// serveHTTP sends one request along the exported service's chain, after
// the HTTP connection manager's checks.
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
		t.refuse(nil, ReasonNotExported)
		w.Header().Set("Connection", "close")
		http.Error(w, fmt.Sprintf("l7: service %q is no longer exported to peer %q", name.Service, name.Peer), http.StatusForbidden)
		return
	}
	if !t.admit(w, r, name) {
		return
	}
	vc := t.cache(v)
	dest := resolve.RouteHTTP(v, name.Service, name.Namespace, r, rand.Float32()*100)
	route := vc.route(v, dest.Service, dest.Subset, dest.Namespace)
	target, ok := firstWithEndpoints(route.Local)
	if !ok {
		msg := fmt.Sprintf("exported service %q has no healthy instance in %s for this request (its chain's target: %s)", name.Service, v.Local(), route.Target)
		if len(route.Skipped) > 0 {
			msg += "; left out, as Consul's gateway leaves them: " + strings.Join(route.Skipped, ", ")
		}
		t.logger().Info("l7: "+msg, "peer", name.Peer, "reason", ReasonNoHealthyUpstream, "decided", dest.Decided)
		t.refuse(nil, ReasonNoHealthyUpstream)
		localReply(w, r, http.StatusServiceUnavailable, bodyNoHealthyUpstream, nil)
		return
	}
	if dest.PrefixRewrite != "" {
		r.URL.Path = dest.PrefixRewrite + strings.TrimPrefix(r.URL.Path, dest.MatchedPrefix)
		r.URL.RawPath = ""
	}
	for _, m := range dest.RequestHeaders {
		modify(r.Header, m)
	}
	b := vc.balance(v, target)
	c := t.upstream.cluster(v.Protocol(target.Service, target.Namespace, target.Partition), target, b)

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	st := &stream{xfcc: pc.xfcc, response: dest.ResponseHeaders, retry: vc.retry(dest.Route), cancel: cancel,
		connectTimeout: route.ConnectTimeout, routeTimeout: t.routeTimeout(dest), idleTimeout: idleTimeout(dest.Route)}
	if b.hashBased() {
		t.hashRequest(r, dest.HashPolicies, st)
	}
	st.start()
	defer func() {
		st.finish()
		// A timeout once the answer had begun resets the stream: count it.
		switch context.Cause(ctx) {
		case errRouteTimeout:
			t.refuse(st, ReasonTimeout)
		case errIdleTimeout:
			t.refuse(st, ReasonIdleTimeout)
		}
	}()
	c.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, streamKey{}, st)))
}

// admit applies the HTTP connection manager's checks to a request before
// it is routed, answering it itself when they fail. It reports whether
// the request goes on.
func (t *Terminator) admit(w http.ResponseWriter, r *http.Request, name sni.Name) bool {
	refuse := func(reason string, code int, detail string) bool {
		t.logger().Info("l7: request refused", "peer", name.Peer, "service", name.Service, "reason", reason, "detail", detail)
		t.refuse(nil, reason)
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		localReply(w, r, code, "", nil)
		return false
	}
	if r.Method == http.MethodConnect {
		// Consul's routes match paths from "/", which a CONNECT has none
		// of, and set no connect_matcher: Envoy answers 404.
		return refuse(ReasonConnect, http.StatusNotFound, "CONNECT "+r.Host)
	}
	if upgrade := upgradeOf(r.Header); upgrade != "" {
		switch {
		case strings.EqualFold(upgrade, "websocket"):
			// The one upgrade Consul enables (UpgradeConfigs).
		case strings.EqualFold(upgrade, "h2c"):
			// Envoy's HTTP/1 codec drops an h2c upgrade and serves the
			// request as HTTP/1.1.
			dropH2CUpgrade(r.Header)
			t.logger().Info("l7: h2c upgrade dropped; the request is served as HTTP/1.1", "peer", name.Peer, "service", name.Service, "reason", ReasonH2CUpgrade)
			t.refuse(nil, ReasonH2CUpgrade)
		default:
			return refuse(ReasonUpgrade, http.StatusForbidden, "Upgrade: "+upgrade)
		}
	}
	if size, limit := headerBytes(r), t.maxHeaderBytes(); size > limit {
		return refuse(ReasonHeadersTooLarge, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("%d bytes of headers, over %d", size, limit))
	}
	return true
}

// upgradeOf returns the protocol h asks to upgrade to, as Envoy's
// Utility::isUpgrade sees it: an Upgrade header and "upgrade" among the
// Connection header's tokens; "" when none.
func upgradeOf(h http.Header) string {
	up := h.Get("Upgrade")
	if up == "" {
		return ""
	}
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return up
			}
		}
	}
	return ""
}

// dropH2CUpgrade removes an h2c upgrade from h, as Envoy's HTTP/1 codec:
// the Upgrade and HTTP2-Settings headers, and their Connection tokens.
func dropH2CUpgrade(h http.Header) {
	h.Del("Upgrade")
	h.Del("Http2-Settings")
	var keep []string
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
				keep = append(keep, tok)
			}
		}
	}
	h.Del("Connection")
	if len(keep) > 0 {
		h.Set("Connection", strings.Join(keep, ", "))
	}
}

// headerBytes is the size of r's headers as Envoy counts a header map:
// names and values, the method, path and authority included.
func headerBytes(r *http.Request) int {
	n := len(":method") + len(r.Method) + len(":path") + len(r.RequestURI) + len(":authority") + len(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// routeTimeout is the route timeout of a request to dest: the route's,
// or the resolver's where the chain starts at it; else Envoy's default;
// none when negative.
func (t *Terminator) routeTimeout(dest resolve.HTTPDestination) time.Duration {
	switch d := dest.RequestTimeout; {
	case d > 0:
		return d
	case d < 0:
		return 0
	case t.RouteTimeout > 0:
		return t.RouteTimeout
	}
	return DefaultRouteTimeout
}

// idleTimeout is the stream idle timeout of a request on route: the
// route's IdleTimeout, else the connection manager's default; none when
// negative.
func idleTimeout(route *api.ServiceRouteDestination) time.Duration {
	if route != nil {
		switch d := route.IdleTimeout; {
		case d > 0:
			return d
		case d < 0:
			return 0
		}
	}
	return DefaultStreamIdleTimeout
}

// hashRequest computes r's hash by policies into st, generating the
// cookie a cookie policy with a TTL (or Session) asks for when the
// request has none, as Envoy's router does.
func (t *Terminator) hashRequest(r *http.Request, policies []api.HashPolicy, st *stream) {
	st.hash, st.hashed = requestHash(policies, func(p api.HashPolicy) (string, bool) {
		if p.SourceIP {
			host, _, err := net.SplitHostPort(r.RemoteAddr)
			return host, err == nil
		}
		switch p.Field {
		case hashHeader:
			vs := r.Header.Values(p.FieldValue)
			return strings.Join(vs, ","), len(vs) > 0
		case hashQueryParam:
			q := r.URL.Query()
			return q.Get(p.FieldValue), q.Has(p.FieldValue)
		case hashCookie:
			if c, err := r.Cookie(p.FieldValue); err == nil && c.Value != "" {
				return c.Value, true
			}
			cc := p.CookieConfig
			if cc == nil || (!cc.Session && cc.TTL <= 0) {
				return "", false
			}
			local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			value := generatedCookie(r.RemoteAddr, local)
			st.cookie = setCookie(p.FieldValue, value, cc)
			return value, true
		}
		return "", false
	})
}

// generatedCookie is the value Envoy gives a hash cookie it sets: the
// xxHash64 of the connection's two addresses, in hex.
func generatedCookie(remote string, local net.Addr) string {
	l := ""
	if local != nil {
		l = local.String()
	}
	return fmt.Sprintf("%016x", hashString(remote+l))
}

// setCookie is Envoy's Set-Cookie for a generated hash cookie: the value
// quoted, Max-Age from the TTL (none for a session cookie), Path, HttpOnly.
func setCookie(name, value string, cc *api.CookieConfig) string {
	s := name + `="` + value + `"`
	if !cc.Session && cc.TTL > 0 {
		s += "; Max-Age=" + strconv.FormatInt(int64(cc.TTL/time.Second), 10)
	}
	if cc.Path != "" {
		s += "; Path=" + cc.Path
	}
	return s + "; HttpOnly"
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
