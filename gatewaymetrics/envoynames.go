package gatewaymetrics

import (
	"regexp"
	"strings"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/sni"
)

// The route kinds of this module's routers (package routing and the
// routers it holds), which name the cluster Consul's mesh gateway would
// have sent a connection to. A test pins them to the routers' constants.
const (
	kindService        = "service"
	kindGateway        = "gateway"
	kindServers        = "wan-federation"
	kindPeeringServers = "peering-servers"
	kindPeerServers    = "peer-servers"
	kindExported       = "exported-service"
	kindImported       = "imported-service"
)

// exportedPrefix is what Consul puts before the target's name in the
// clusters a mesh gateway has for services it exports to peers.
const exportedPrefix = "exported~"

// ConsulCluster returns the name of the Envoy cluster that Consul 1.22's
// mesh gateway, in datacenter localDC, would have sent the connection of r
// to (agent/xds/clusters.go): the server name itself for a local service,
// a subset, Consul's servers in the local datacenter, the peering control
// plane and a peer's services and servers; dc.internal.<trust domain> (or
// partition.dc.internal-v1.<trust domain>) for another datacenter or
// partition; server.<dc>.<domain> for another datacenter's servers;
// exported~<service's name> for a service exported to a peer. For a Route
// of no kind it knows (a gateway.Table's), it returns the route's name.
//
// A service whose export a service-resolver redirects is named by the
// service itself, where Consul names the chain's first target.
func ConsulCluster(r *gateway.ConnRecord, localDC string) string {
	name := r.ServerName
	switch r.Kind {
	case kindService, kindPeeringServers, kindPeerServers, kindImported:
		return name
	case kindGateway:
		td := trustDomainOf(name)
		if n, err := sni.ParseName(name, td); err == nil {
			return sni.GatewaySNI(n.Datacenter, n.Partition, td)
		}
	case kindServers:
		if s, ok := serverNameParts(name); ok && !strings.EqualFold(s.dc, localDC) {
			return "server." + s.dc + "." + s.domain
		}
		return name
	case kindExported:
		td := trustDomainOf(name)
		if n, err := sni.ParseName(name, td); err == nil && n.Kind == sni.KindPeeredService {
			return exportedPrefix + sni.ServiceSNI(n.Service, "", n.Namespace, n.Partition, localDC, td)
		}
	}
	if name == "" || r.Kind == "" || r.Kind == gateway.KindTable {
		return r.Route
	}
	return r.Route
}

// tcpStatPrefix returns the stat_prefix of the tcp_proxy filter that
// Consul's mesh gateway would have handled the connection of r with, on
// the listener named listener (agent/xds/listeners.go); refused is for a
// connection refused after its ClientHello, which Envoy's catch-all filter
// chain (sni_cluster) takes and finds no cluster for.
func tcpStatPrefix(r *gateway.ConnRecord, listener, localDC string, refused bool) string {
	listener = strings.ReplaceAll(listener, ":", "_")
	local := "mesh_gateway_local." + listener
	if refused {
		return local
	}
	switch r.Kind {
	case kindGateway:
		td := trustDomainOf(r.ServerName)
		if n, err := sni.ParseName(r.ServerName, td); err == nil {
			key := n.Datacenter
			if p := n.Partition; p != "" && p != sni.DefaultPartition {
				key = p + "." + key
			}
			return "mesh_gateway_remote." + listener + "." + key
		}
	case kindServers:
		if s, ok := serverNameParts(r.ServerName); ok {
			if !strings.EqualFold(s.dc, localDC) {
				return "mesh_gateway_remote." + listener + "." + s.dc
			}
			if s.node != "" {
				return "mesh_gateway_local_server." + listener + "." + s.dc
			}
		}
	case kindPeeringServers:
		return "mesh_gateway_local_peering_server." + listener + "." + localDC
	case kindPeerServers:
		return "mesh_gateway_remote_peering_servers." + strings.ReplaceAll(r.ServerName, ":", "_")
	case kindExported:
		td := trustDomainOf(r.ServerName)
		if n, err := sni.ParseName(r.ServerName, td); err == nil && n.Kind == sni.KindPeeredService {
			return "mesh_gateway_local_peered." + n.Service + "." + n.Namespace + "." + n.Partition + "." + localDC
		}
	}
	return local
}

// trustDomainOf returns the last two labels of a Consul name: the trust
// domain, <cluster id>.consul, of a name a router has accepted.
func trustDomainOf(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 {
		return name
	}
	j := strings.LastIndexByte(name[:i], '.')
	return name[j+1:]
}

type serverParts struct{ node, dc, domain string }

// serverNameParts splits [node.]server.dc.domain.
func serverNameParts(name string) (serverParts, bool) {
	var p serverParts
	rest := name
	if !strings.HasPrefix(rest, "server.") {
		i := strings.Index(rest, ".server.")
		if i <= 0 {
			return p, false
		}
		p.node, rest = rest[:i], rest[i+1:]
	}
	rest = strings.TrimPrefix(rest, "server.")
	dc, domain, ok := strings.Cut(rest, ".")
	if !ok || dc == "" || domain == "" {
		return p, false
	}
	p.dc, p.domain = dc, domain
	return p, true
}

