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
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
)

// defaultConnectTimeout bounds a dial to an instance when the resolver
// sets no ConnectTimeout, as Consul's default of 5 s does.
const defaultConnectTimeout = 5 * time.Second

// upstreams holds one transport per target and protocol, so connections
// to an instance are reused across the peer's requests.
type upstreams struct {
	t  *Terminator
	mu sync.Mutex
	m  map[string]*upstream // by protocol + " " + target SNI
}

// upstream is the way to one target's instances.
type upstream struct {
	target atomic.Pointer[resolve.Target] // the latest, with its endpoints
	alpn   []string                       // what the instances are asked to speak
	turn   atomic.Uint32
	proxy  *httputil.ReverseProxy
	idle   func()
}

// proxy sends r to target's instances, which speak protocol, with the
// client's XFCC element.
func (u *upstreams) proxy(w http.ResponseWriter, r *http.Request, target *resolve.Target, protocol, xfcc string, connectTimeout time.Duration, response []*api.HTTPHeaderModifiers) {
	key := protocol + " " + target.SNI
	u.mu.Lock()
	if u.m == nil {
		u.m = map[string]*upstream{}
	}
	up, ok := u.m[key]
	if !ok {
		up = u.t.newUpstream(protocol, target.SNI)
		u.m[key] = up
	}
	u.mu.Unlock()
	up.target.Store(target)
	if connectTimeout <= 0 {
		connectTimeout = defaultConnectTimeout
	}
	ctx := context.WithValue(r.Context(), xfccKey{}, xfcc)
	ctx = context.WithValue(ctx, timeoutKey{}, connectTimeout)
	if len(response) > 0 {
		ctx = context.WithValue(ctx, responseKey{}, response)
	}
	up.proxy.ServeHTTP(w, r.WithContext(ctx))
}

func (u *upstreams) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, up := range u.m {
		up.idle()
	}
}

type xfccKey struct{}
type timeoutKey struct{}
type responseKey struct{}

// newUpstream builds the proxy to the instances of the target whose SNI is
// targetSNI, speaking protocol to them.
func (t *Terminator) newUpstream(protocol, targetSNI string) *upstream {
	up := &upstream{alpn: []string{"http/1.1"}}
	tr := &http.Transport{
		DialTLSContext:      func(ctx context.Context, _, _ string) (net.Conn, error) { return t.dialInstance(ctx, up) },
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		Protocols:           new(http.Protocols),
	}
	if protocol == "http2" || protocol == "grpc" {
		tr.Protocols.SetHTTP2(true)
		tr.ForceAttemptHTTP2 = true
		up.alpn = []string{"h2"}
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	up.idle = tr.CloseIdleConnections
	up.proxy = &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = targetSNI
			pr.Out.Header.Del(sidecar.XFCCHeader) // replaced, never passed on (Envoy's SANITIZE_SET)
			if x, _ := pr.In.Context().Value(xfccKey{}).(string); x != "" {
				pr.Out.Header.Set(sidecar.XFCCHeader, x)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			mods, _ := resp.Request.Context().Value(responseKey{}).([]*api.HTTPHeaderModifiers)
			for _, m := range mods {
				modify(resp.Header, m)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t.logger().Info("l7: request to an instance failed", "target", targetSNI, "error", err)
			http.Error(w, "l7: no instance of "+targetSNI+" answered: "+err.Error(), http.StatusBadGateway)
		},
	}
	return up
}

// dialInstance opens mTLS to one of up's target's instances, in turn,
// trying the others when one fails: the gateway's certificate, the
// cluster's roots, the target's SNI and identity.
func (t *Terminator) dialInstance(ctx context.Context, up *upstream) (net.Conn, error) {
	target := up.target.Load()
	if target == nil || len(target.Dial) == 0 {
		return nil, errors.New("no instance")
	}
	timeout, _ := ctx.Value(timeoutKey{}).(time.Duration)
	if timeout <= 0 {
		timeout = defaultConnectTimeout
	}
	want := sidecar.TargetIdentity(*target, t.Certs.TrustDomain())
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
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
		NextProtos: up.alpn,
	}
	var errs []error
	n := len(target.Dial)
	start := int(up.turn.Add(1))
	for i := range n {
		addr := target.Dial[(start+i)%n]
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
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
