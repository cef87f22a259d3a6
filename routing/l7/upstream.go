package l7

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
)

// defaultConnectTimeout bounds a dial to an instance when the resolver
// sets no ConnectTimeout, as Consul's default of 5 s does.
const defaultConnectTimeout = 5 * time.Second

// Envoy's circuit-breaker thresholds, per cluster, which Consul leaves at
// their defaults on a gateway's exported clusters
// (makeThresholdsIfNeeded(nil): their upstream config has no Limits).
const (
	MaxClusterConnections = 1024
	MaxClusterRequests    = 1024
	MaxClusterRetries     = 3
)

var (
	// errOverflow: a circuit breaker of the cluster is open.
	errOverflow = errors.New("l7: upstream overflow")
	// errNoHealthy: the cluster has no instance to send to.
	errNoHealthy = errors.New("l7: no healthy upstream")
)

// connectError is a failed dial or TLS handshake to an instance.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return e.addr + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// upstreams holds the terminator's clusters: one per chain target and
// protocol, as Consul's gateway builds one Envoy cluster per exported
// chain target.
type upstreams struct {
	t  *Terminator
	mu sync.Mutex
	m  map[string]*cluster // by protocol + " " + target SNI
}

// cluster is one target's instances, as an Envoy cluster: the load
// balancer and outlier detection over them, its circuit breakers, and its
// pool of mTLS connections.
type cluster struct {
	t        *Terminator
	sni      string
	alpn     []string // what the instances are asked to speak
	target   atomic.Pointer[resolve.Target]
	detector detector
	// In flight, against the circuit breakers.
	requests, retries, conns atomic.Int64

	transport *http.Transport
	proxy     *httputil.ReverseProxy
}

// cluster returns the cluster of target's instances, which speak
// protocol, brought up to date with target's endpoints and policy b.
func (u *upstreams) cluster(protocol string, target *resolve.Target, b balance) *cluster {
	key := protocol + " " + target.SNI
	u.mu.Lock()
	if u.m == nil {
		u.m = map[string]*cluster{}
	}
	c, ok := u.m[key]
	if !ok {
		c = u.t.newCluster(protocol, target.SNI)
		u.m[key] = c
	}
	u.mu.Unlock()
	c.target.Store(target)
	c.detector.update(target.Dial, b)
	return c
}

func (u *upstreams) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.m {
		c.transport.CloseIdleConnections()
	}
}

// newCluster builds the cluster of the target whose SNI is targetSNI,
// speaking protocol to its instances.
func (t *Terminator) newCluster(protocol, targetSNI string) *cluster {
	c := &cluster{t: t, sni: targetSNI, alpn: []string{"http/1.1"}}
	c.detector = detector{cfg: t.Outlier.withDefaults(), now: time.Now, onChange: func(h *host, ejected bool) {
		what := "l7: outlier detection brings an instance back"
		switch {
		case ejected:
			what = "l7: outlier detection ejects an instance"
		case h.left:
			what = "l7: an ejected instance left the target's endpoints"
		}
		t.logger().Info(what, "target", targetSNI, "instance", h.addr, "ejections", h.ejections)
		t.observer().Ejected(targetSNI, h.addr, ejected)
	}}
	c.transport = &http.Transport{
		DialTLSContext:      c.dial,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		Protocols:           new(http.Protocols),
	}
	if protocol == "http2" || protocol == "grpc" {
		c.transport.Protocols.SetHTTP2(true)
		c.transport.ForceAttemptHTTP2 = true
		c.alpn = []string{"h2"}
	} else {
		c.transport.Protocols.SetHTTP1(true)
	}
	c.proxy = &httputil.ReverseProxy{
		Transport: c,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = targetSNI           // an instance's address, per attempt
			pr.Out.Header.Del(sidecar.XFCCHeader) // replaced, never passed on (Envoy's SANITIZE_SET)
			if st, _ := pr.In.Context().Value(streamKey{}).(*stream); st != nil && st.xfcc != "" {
				pr.Out.Header.Set(sidecar.XFCCHeader, st.xfcc)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			st, _ := resp.Request.Context().Value(streamKey{}).(*stream)
			if st == nil {
				return nil
			}
			for _, m := range st.response {
				modify(resp.Header, m)
			}
			if st.cookie != "" {
				resp.Header.Add("Set-Cookie", st.cookie)
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				st.upgrade()
			}
			return nil
		},
		ErrorHandler: c.errorReply,
		ErrorLog:     t.http.ErrorLog,
	}
	return c
}