// A statsTag is one of the tag specifiers Consul's bootstrap configuration
// gives Envoy (command/connect/envoy/bootstrap_config.go): Envoy matches
// the regular expression against a statistic's whole name, makes the
// second group the tag's value and drops the first group from the name.
type statsTag struct {
	label string // the tag's name with its dots made underscores, as Envoy's Prometheus output writes it
	re    *regexp.Regexp
}

// consulClusterTags are the tag specifiers of Consul 1.22's bootstrap
// configuration that apply to cluster statistics, in its order: the
// consul.destination.* tags and the consul.* ones it still adds (it
// omits them only with -omit-deprecated-tags). Each is built here from
// the same pattern of segments.
var consulClusterTags = buildClusterTags()

func buildClusterTags() []statsTag {
	const seg = `[^.]+`
	// The parts of a cluster name, in order; (x) marks the part a tag
	// takes.
	full := func(passthrough bool, hash, subset, svc, ns, part, dc, routing, td string) string {
		p := `^cluster\.`
		if passthrough {
			p += `(?:passthrough~)?`
		}
		return p + `(` + hash + subset + svc + `\.` + ns + `\.` + part + dc + `\.` + routing + `\.` + td + `\.consul\.)`
	}
	opt := func(s string) string { return `(?:` + s + `\.)?` }
	cap := func(s string) string { return `(` + s + `)` }
	tags := func(prefix string, passthrough bool) []statsTag {
		mk := func(name, re string) statsTag {
			return statsTag{label: strings.ReplaceAll(prefix+name, ".", "_"), re: regexp.MustCompile(re)}
		}
		hash := `(?:` + seg + `~)?`
		out := []statsTag{
			mk("custom_hash", full(passthrough, `(?:(`+seg+`)~)?`, opt(seg), seg, seg, opt(seg), seg, seg, seg)),
			mk("service_subset", full(passthrough, hash, `(?:(`+seg+`)\.)?`, seg, seg, opt(seg), seg, seg, seg)),
			mk("service", full(passthrough, hash, opt(seg), cap(seg), seg, opt(seg), seg, seg, seg)),
			mk("namespace", full(passthrough, hash, opt(seg), seg, cap(seg), opt(seg), seg, seg, seg)),
		}
		if prefix == "consul.destination." {
			out = append(out, mk("partition", full(passthrough, hash, opt(seg), seg, seg, `(?:(`+seg+`)\.)?`, seg, `internal[^.]*`, seg)))
		}
		out = append(out,
			mk("datacenter", full(passthrough, hash, opt(seg), seg, seg, opt(seg), cap(seg), `internal[^.]*`, seg)))
		if prefix == "consul.destination." {
			out = append(out, mk("peer", `^cluster\.(`+seg+`\.(?:`+seg+`\.)?(`+seg+`)\.external\.`+seg+`\.consul\.)`))
		}
		out = append(out,
			mk("routing_type", full(passthrough, hash, opt(seg), seg, seg, opt(seg), seg, cap(seg), seg)),
			mk("trust_domain", full(passthrough, hash, opt(seg), seg, seg, opt(seg), seg, seg, cap(seg))),
		)
		// target and full_target take a run of parts, not one.
		p := `^cluster\.`
		if passthrough {
			p += `(?:passthrough~)?`
		}
		body := hash + opt(seg) + seg + `\.` + seg + `\.` + opt(seg) + seg
		out = append(out,
			mk("target", p+`((`+body+`)\.`+seg+`\.`+seg+`\.consul\.)`),
			mk("full_target", p+`((`+body+`\.`+seg+`\.`+seg+`)\.consul\.)`),
		)
		return out
	}
	return append(tags("consul.destination.", true), tags("consul.", false)...)
}

// consulClusterLabels are the labels of consulClusterTags, in order.
var consulClusterLabels = func() []string {
	out := make([]string, len(consulClusterTags))
	for i, t := range consulClusterTags {
		out[i] = t.label
	}
	return out
}()

// clusterLabels returns the values of consulClusterLabels for a cluster
// (empty where a tag does not match, or matches without its value, as
// Envoy gives it), and envoy_cluster_name: the cluster name's first
// dot-separated label, as Envoy's own extractor takes it, where Consul's
// tags take the rest of the name; the whole name where they do not (a
// gateway's, a server's), so that no part of a name is left in a metric's
// name, as Envoy would leave it.
func clusterLabels(cluster string) (clusterName string, values []string) {
	stat := "cluster." + cluster + ".upstream_cx_total"
	values = make([]string, len(consulClusterTags))
	covered := 0 // the end of the longest first group, which starts right after "cluster." (or a passthrough~)
	for i, t := range consulClusterTags {
		m := t.re.FindStringSubmatchIndex(stat)
		if m == nil {
			continue
		}
		if len(m) >= 6 && m[4] >= 0 {
			values[i] = stat[m[4]:m[5]]
		}
		covered = max(covered, m[3])
	}
	clusterName = cluster
	if covered == len("cluster.")+len(cluster)+1 {
		clusterName, _, _ = strings.Cut(cluster, ".")
	}
	return clusterName, values
}
