package sni

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/meshgate/meshgate/internal/tenancy"
)

// The keyword labels Consul puts between a name's routing parts and its trust
// domain (agent/connect/sni.go).
const (
	labelInternal   = "internal"
	labelInternalV1 = "internal-v1"
	labelExternal   = "external"
	labelQuery      = "query"
	labelPeering    = "peering"
	labelServer     = "server"

	// DefaultNamespace and DefaultPartition are what Consul writes for an
	// empty namespace or partition.
	DefaultNamespace = tenancy.Default
	// DefaultPartition is the partition Consul uses when none is named.
	DefaultPartition = tenancy.Default
)

// Errors returned by ParseName. Both are wrapped with the offending name.
var (
	// ErrForeignTrustDomain means the name does not end in the expected trust
	// domain: it belongs to another Consul cluster, or is not a Consul name.
	ErrForeignTrustDomain = errors.New("sni: name is not in the trust domain")
	// ErrMalformedName means the name ends in the trust domain but its labels
	// do not form any of Consul's SNI kinds.
	ErrMalformedName = errors.New("sni: malformed Consul name")
)

// Kind says which of Consul's SNI formats a Name was parsed from.
type Kind uint8

// The kinds of Consul SNI names.
const (
	// KindInvalid is the zero Kind.
	KindInvalid Kind = iota
	// KindService is a service in this cluster: [subset.]svc.ns.dc.internal.<td>
	// or [subset.]svc.ns.part.dc.internal-v1.<td>.
	KindService
	// KindPeeredService is a service exported to a peer: svc.ns.part.peer.external.<td>.
	KindPeeredService
	// KindQuery is a prepared query: query.default.dc.query.<td>.
	KindQuery
	// KindGateway is a whole datacenter or partition, as gateways address one
	// another: dc.internal.<td> or part.dc.internal-v1.<td>.
	KindGateway
	// KindPeeringServer is the peering control plane: server.dc.peering.<td>.
	KindPeeringServer
)

var kindNames = [...]string{"invalid", "service", "peered-service", "query", "gateway", "peering-server"}

// String returns the kind's name as used in logs: "service", "peered-service",
// "query", "gateway" or "peering-server".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Name is a Consul SNI name split into its parts. Parts a kind does not have
// are empty; Namespace and Partition are "default" when Consul's format implies
// it (a service in the default partition has Partition "default").
type Name struct {
	Kind        Kind
	Service     string // KindService, KindPeeredService
	Subset      string // KindService, may be empty
	Namespace   string // KindService, KindPeeredService, KindQuery
	Partition   string // KindService, KindPeeredService, KindGateway
	Datacenter  string // every kind but KindPeeredService
	Peer        string // KindPeeredService: the exporting cluster's name for the importing peer
	Query       string // KindQuery
	TrustDomain string // the trust domain the name ended in
}

// String rebuilds the SNI name from its parts with the builder for its kind.
func (n Name) String() string {
	switch n.Kind {
	case KindService:
		return ServiceSNI(n.Service, n.Subset, n.Namespace, n.Partition, n.Datacenter, n.TrustDomain)
	case KindPeeredService:
		return PeeredServiceSNI(n.Service, n.Namespace, n.Partition, n.Peer, n.TrustDomain)
	case KindQuery:
		return QuerySNI(n.Query, n.Datacenter, n.TrustDomain)
	case KindGateway:
		return GatewaySNI(n.Datacenter, n.Partition, n.TrustDomain)
	case KindPeeringServer:
		return PeeringServerSNI(n.Datacenter, n.TrustDomain)
	}
	return ""
}

func join(labels ...string) string { return strings.Join(labels, ".") }

// ServiceSNI returns the SNI a sidecar sends to reach service (optionally its
// subset) in namespace, partition and datacenter, as Consul's
// connect.ServiceSNI: [subset.]service.namespace.datacenter.internal.<td> in the
// default partition, [subset.]service.namespace.partition.datacenter.internal-v1.<td>
// in any other. An empty namespace or partition means "default".
//
// Builders do not validate: an empty service or datacenter yields a name that
// ParseName rejects.
func ServiceSNI(service, subset, namespace, partition, datacenter, trustDomain string) string {
	namespace, partition = tenancy.OrDefault(namespace), tenancy.OrDefault(partition)
	var labels []string
	if subset != "" {
		labels = append(labels, subset)
	}
	labels = append(labels, service, namespace)
	if partition == DefaultPartition {
		labels = append(labels, datacenter, labelInternal, trustDomain)
	} else {
		labels = append(labels, partition, datacenter, labelInternalV1, trustDomain)
	}
	return join(labels...)
}

