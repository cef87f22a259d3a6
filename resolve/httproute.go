package resolve

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/fullmatch"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
)

// HTTPDestination is where one HTTP request to a service goes once the
// service's service-router and the service-splitters on the way have
// decided, as Consul compiles them into its discovery chain: a service
// (and subset) whose service-resolver decides the rest (RouteExportedTo),
// and what the route and the splits change on the way.
type HTTPDestination struct {
	Service, Subset, Namespace string
	// Decided says which rules chose the destination, in order:
	// "service-router api route 2", "service-splitter api split 1 (50%)".
	// Empty when the service has neither.
	Decided []string
	// MatchedPrefix and PrefixRewrite: the path's MatchedPrefix is
	// replaced by PrefixRewrite, when the route sets one.
	MatchedPrefix, PrefixRewrite string
	// Route is the destination of the service-router route that matched,
	// nil when none did (or it names none): its retries (NumRetries,
	// RetryOn...) and IdleTimeout apply to the request.
	Route *api.ServiceRouteDestination
	// RequestTimeout is the route timeout as Consul's
	// makeUpstreamRouteForDiscoveryChain sets it: the matched route's; or,
	// when the chain starts at the resolver (the service has neither a
	// service-router nor a service-splitter), the resolver's. It never
	// comes from a resolver after a router or a splitter, whose branches
	// share one Envoy route. Zero means unset (Envoy's 15 s default then
	// applies); negative means none.
	RequestTimeout time.Duration
	// HashPolicies are the load balancer's hash policies for the request,
	// from the chain node the routing reached, as injectLBToRouteAction
	// takes them: its resolver's LoadBalancer when hash-based (ring_hash,
	// maglev); for a splitter, the first hash-based one among the
	// resolvers its splits reach directly (compile.go's splitNode).
	HashPolicies []api.HashPolicy
	// RequestHeaders and ResponseHeaders are the route's modifiers, then
	// the splits'.
	RequestHeaders, ResponseHeaders []*api.HTTPHeaderModifiers
}

// maxSplitDepth bounds splitters that split to services with splitters.
const maxSplitDepth = 8

// RouteHTTP returns the destination of req to service name in namespace of
// v's local partition: the first route of the service's service-router
// whose match req meets (the service itself when none does, or it has no
// router), then the service-splitter of that destination's service, whose
// splits are chosen by pick, a number in [0, 100) (rand.Float32()*100 for
// Consul's weighted choice): a split to another service goes on to that
// service's splitter. A regular expression in a route that does not
// compile never matches; config.Load refuses such entries.
func RouteHTTP(v *mesh.View, name, namespace string, req *http.Request, pick float32) HTTPDestination {
	partition := v.Local().Partition
	namespace = tenancy.OrDefault(namespace)
	d := HTTPDestination{Service: name, Namespace: namespace}
	router := v.Routers[mesh.KeyOf(name, namespace, partition)]
	if router != nil {
		for i, r := range router.Routes {
			prefix, ok := matchHTTP(r.Match, req)
			if !ok {
				continue
			}
			d.Decided = append(d.Decided, fmt.Sprintf("service-router %s route %d", name, i+1))
			if dst := r.Destination; dst != nil {
				d.Service = cmpOr(dst.Service, name)
				d.Subset = dst.ServiceSubset
				d.Namespace = tenancy.OrDefault(cmpOr(dst.Namespace, namespace))
				d.Route = dst
				d.RequestTimeout = dst.RequestTimeout
				if dst.PrefixRewrite != "" {
					d.MatchedPrefix, d.PrefixRewrite = prefix, dst.PrefixRewrite
				}
				d.RequestHeaders = appendModifiers(d.RequestHeaders, dst.RequestHeaders)
				d.ResponseHeaders = appendModifiers(d.ResponseHeaders, dst.ResponseHeaders)
			}
			break
		}
	}
	split := false
	if d.Subset == "" {
		for depth := 0; depth < maxSplitDepth; depth++ {
			splitter := v.Splitters[mesh.KeyOf(d.Service, d.Namespace, partition)]
			if splitter == nil || len(splitter.Splits) == 0 {
				break
			}
			if !split {
				d.HashPolicies = splitterHashPolicies(v, splitter, d.Namespace)
				split = true
			}
			i := chooseSplit(splitter.Splits, pick)
			s := splitter.Splits[i]
			d.Decided = append(d.Decided, fmt.Sprintf("service-splitter %s split %d (%g%%)", splitter.Name, i+1, s.Weight))
			d.RequestHeaders = appendModifiers(d.RequestHeaders, s.RequestHeaders)
			d.ResponseHeaders = appendModifiers(d.ResponseHeaders, s.ResponseHeaders)
			next := cmpOr(s.Service, splitter.Name)
			nextNS := tenancy.OrDefault(cmpOr(s.Namespace, d.Namespace))
			self := next == splitter.Name && nextNS == d.Namespace
			d.Service, d.Namespace, d.Subset = next, nextNS, s.ServiceSubset
			if self || d.Subset != "" {
				break // a split to the service itself, or to a subset, goes to the resolver
			}
		}
	}
	if !split {
		r := resolverNode(v, d.Service, d.Subset, d.Namespace)
		if r != nil && router == nil {
			d.RequestTimeout = r.RequestTimeout
		}
		d.HashPolicies = hashPolicies(r)
	}
	return d
}