// RoundTrip sends one request to the cluster's instances: each attempt to
// the instance the load balancer picks among those outlier detection
// left in, retried as the route's policy says, within the circuit
// breakers. The request's body streams; a copy for retries is kept up to
// MaxReplayBytes.
func (c *cluster) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(streamKey{}).(*stream)
	if st == nil {
		return nil, errors.New("l7: a request without its stream")
	}
	if c.requests.Add(1) > MaxClusterRequests {
		c.requests.Add(-1)
		return nil, errOverflow
	}
	ctx := req.Context()
	var body io.ReadCloser
	var replay *replayBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &watchedBody{ReadCloser: req.Body, s: st, onEnd: st.requestDone}
		if st.retry.active() {
			replay = newReplayBody(body, MaxReplayBytes, nil)
		}
	} else {
		st.requestDone()
	}
	for attempt := 0; ; attempt++ {
		h := c.detector.pick(st.hash, st.hashed)
		if h == nil {
			if attempt > 0 {
				c.retries.Add(-1)
			}
			c.requests.Add(-1)
			return nil, errNoHealthy
		}
		out := req.WithContext(ctx)
		u := *req.URL
		u.Host = h.addr
		out.URL = &u
		out.Body = body
		if replay != nil {
			out.Body = replay.attempt()
		}
		h.active.Add(1)
		resp, err := c.transport.RoundTrip(out)
		if err == nil && ctx.Err() != nil {
			// An answer that came as the request ended (a timeout, the
			// client gone): net/http's transport may still return it; the
			// request is over.
			resp.Body.Close()
			resp, err = nil, context.Cause(ctx)
		}
		if attempt > 0 {
			c.retries.Add(-1)
		}
		f, failed, judged := c.judge(ctx, resp, err)
		if judged {
			c.detector.result(h, failed)
		}
		if c.retry(ctx, st, attempt, resp, f, replay) {
			if resp != nil {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
				resp.Body.Close()
			}
			h.active.Add(-1)
			st.retries++
			c.t.observer().Retried(c.sni, h.addr)
			c.t.logger().Debug("l7: retrying", "target", c.sni, "instance", h.addr, "attempt", attempt+1, "policy", st.retry.String())
			select {
			case <-time.After(retryBackoff(attempt + 1)):
				continue
			case <-ctx.Done():
				c.retries.Add(-1)
				c.requests.Add(-1)
				return nil, context.Cause(ctx)
			}
		}
		if err != nil {
			h.active.Add(-1)
			c.requests.Add(-1)
			st.failure = f
			return nil, err
		}
		release := func() { h.active.Add(-1); c.requests.Add(-1) }
		if w, ok := resp.Body.(io.Writer); ok && resp.StatusCode == http.StatusSwitchingProtocols {
			resp.Body = &watchedTunnel{watchedBody: watchedBody{ReadCloser: resp.Body, s: st, onEnd: release}, w: w}
		} else {
			resp.Body = &watchedBody{ReadCloser: resp.Body, s: st, onEnd: release}
		}
		return resp, nil
	}
}

// judge says what an attempt's outcome means for outlier detection: a 5xx
// answer, a failed connect, a reset or the route timeout is a failure of
// the instance (Envoy counts local-origin errors as 5xx unless told to
// split them); judged is false for outcomes that say nothing of it (the
// client gone, a circuit breaker).
func (c *cluster) judge(ctx context.Context, resp *http.Response, err error) (f failure, failed, judged bool) {
	if err == nil {
		return noFailure, resp.StatusCode >= 500, true
	}
	var ce *connectError
	switch {
	case errors.Is(err, errOverflow):
		return noFailure, false, false
	case errors.As(err, &ce):
		return connectFailure, true, true
	case ctx.Err() != nil:
		return resetFailure, context.Cause(ctx) == errRouteTimeout, context.Cause(ctx) == errRouteTimeout
	case strings.Contains(err.Error(), "REFUSED_STREAM"):
		// net/http's HTTP/2 errors are not exported; it has retried a
		// refused stream itself, up to six times, before this.
		return refusedStream, true, true
	}
	return resetFailure, true, true
}

// retry reports whether attempt's outcome is retried: the route's policy
// says so, retries are left, the body can be sent again, the cluster's
// retry breaker has room, and the request is still wanted.
func (c *cluster) retry(ctx context.Context, st *stream, attempt int, resp *http.Response, f failure, replay *replayBody) bool {
	p := st.retry
	if !p.active() || attempt >= p.numRetries || ctx.Err() != nil {
		return false
	}
	if resp != nil {
		if resp.StatusCode == http.StatusSwitchingProtocols || !p.retryResponse(resp) {
			return false
		}
	} else if !p.retryFailure(f) {
		return false
	}
	if replay != nil && !replay.replayable() {
		c.t.logger().Debug("l7: not retried: the request body passed the replay bound", "target", c.sni, "bound", MaxReplayBytes)
		return false
	}
	if c.retries.Add(1) > MaxClusterRetries {
		c.retries.Add(-1)
		c.t.logger().Debug("l7: not retried: the cluster's retry breaker is open", "target", c.sni, "max_retries", MaxClusterRetries)
		return false
	}
	return true
}

