package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/fipsmode"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
)

// DefaultConnectTimeout bounds each TCP connect and TLS handshake, as
// Consul's 5 s connect timeout does for its sidecars.
const DefaultConnectTimeout = 5 * time.Second

// Dialer carries out resolve's plan for a Go program: it dials an upstream's
// planned addresses with the planned SNI, and originates mTLS with the
// program's leaf certificate, accepting only the destination's SPIFFE
// identity under the cluster's CA roots. It fails over along the plan's
// discovery chain (a service-resolver's Failover, a sameness group) as
// Envoy's aggregate cluster does under Consul, and further: see Dial.
//
// Within a target it spreads connections over the addresses (the
// instances, or the gateways the route crosses) as Envoy's sidecar does
// under Consul: by the policy of the chain's service-resolver
// LoadBalancer (round_robin, Envoy's default, when it sets none;
// least_request on the connections this Dialer has open on each address;
// random; ring_hash and maglev pick at random, a TCP connection carrying
// nothing to hash) and the instances' weights. An address that fails to
// connect is ejected, as the gateway's outlier ejection does: tried after
// the others until a probe (a TCP connect closed at once, 250 ms after
// the failure, then with a doubling wait up to EjectFor) or a dial
// connects to it. Round robin is the default rather than least
// connections so that a Go sidecar spreads as an Envoy sidecar beside it
// does. A Dialer must not be copied after first use; Close stops its
// probes.
type Dialer struct {
	// Source gives the current view: config entries that decide the mode,
	// and where gateways and services are (consulview.Source, or a static
	// one). A mesh.Follower is asked to follow the services of other
	// datacenters that a plan needs, so that their health is known.
	Source mesh.Source
	// Certs is the program's identity and the CA roots.
	Certs *Certs
	// Instance is the program as a planning instance: Instance.Service is
	// its service name, and Instance.Proxy.MeshGateway the mode its own
	// registration sets (the "service instance" layer).
	Instance mesh.Instance
	// Client, if set, finds a peer's CA roots when the view has none for it
	// (a static one).
	Client *api.Client
	// ConnectTimeout bounds each attempt; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Balance, when its Policy is set, spreads every target's connections
	// by it, over the plan's (the chain's service-resolver LoadBalancer).
	Balance resolve.Balance
	// EjectFor bounds the wait between two probes of an address that
	// failed to connect; zero means 30 s, as the gateway's.
	EjectFor time.Duration

	spread spread
}

// Plan returns the plan for upstream up, from the current view.
func (d *Dialer) Plan(up api.Upstream) resolve.Plan { return d.plan(d.Source.View(), up) }

func (d *Dialer) plan(v *mesh.View, up api.Upstream) resolve.Plan {
	inst := d.Instance
	if inst.Proxy == nil {
		inst.Proxy = &api.AgentServiceConnectProxyConfig{}
	}
	return resolve.PlanUpstream(v, inst, up)
}