// PeeredServiceSNI returns the SNI of a service exported to a peer, as
// Consul's connect.PeeredServiceSNI: service.namespace.partition.peerName.external.<td>.
// The exporting cluster builds it with its own trust domain and the name it
// gave the importing peer. An empty namespace or partition means "default".
// Unlike Consul's, it does not panic on an empty peerName: the result simply
// fails ParseName.
func PeeredServiceSNI(service, namespace, partition, peerName, trustDomain string) string {
	return join(service, tenancy.OrDefault(namespace), tenancy.OrDefault(partition), peerName, labelExternal, trustDomain)
}

// GatewaySNI returns the name that addresses a whole datacenter (or a partition
// in it) through its mesh gateways, as Consul's connect.GatewaySNI:
// datacenter.internal.<td>, or partition.datacenter.internal-v1.<td>. Gateways
// match every name under it (*.dc.internal.<td>).
func GatewaySNI(datacenter, partition, trustDomain string) string {
	if tenancy.OrDefault(partition) == DefaultPartition {
		return join(datacenter, labelInternal, trustDomain)
	}
	return join(partition, datacenter, labelInternalV1, trustDomain)
}

// QuerySNI returns the SNI of a prepared query, as Consul's connect.QuerySNI:
// query.default.datacenter.query.<td>.
func QuerySNI(query, datacenter, trustDomain string) string {
	return join(query, DefaultNamespace, datacenter, labelQuery, trustDomain)
}

// PeeringServerSNI returns the name a cluster's servers present on their gRPC
// TLS port to peers, and that a gateway routes to them when peering traffic
// goes through mesh gateways: server.datacenter.peering.<td>.
func PeeringServerSNI(datacenter, trustDomain string) string {
	return join(labelServer, datacenter, labelPeering, trustDomain)
}

// DefaultDomain is Consul's DNS domain when an agent's configuration names
// none (its "domain" option): the last label of Consul servers' names.
const DefaultDomain = "consul"

// ServerSNI returns the name of Consul servers for WAN federation through mesh
// gateways, as Consul's tlsutil.Configurator.ServerSNI:
// server.datacenter.domain for any server of the datacenter, or
// nodeName.server.datacenter.domain for one. domain is the DNS domain (empty
// means DefaultDomain), not the trust domain; a trailing dot on it is dropped.
// A nodeName of "*" means any server, as in Consul.
func ServerSNI(datacenter, nodeName, domain string) string {
	domain = strings.TrimSuffix(domain, ".")
	if domain == "" {
		domain = DefaultDomain
	}
	if nodeName == "" || nodeName == "*" {
		return join(labelServer, datacenter, domain)
	}
	return join(nodeName, labelServer, datacenter, domain)
}

// ErrNotServerSNI is wrapped by ParseServerSNI's errors, with the name and
// what is wrong with it.
var ErrNotServerSNI = errors.New("sni: not a Consul server name")

// ConsulServer is a Consul server name for WAN federation through mesh
// gateways, split into its parts: server.<datacenter>.<domain> addresses any
// server of the datacenter, <node>.server.<datacenter>.<domain> one of them.
// Consul's servers dial each other across datacenters with these names
// (with ALPN protocols such as "consul/rpc-multi" and
// "consul/wan-gossip/stream"), and their certificates carry them.
type ConsulServer struct {
	// Node is the server's node name, empty for any server; it may have
	// dots ("ip-10-0-1-2.ec2.internal"), as Consul's node names may.
	Node string
	// Datacenter is the server's datacenter.
	Datacenter string
	// Domain is the DNS domain the name ended in, as written in it.
	Domain string
}

// String rebuilds the name with ServerSNI.
func (n ConsulServer) String() string { return ServerSNI(n.Datacenter, n.Node, n.Domain) }

