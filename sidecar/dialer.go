package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/resolve"
)

// DefaultConnectTimeout bounds each TCP connect and TLS handshake, as
// Consul's 5 s connect timeout does for its sidecars.
const DefaultConnectTimeout = 5 * time.Second

// Dialer carries out resolve's plan for a Go program: it dials an upstream's
// planned addresses in order with the planned SNI, and originates mTLS with
// the program's leaf certificate, accepting only the destination's SPIFFE
// identity under the cluster's CA roots.
type Dialer struct {
	// Source gives the current view: config entries that decide the mode,
	// and where gateways and services are (consulview.Source, or a static
	// one).
	Source resolve.Source
	// Certs is the program's identity and the CA roots.
	Certs *Certs
	// Instance is the program as a planning instance: Instance.Service is
	// its service name, and Instance.Proxy.MeshGateway the mode its own
	// registration sets (the "service instance" layer).
	Instance resolve.Instance
	// Client, if set, finds what the view does not hold: the endpoints of
	// a service in another datacenter (for mode none), and a peer's CA
	// roots when the view has none for it (a static one).
	Client *api.Client
	// ConnectTimeout bounds each attempt; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
}

// Plan returns the plan for upstream up, from the current view.
func (d *Dialer) Plan(up api.Upstream) resolve.Plan { return d.plan(d.Source.View(), up) }

func (d *Dialer) plan(v *resolve.View, up api.Upstream) resolve.Plan {
	inst := d.Instance
	if inst.Proxy == nil {
		inst.Proxy = &api.AgentServiceConnectProxyConfig{}
	}
	return resolve.PlanUpstream(v, inst, up)
}