// resolverNode returns the service-resolver of the chain's resolver node
// for subset of service in namespace: after redirects, as Consul's
// getResolverNode builds it; nil when there is none.
func resolverNode(v *mesh.View, service, subset, namespace string) *api.ServiceResolverConfigEntry {
	t := normalTarget(v, chainTarget{service: service, subset: subset, namespace: namespace, partition: v.Local().Partition, datacenter: v.Datacenter})
	_, r, _, _ := resolveTarget(v, t)
	return r
}

// hashPolicies returns r's hash policies when its policy is hash-based.
func hashPolicies(r *api.ServiceResolverConfigEntry) []api.HashPolicy {
	if r == nil || r.LoadBalancer == nil {
		return nil
	}
	switch r.LoadBalancer.Policy {
	case "ring_hash", "maglev":
		return r.LoadBalancer.HashPolicies
	}
	return nil
}

// splitterHashPolicies returns the hash policies of a splitter node: those
// of the first split, in order, that goes straight to a resolver with a
// hash-based policy (a split to a service with a splitter of its own is
// passed over), as Consul's compiler picks the splitter's LoadBalancer.
func splitterHashPolicies(v *mesh.View, splitter *api.ServiceSplitterConfigEntry, namespace string) []api.HashPolicy {
	partition := v.Local().Partition
	for _, s := range splitter.Splits {
		service := cmpOr(s.Service, splitter.Name)
		ns := tenancy.OrDefault(cmpOr(s.Namespace, namespace))
		self := service == splitter.Name && ns == namespace
		if s.ServiceSubset == "" && !self {
			if next := v.Splitters[mesh.KeyOf(service, ns, partition)]; next != nil && len(next.Splits) > 0 {
				continue
			}
		}
		if p := hashPolicies(resolverNode(v, service, s.ServiceSubset, ns)); p != nil {
			return p
		}
	}
	return nil
}

// chooseSplit returns the index of the split pick falls in, the weights
// laid end to end; past their sum, the last.
func chooseSplit(splits []api.ServiceSplit, pick float32) int {
	var sum float32
	for i, s := range splits {
		sum += s.Weight
		if pick < sum {
			return i
		}
	}
	return len(splits) - 1
}

func appendModifiers(list []*api.HTTPHeaderModifiers, m *api.HTTPHeaderModifiers) []*api.HTTPHeaderModifiers {
	if m == nil {
		return list
	}
	return append(list, m)
}

func cmpOr(s, or string) string {
	if s != "" {
		return s
	}
	return or
}

// matchHTTP reports whether req meets m (nil matches every request) and
// returns the path prefix it matched, for a rewrite.
func matchHTTP(match *api.ServiceRouteMatch, req *http.Request) (string, bool) {
	if match == nil || match.HTTP == nil {
		return "/", true
	}
	m := match.HTTP
	path := req.URL.Path
	prefix := "/"
	eq := func(a, b string) bool { return a == b }
	hasPrefix := strings.HasPrefix
	if m.CaseInsensitive {
		eq = strings.EqualFold
		hasPrefix = func(s, p string) bool { return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p) }
	}
	switch {
	case m.PathExact != "":
		if !eq(path, m.PathExact) {
			return "", false
		}
		prefix = path
	case m.PathPrefix != "":
		if !hasPrefix(path, m.PathPrefix) {
			return "", false
		}
		prefix = path[:len(m.PathPrefix)]
	case m.PathRegex != "":
		expr := m.PathRegex
		if m.CaseInsensitive {
			expr = "(?i)" + expr
		}
		if !fullmatch.Match(expr, path) {
			return "", false
		}
	}
	if len(m.Methods) > 0 && !slices.Contains(m.Methods, req.Method) {
		return "", false
	}
	for _, h := range m.Header {
		if matchValue(h.Exact, h.Prefix, h.Suffix, h.Regex, req.Header.Values(h.Name)) == h.Invert {
			return "", false
		}
	}
	query := req.URL.Query()
	for _, q := range m.QueryParam {
		if !matchValue(q.Exact, "", "", q.Regex, query[q.Name]) {
			return "", false
		}
	}
	return prefix, true
}

// matchValue is one header or query parameter condition over its values
// (joined with commas, as Envoy joins a repeated header); with no
// condition set, the value must be present.
func matchValue(exact, prefix, suffix, regex string, values []string) bool {
	if len(values) == 0 {
		return false
	}
	v := strings.Join(values, ",")
	switch {
	case exact != "":
		return v == exact
	case prefix != "":
		return strings.HasPrefix(v, prefix)
	case suffix != "":
		return strings.HasSuffix(v, suffix)
	case regex != "":
		return fullmatch.Match(regex, v)
	}
	return true
}