// Dial connects to upstream up along its plan and returns the established
// mTLS connection and the plan it followed.
//
// The plan's targets (plan.Chain(): the primary, then each failover target)
// are tried in order, those with healthy instances first: the first such
// target is used, and the next when every address of one fails to connect
// or to hand-shake (Envoy stays on a target until outlier detection ejects
// its hosts). Targets with no healthy instance known are tried last, in
// order, as Envoy routes to unhealthy hosts when none is healthy. A source
// that follows other datacenters on demand (mesh.Follower) is asked to
// follow every target there first. The returned plan's Served is the index
// in Chain() of the target that carried the connection, and PassedOver says
// why each target before it was not used. The error names every target and
// address that failed and why. A destination whose certificate is not the
// target's identity is refused.
func (d *Dialer) Dial(ctx context.Context, up api.Upstream) (*tls.Conn, resolve.Plan, error) {
	v := d.Source.View() // one picture for the plan and the trust it needs
	plan := d.plan(v, up)
	if f, ok := d.Source.(mesh.Follower); ok {
		if keys := remoteTargets(v, plan); len(keys) > 0 {
			// A datacenter that does not answer leaves its targets without
			// health: they are tried last.
			_ = f.Follow(ctx, keys...)
			v = d.Source.View()
			plan = d.plan(v, up)
		}
	}
	timeout := d.connectTimeout()
	chain := plan.Chain()
	why := make([]string, len(chain))
	var errs []error
	for _, i := range tryOrder(chain) {
		t := chain[i]
		c, err := d.dialTarget(ctx, v, t, timeout)
		if err == nil {
			plan.Served = i
			for j := range chain[:i] {
				reason := why[j]
				if reason == "" {
					reason = "no healthy instances"
				}
				plan.PassedOver = append(plan.PassedOver, chain[j].String()+": "+reason)
			}
			return c, plan, nil
		}
		why[i] = err.Error()
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, plan, fmt.Errorf("sidecar: upstream %q: %w", plan.Upstream, problems.Join(errs...))
}

// tryOrder returns the indexes of chain's targets in the order Dial tries
// them: those with healthy instances, then the others, each in chain order.
func tryOrder(chain []resolve.Target) []int {
	order := make([]int, 0, len(chain))
	for i, t := range chain {
		if t.Healthy > 0 {
			order = append(order, i)
		}
	}
	for i, t := range chain {
		if t.Healthy == 0 {
			order = append(order, i)
		}
	}
	return order
}

// remoteTargets returns the services of other datacenters that plan's
// targets are.
func remoteTargets(v *mesh.View, plan resolve.Plan) []mesh.ServiceKey {
	var keys []mesh.ServiceKey
	for _, t := range plan.Chain() {
		if t.Peer == "" && t.Datacenter != v.Datacenter {
			keys = append(keys, mesh.ServiceKey{Name: t.Service, Namespace: t.Namespace, Partition: t.Partition, Datacenter: t.Datacenter})
		}
	}
	return keys
}

// dialTarget tries each of a target's addresses in order.
func (d *Dialer) dialTarget(ctx context.Context, v *mesh.View, t resolve.Target, timeout time.Duration) (*tls.Conn, error) {
	if len(t.Dial) == 0 {
		return nil, fmt.Errorf("nothing to dial: the view knows no address for route %s", t.Route)
	}
	cfg, err := d.tlsConfig(ctx, v, t)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, addr := range d.order(t) {
		c, err := d.dialOne(ctx, addr, cfg, timeout)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s (SNI %s): %w", addr, t.SNI, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, problems.Join(errs...)
}

// connectTimeout is ConnectTimeout, or DefaultConnectTimeout.
func (d *Dialer) connectTimeout() time.Duration {
	if d.ConnectTimeout > 0 {
		return d.ConnectTimeout
	}
	return DefaultConnectTimeout
}

// dialOne connects to addr and hand-shakes; a connect that fails ejects
// addr (the handshake's failure does not: the address answers).
func (d *Dialer) dialOne(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			d.failed(addr)
		}
		return nil, err
	}
	raw = d.connected(addr, raw)
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fipsmode.Explain(err)
	}
	return c, nil
}

// tlsConfig is the client side of mTLS for a target: the leaf, the SNI,
// and a check of the server's chain and SPIFFE identity.
func (d *Dialer) tlsConfig(ctx context.Context, v *mesh.View, t resolve.Target) (*tls.Config, error) {
	leaf := d.Certs.Certificate()
	pool, want := d.Certs.Roots(), TargetIdentity(t, d.Certs.TrustDomain())
	var listed []string // exact identities a peer lists for its export
	if t.Peer != "" {
		var err error
		if pool, want, err = d.peerTrust(ctx, v.Peers[t.Peer], t); err != nil {
			return nil, err
		}
		if im, ok := v.Peers[t.Peer].Import(t.Service, t.Namespace); ok {
			listed = im.SpiffeIDs
		}
	}
	return &tls.Config{
		ServerName:   t.SNI,
		Certificates: []tls.Certificate{*leaf},
		MinVersion:   tls.VersionTLS12,
		// The chain is checked below, against the mesh's roots and
		// identity: a mesh certificate names a SPIFFE ID, not a host.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyIdentity(raw, pool, want, listed)
		},
	}, nil
}