// Dial connects to upstream up along its plan and returns the established
// mTLS connection and the plan it followed. Addresses are tried in the
// plan's order; the error names each one that failed and why. A
// destination whose certificate is not the expected identity is refused.
func (d *Dialer) Dial(ctx context.Context, up api.Upstream) (*tls.Conn, resolve.Plan, error) {
	v := d.Source.View() // one picture for the plan and the trust it needs
	plan := d.plan(v, up)
	addrs := plan.Dial
	if len(addrs) == 0 && plan.Route == resolve.PathDirect && plan.Peer == "" && d.Client != nil {
		var err error
		if addrs, err = d.endpoints(ctx, plan); err != nil {
			return nil, plan, err
		}
	}
	if len(addrs) == 0 {
		return nil, plan, fmt.Errorf("sidecar: upstream %q (%s): nothing to dial: the view knows no address for route %s", plan.Upstream, where(plan), plan.Route)
	}
	cfg, err := d.tlsConfig(ctx, v, plan)
	if err != nil {
		return nil, plan, err
	}
	timeout := d.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	var errs []error
	for _, addr := range addrs {
		c, err := dialOne(ctx, addr, cfg, timeout)
		if err == nil {
			return c, plan, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, plan, fmt.Errorf("sidecar: upstream %q (%s, SNI %s): %w", plan.Upstream, where(plan), plan.SNI, problems.Join(errs...))
}

func dialOne(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

func where(p resolve.Plan) string {
	if p.Peer != "" {
		return "peer " + p.Peer
	}
	return "datacenter " + p.Datacenter
}

// tlsConfig is the client side of mTLS for plan: the leaf, the SNI, and a
// check of the server's chain and SPIFFE identity.
func (d *Dialer) tlsConfig(ctx context.Context, v *resolve.View, plan resolve.Plan) (*tls.Config, error) {
	leaf := d.Certs.Certificate()
	pool, want := d.Certs.Roots(), ExpectedIdentity(plan, d.Certs.TrustDomain())
	if plan.Peer != "" {
		var err error
		if pool, want, err = d.peerTrust(ctx, v.Peers[plan.Peer], plan); err != nil {
			return nil, err
		}
	}
	return &tls.Config{
		ServerName:   plan.SNI,
		Certificates: []tls.Certificate{*leaf},
		MinVersion:   tls.VersionTLS12,
		// The chain is checked below, against the mesh's roots and
		// identity: a mesh certificate names a SPIFFE ID, not a host.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return VerifyIdentity(raw, pool, want)
		},
	}, nil
}

// peerTrust returns a peer's roots and the identity its exported service
// presents: from the view, or, for a view without the peer's roots, from
// the peering through Client.
func (d *Dialer) peerTrust(ctx context.Context, peer resolve.Peer, plan resolve.Plan) (*x509.CertPool, Identity, error) {
	if peer.TrustDomain == "" {
		return nil, Identity{}, fmt.Errorf("sidecar: upstream %q: the view knows no trust domain for peer %q", plan.Upstream, plan.Peer)
	}
	roots := peer.Roots
	if len(roots) == 0 && d.Client != nil {
		p, _, err := d.Client.Peerings().Read(ctx, plan.Peer, nil)
		if err != nil {
			return nil, Identity{}, fmt.Errorf("sidecar: reading peering %q: %w", plan.Peer, err)
		}
		if p != nil {
			roots = p.PeerCAPems
		}
	}
	pool := x509.NewCertPool()
	for _, text := range roots {
		addPEM(pool, text)
	}
	if len(roots) == 0 {
		return nil, Identity{}, fmt.Errorf("sidecar: upstream %q: no CA roots for peer %q", plan.Upstream, plan.Peer)
	}
	return pool, Identity{TrustDomain: peer.TrustDomain, Partition: plan.Partition, Namespace: plan.Namespace, Service: target(plan)}, nil
}

// endpoints finds the healthy mesh endpoints of plan's destination in its
// datacenter, by WAN address, for a direct connection the view cannot
// plan (a service in another datacenter).
func (d *Dialer) endpoints(ctx context.Context, plan resolve.Plan) ([]string, error) {
	q := (&api.QueryOptions{Datacenter: plan.Datacenter, Namespace: nonDefault(plan.Namespace), Partition: nonDefault(plan.Partition)}).WithContext(ctx)
	entries, _, err := d.Client.Health().Connect(target(plan), "", true, q)
	if err != nil {
		return nil, fmt.Errorf("sidecar: finding %q in datacenter %s: %w", target(plan), plan.Datacenter, err)
	}
	var out []string
	for _, e := range entries {
		s := e.Service
		switch {
		case s.TaggedAddresses["wan"].Address != "" && s.TaggedAddresses["wan"].Port != 0:
			out = append(out, net.JoinHostPort(s.TaggedAddresses["wan"].Address, strconv.Itoa(s.TaggedAddresses["wan"].Port)))
		case e.Node != nil && e.Node.TaggedAddresses["wan"] != "":
			out = append(out, net.JoinHostPort(e.Node.TaggedAddresses["wan"], strconv.Itoa(s.Port)))
		case s.Address != "":
			out = append(out, net.JoinHostPort(s.Address, strconv.Itoa(s.Port)))
		case e.Node != nil:
			out = append(out, net.JoinHostPort(e.Node.Address, strconv.Itoa(s.Port)))
		}
	}
	return out, nil
}

func nonDefault(s string) string {
	if s == tenancy.Default {
		return ""
	}
	return s
}

func target(p resolve.Plan) string {
	if p.Target != "" {
		return p.Target
	}
	return p.Upstream
}

// Identity is a service's SPIFFE identity in a Consul mesh:
// spiffe://<td>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>, as Consul's
// connect.SpiffeIDService. An empty Datacenter matches any (a peer's).
type Identity struct {
	TrustDomain, Partition, Namespace, Datacenter, Service string
}

// String returns the SPIFFE ID, with "*" for an empty datacenter.
func (id Identity) String() string {
	dc := id.Datacenter
	if dc == "" {
		dc = "*"
	}
	path := ""
	if p := tenancy.OrDefault(id.Partition); p != tenancy.Default {
		path = "/ap/" + p
	}
	return "spiffe://" + id.TrustDomain + path + "/ns/" + tenancy.OrDefault(id.Namespace) + "/dc/" + dc + "/svc/" + id.Service
}

// Matches reports whether u is this identity.
func (id Identity) Matches(u *url.URL) bool {
	if u.Scheme != "spiffe" || !strings.EqualFold(u.Host, id.TrustDomain) {
		return false
	}
	prefix := "/ns/" + tenancy.OrDefault(id.Namespace) + "/dc/"
	if p := tenancy.OrDefault(id.Partition); p != tenancy.Default {
		prefix = "/ap/" + p + prefix
	}
	dc, ok := strings.CutPrefix(u.Path, prefix)
	if !ok {
		return false
	}
	dc, ok = strings.CutSuffix(dc, "/svc/"+id.Service)
	if id.Datacenter != "" {
		return ok && dc == id.Datacenter
	}
	return ok && dc != "" && !strings.Contains(dc, "/")
}

// ExpectedIdentity is the identity the destination of plan must present:
// the target service in the plan's datacenter, partition and namespace,
// under trustDomain.
func ExpectedIdentity(plan resolve.Plan, trustDomain string) Identity {
	return Identity{TrustDomain: trustDomain, Partition: plan.Partition, Namespace: plan.Namespace, Datacenter: plan.Datacenter, Service: target(plan)}
}

// ErrWrongIdentity is wrapped by VerifyIdentity's error for a certificate
// that chains to the roots but names another identity.
var ErrWrongIdentity = errors.New("sidecar: the server is not the expected service")

// VerifyIdentity checks a server's certificate chain (leaf first, DER)
// against roots, and that the leaf carries want's SPIFFE ID.
func VerifyIdentity(raw [][]byte, roots *x509.CertPool, want Identity) error {
	leaf, err := verifyChain("server", raw, roots)
	if err != nil {
		return err
	}
	for _, u := range leaf.URIs {
		if want.Matches(u) {
			return nil
		}
	}
	return fmt.Errorf("%w: want %s, the certificate names %v", ErrWrongIdentity, want, leaf.URIs)
}

// verifyChain checks that a peer's certificate chain (leaf first, DER; the
// peer is "server" or "client" in messages) leads to roots, and returns the
// leaf.
func verifyChain(peer string, raw [][]byte, roots *x509.CertPool) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("sidecar: the %s sent no certificate", peer)
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, b := range raw {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("sidecar: the %s's certificate %d: %w", peer, i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("sidecar: the %s's certificate does not chain to the mesh's roots: %w", peer, err)
	}
	return certs[0], nil
}