// ParseServerSNI splits a Consul server name in the DNS domain domain
// (empty means DefaultDomain; a trailing dot is dropped) into its parts. It
// is the inverse of ServerSNI, up to ASCII case, for labels without dots in
// the datacenter and non-empty labels everywhere: the last label before the
// domain is the datacenter, the one before it must be "server", and what
// precedes that, if anything, is the node name. The whole name is matched
// without regard to ASCII case (the keyword "server" and the domain; the
// parts are returned as written), as Envoy matches the server names of
// Consul's filter chains (lower-cased since Envoy 1.18) and as the gateway's
// ClientHello reader lower-cases every name.
//
// A name that is not of that form (a service's SNI, a peering server name,
// a name of another domain) fails with an error wrapping ErrNotServerSNI
// that names it. ParseServerSNI does not allocate on success.
func ParseServerSNI(name, domain string) (ConsulServer, error) {
	n, why := parseServerSNI(name, domain)
	if why == whyNotDomain {
		why += " " + strconv.Quote(strings.TrimSuffix(domainOr(domain), "."))
	}
	if why != "" {
		return ConsulServer{}, fmt.Errorf("%w %q: %s", ErrNotServerSNI, name, why)
	}
	return n, nil
}

// ServerSNIOf is ParseServerSNI for a router, which asks it of every
// name it sees: it reports whether name is a Consul server name without
// saying why not, and so never allocates.
func ServerSNIOf(name, domain string) (ConsulServer, bool) {
	n, why := parseServerSNI(name, domain)
	return n, why == ""
}

// whyNotDomain is parseServerSNI's reason for a name of another domain,
// which ParseServerSNI completes with the domain.
const whyNotDomain = "it does not end in domain"

// domainOr is domain, or DefaultDomain when it is empty or ".".
func domainOr(domain string) string {
	if strings.TrimSuffix(domain, ".") == "" {
		return DefaultDomain
	}
	return domain
}

// parseServerSNI is ParseServerSNI's work; why says what is wrong, or is
// empty. It does not allocate.
func parseServerSNI(name, domain string) (_ ConsulServer, why string) {
	domain = strings.TrimSuffix(domainOr(domain), ".")
	rest, ok := cutSuffixFold(name, domain)
	if ok {
		rest, ok = strings.CutSuffix(rest, ".")
	}
	if !ok {
		return ConsulServer{}, whyNotDomain
	}
	i := strings.LastIndexByte(rest, '.')
	dc := rest[i+1:]
	if i < 0 || dc == "" {
		return ConsulServer{}, "want server.<datacenter> before the domain"
	}
	rest = rest[:i]
	node, ok := cutSuffixFold(rest, "."+labelServer)
	if !ok {
		if !strings.EqualFold(rest, labelServer) {
			return ConsulServer{}, "want server.<datacenter> before the domain"
		}
		node = ""
	} else if node == "" || strings.HasPrefix(node, ".") || strings.HasSuffix(node, ".") || strings.Contains(node, "..") {
		return ConsulServer{}, "empty label in the node name"
	} else if node == "*" {
		// ServerSNI writes any server as server.<datacenter>, never with
		// a "*" node, and a wildcard is no name a client sends.
		return ConsulServer{}, `node name "*": any server is server.<datacenter>`
	}
	return ConsulServer{Node: node, Datacenter: dc, Domain: name[len(name)-len(domain):]}, ""
}