// errorReply answers a request that got no answer from an instance, as
// Envoy's router answers it.
func (c *cluster) errorReply(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(streamKey{}).(*stream)
	if st == nil {
		localReply(w, r, http.StatusBadGateway, "l7: "+err.Error(), nil)
		return
	}
	cause := context.Cause(r.Context())
	var reason, body string
	code := http.StatusServiceUnavailable
	var header http.Header
	switch {
	case cause == errRouteTimeout:
		reason, code, body = ReasonTimeout, http.StatusGatewayTimeout, bodyRequestTimeout
	case cause == errIdleTimeout:
		reason, code, body = ReasonIdleTimeout, http.StatusRequestTimeout, bodyStreamTimeout
	case r.Context().Err() != nil:
		c.t.logger().Debug("l7: the peer's client went away", "target", c.sni, "error", err, "cause", context.Cause(r.Context()))
		return
	case errors.Is(err, errOverflow):
		reason, body, header = ReasonOverflow, bodyOverflow, http.Header{"X-Envoy-Overloaded": {"true"}}
	case errors.Is(err, errNoHealthy):
		reason, body = ReasonNoHealthyUpstream, bodyNoHealthyUpstream
	default:
		reason = ReasonReset
		what := "connection termination"
		switch st.failure {
		case connectFailure:
			reason, what = ReasonConnectFailure, "connection failure, transport failure reason: "+err.Error()
		case refusedStream:
			what = "remote refused stream reset"
		}
		lead := "reset reason: "
		if st.retries > 0 {
			lead = "retried and the latest reset reason: "
		}
		body = bodyResetBefore + lead + what
	}
	c.t.refuse(st, reason)
	c.t.logger().Info("l7: request to an instance failed", "target", c.sni, "reason", reason, "retries", st.retries, "error", err)
	localReply(w, r, code, body, header)
}

// dial opens mTLS to the instance at addr: the gateway's certificate, the
// cluster's roots, the target's SNI and identity, and the mesh entry's
// TLS.Outgoing; within the resolver's connect timeout and the cluster's
// connection breaker.
func (c *cluster) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	if c.conns.Add(1) > MaxClusterConnections {
		c.conns.Add(-1)
		return nil, errOverflow
	}
	target := c.target.Load()
	timeout := defaultConnectTimeout
	if st, _ := ctx.Value(streamKey{}).(*stream); st != nil && st.connectTimeout > 0 {
		timeout = st.connectTimeout
	}
	t := c.t
	want := sidecar.TargetIdentity(*target, t.Certs.TrustDomain())
	cfg := &tls.Config{
		ServerName: target.SNI,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := t.Certs.Certificate(); c != nil {
				return c, nil
			}
			return nil, errors.New("l7: no certificate for this gateway")
		},
		InsecureSkipVerify: true, // the SPIFFE identity is verified instead of a DNS name
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return sidecar.VerifyIdentity(raw, t.Certs.Roots(), want)
		},
		NextProtos: c.alpn,
	}
	t.cache(t.Source.View()).outgoing.apply(cfg)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		c.conns.Add(-1)
		return nil, &connectError{addr, err}
	}
	tc := tls.Client(&countedConn{Conn: raw, release: func() { c.conns.Add(-1) }}, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, &connectError{addr, err}
	}
	return tc, nil
}

// countedConn gives its slot in the connection breaker back when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// clientCertElement is the XFCC element Consul's gateway sets for a peer's
// client: By the gateway's own SPIFFE ID, the client certificate's SHA-256
// Hash, Cert and Chain URL-encoded PEM, its Subject, URI and DNS names,
// in Envoy's order.
func clientCertElement(own *tls.Certificate, raw [][]byte, leaf *x509.Certificate) string {
	var b strings.Builder
	if by := ownURI(own); by != "" {
		b.WriteString("By=" + by + ";")
	}
	sum := sha256.Sum256(raw[0])
	b.WriteString("Hash=" + hex.EncodeToString(sum[:]))
	b.WriteString(`;Cert="` + escapePEM(raw[:1]) + `"`)
	b.WriteString(`;Chain="` + escapePEM(raw) + `"`)
	b.WriteString(`;Subject="` + leaf.Subject.String() + `"`)
	for _, u := range leaf.URIs {
		b.WriteString(";URI=" + u.String())
	}
	for _, d := range leaf.DNSNames {
		b.WriteString(";DNS=" + d)
	}
	return b.String()
}

// ownURI is the SPIFFE ID of the gateway's certificate.
func ownURI(c *tls.Certificate) string {
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return ""
		}
	}
	if len(leaf.URIs) == 0 {
		return ""
	}
	return leaf.URIs[0].String()
}

// escapePEM is certs as PEM, percent-encoded as Envoy encodes XFCC values.
func escapePEM(certs [][]byte) string {
	var b strings.Builder
	for _, der := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return strings.ReplaceAll(url.QueryEscape(b.String()), "+", "%20")
}

// describe names a cluster for messages.
func (c *cluster) String() string { return fmt.Sprintf("cluster %s", c.sni) }
