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
	// RequestTimeout is the route's, else the resolver's; zero means none.
	RequestTimeout time.Duration
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
func RouteHTTP(v *View, name, namespace string, req *http.Request, pick float32) HTTPDestination {
	partition := v.Local().Partition
	namespace = tenancy.OrDefault(namespace)
	d := HTTPDestination{Service: name, Namespace: namespace}
	if router := v.Routers[KeyOf(name, namespace, partition)]; router != nil {
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
	if d.Subset == "" {
		for depth := 0; depth < maxSplitDepth; depth++ {
			splitter := v.Splitters[KeyOf(d.Service, d.Namespace, partition)]
			if splitter == nil || len(splitter.Splits) == 0 {
				break
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
	if d.RequestTimeout == 0 {
		if r := v.ResolverFor(d.Service, d.Namespace, partition); r != nil {
			d.RequestTimeout = r.RequestTimeout
		}
	}
	return d
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