// ParseName splits a Consul SNI name of trustDomain into its parts. It is the
// inverse of the builders, up to ASCII case: for every name they build from
// non-empty labels without dots, ParseName returns the same parts, and it
// accepts no form they never build (internal-v1 with the default partition, a
// query outside namespace default). The whole name is matched without regard
// to ASCII case (the trust domain and the keyword labels; the parts are
// returned as written), as ParseServerSNI's, and the kind is decided by the
// keyword label right before the trust domain, so a service may itself be
// called "internal".
//
// A name outside trustDomain fails with ErrForeignTrustDomain; one whose
// labels fit no kind, or has an empty label, fails with ErrMalformedName. Both
// errors name the offending value. ParseName does not allocate on success.
func ParseName(name, trustDomain string) (Name, error) {
	if trustDomain == "" {
		return Name{}, fmt.Errorf("%w: empty trust domain given for %q", ErrForeignTrustDomain, name)
	}
	rest, ok := cutSuffixFold(name, trustDomain)
	if ok {
		rest, ok = strings.CutSuffix(rest, ".")
	}
	if !ok {
		return Name{}, fmt.Errorf("%w %q: %q", ErrForeignTrustDomain, trustDomain, name)
	}
	if rest == "" {
		return Name{}, malformed(name, "no labels before the trust domain")
	}
	td := name[len(rest)+1:]

	// Labels, right to left: keyword first.
	var labels [6]string
	n := 0
	for rest != "" {
		i := strings.LastIndexByte(rest, '.')
		label := rest[i+1:]
		if label == "" {
			return Name{}, malformed(name, "empty label")
		}
		if n == len(labels) {
			return Name{}, malformed(name, "too many labels")
		}
		labels[n] = label
		n++
		if i < 0 {
			break
		}
		rest = rest[:i]
		if rest == "" {
			return Name{}, malformed(name, "empty label")
		}
	}
	keyword, parts := canonicalKeyword(labels[0]), labels[1:n] // parts right to left
	out := Name{TrustDomain: td}
	switch keyword {
	case labelInternal:
		out.Partition = DefaultPartition
		switch len(parts) {
		case 1:
			out.Kind, out.Datacenter = KindGateway, parts[0]
		case 3, 4:
			out.Kind, out.Datacenter, out.Namespace, out.Service = KindService, parts[0], parts[1], parts[2]
			if len(parts) == 4 {
				out.Subset = parts[3]
			}
		default:
			return Name{}, malformed(name, fmt.Sprintf("%d labels before %q, want 1, 3 or 4", len(parts), keyword))
		}
	case labelInternalV1:
		switch len(parts) {
		case 2:
			out.Kind, out.Datacenter, out.Partition = KindGateway, parts[0], parts[1]
		case 4, 5:
			out.Kind, out.Datacenter, out.Partition, out.Namespace, out.Service = KindService, parts[0], parts[1], parts[2], parts[3]
			if len(parts) == 5 {
				out.Subset = parts[4]
			}
		default:
			return Name{}, malformed(name, fmt.Sprintf("%d labels before %q, want 2, 4 or 5", len(parts), keyword))
		}
		if strings.EqualFold(out.Partition, DefaultPartition) {
			return Name{}, malformed(name, fmt.Sprintf("partition %q is written with %q, not %q", DefaultPartition, labelInternal, keyword))
		}
	case labelExternal:
		if len(parts) != 4 {
			return Name{}, malformed(name, fmt.Sprintf("%d labels before %q, want 4", len(parts), keyword))
		}
		out.Kind, out.Peer, out.Partition, out.Namespace, out.Service = KindPeeredService, parts[0], parts[1], parts[2], parts[3]
	case labelQuery:
		if len(parts) != 3 {
			return Name{}, malformed(name, fmt.Sprintf("%d labels before %q, want 3", len(parts), keyword))
		}
		if !strings.EqualFold(parts[1], DefaultNamespace) {
			return Name{}, malformed(name, fmt.Sprintf("query names have namespace %q, not %q", DefaultNamespace, parts[1]))
		}
		out.Kind, out.Datacenter, out.Namespace, out.Query = KindQuery, parts[0], parts[1], parts[2]
	case labelPeering:
		if len(parts) != 2 || !strings.EqualFold(parts[1], labelServer) {
			return Name{}, malformed(name, fmt.Sprintf("want %q before %q", "server.<datacenter>", keyword))
		}
		out.Kind, out.Datacenter = KindPeeringServer, parts[0]
	default:
		return Name{}, malformed(name, fmt.Sprintf("unknown keyword label %q before the trust domain", keyword))
	}
	return out, nil
}

// canonicalKeyword returns the keyword label a label is, without regard to
// ASCII case, or the label itself when it is none.
func canonicalKeyword(label string) string {
	for _, k := range [...]string{labelInternal, labelInternalV1, labelExternal, labelQuery, labelPeering} {
		if strings.EqualFold(label, k) {
			return k
		}
	}
	return label
}

func malformed(name, why string) error {
	return fmt.Errorf("%w %q: %s", ErrMalformedName, name, why)
}

// cutSuffixFold is strings.CutSuffix with ASCII case folding.
func cutSuffixFold(s, suffix string) (string, bool) {
	if len(s) < len(suffix) || !strings.EqualFold(s[len(s)-len(suffix):], suffix) {
		return s, false
	}
	return s[:len(s)-len(suffix)], true
}