// peerTrust returns a peer's roots and the identity its exported service
// presents: from the view, or, for a view without the peer's roots, from
// the peering through Client.
func (d *Dialer) peerTrust(ctx context.Context, peer mesh.Peer, t resolve.Target) (*x509.CertPool, Identity, error) {
	if peer.TrustDomain == "" {
		return nil, Identity{}, fmt.Errorf("the view knows no trust domain for peer %q", t.Peer)
	}
	roots := peer.Roots
	if len(roots) == 0 && d.Client != nil {
		p, _, err := d.Client.Peerings().Read(ctx, t.Peer, nil)
		if err != nil {
			return nil, Identity{}, fmt.Errorf("reading peering %q: %w", t.Peer, err)
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
		return nil, Identity{}, fmt.Errorf("no CA roots for peer %q", t.Peer)
	}
	return pool, Identity{TrustDomain: peer.TrustDomain, Partition: t.Partition, Namespace: t.Namespace, Service: t.Service}, nil
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

// ExpectedIdentity is the identity the destination of plan's primary target
// must present: the target service in the plan's datacenter, partition and
// namespace, under trustDomain.
func ExpectedIdentity(plan resolve.Plan, trustDomain string) Identity {
	return TargetIdentity(plan.Chain()[0], trustDomain)
}

// TargetIdentity is the identity a discovery chain target must present:
// its service in its datacenter, partition and namespace, under
// trustDomain (for a peer's target, the peer's trust domain and any
// datacenter).
func TargetIdentity(t resolve.Target, trustDomain string) Identity {
	return Identity{TrustDomain: trustDomain, Partition: t.Partition, Namespace: t.Namespace, Datacenter: t.Datacenter, Service: t.Service}
}

// ErrWrongIdentity is wrapped by VerifyIdentity's error for a certificate
// that chains to the roots but names another identity.
var ErrWrongIdentity = errors.New("sidecar: the server is not the expected service")

// VerifyIdentity checks a server's certificate chain (leaf first, DER)
// against roots, and that the leaf carries want's SPIFFE ID.
func VerifyIdentity(raw [][]byte, roots *x509.CertPool, want Identity) error {
	return verifyIdentity(raw, roots, want, nil)
}

// verifyIdentity is VerifyIdentity, also accepting a leaf that carries
// exactly one of the SPIFFE IDs listed: those a peer lists for its export
// (the service's and its mesh gateway's), when there is a list.
func verifyIdentity(raw [][]byte, roots *x509.CertPool, want Identity, listed []string) error {
	leaf, err := verifyChain("server", raw, roots)
	if err != nil {
		return err
	}
	for _, u := range leaf.URIs {
		if want.Matches(u) || slices.Contains(listed, u.String()) {
			return nil
		}
	}
	if len(listed) > 0 {
		return fmt.Errorf("%w: want %s or one of %v, the certificate names %v", ErrWrongIdentity, want, listed, leaf.URIs)
	}
	return fmt.Errorf("%w: want %s, the certificate names %v", ErrWrongIdentity, want, leaf.URIs)
}

// VerifyPeerChain checks that a client's certificate chain (leaf first,
// DER) leads to roots, and returns its leaf: the check a server makes of
// a client of the mesh or of a peer (with that peer's roots), before it
// looks at the client's identity.
func VerifyPeerChain(raw [][]byte, roots *x509.CertPool) (*x509.Certificate, error) {
	return verifyChain("client", raw, roots)
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
