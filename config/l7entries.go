package config

import (
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"
)

// routerProblems checks what Consul checks of a service-router before
// storing it (ServiceRouterConfigEntry.Validate), as far as routing
// depends on it.
func routerProblems(e *api.ServiceRouterConfigEntry) []string {
	var out []string
	for i, r := range e.Routes {
		at := fmt.Sprintf("Routes[%d]", i)
		var m *api.ServiceRouteHTTPMatch
		if r.Match != nil {
			m = r.Match.HTTP
		}
		if m != nil {
			out = append(out, httpMatchProblems(at, m)...)
		}
		if d := r.Destination; d != nil && d.PrefixRewrite != "" && (m == nil || (m.PathPrefix == "" && m.PathExact == "")) {
			out = append(out, at+": PrefixRewrite needs a PathExact or PathPrefix match")
		}
	}
	return out
}

func httpMatchProblems(at string, m *api.ServiceRouteHTTPMatch) []string {
	var out []string
	paths := 0
	for _, p := range []string{m.PathExact, m.PathPrefix, m.PathRegex} {
		if p != "" {
			paths++
		}
	}
	if paths > 1 {
		out = append(out, at+": set at most one of PathExact, PathPrefix and PathRegex")
	}
	for name, p := range map[string]string{"PathExact": m.PathExact, "PathPrefix": m.PathPrefix} {
		if p != "" && !strings.HasPrefix(p, "/") {
			out = append(out, fmt.Sprintf("%s: %s %q does not begin with /", at, name, p))
		}
	}
	out = append(out, regexProblem(at+": PathRegex", m.PathRegex)...)
	for j, h := range m.Header {
		hat := fmt.Sprintf("%s: Header[%d]", at, j)
		if h.Name == "" {
			out = append(out, hat+" has no Name")
		}
		if n := countSet(h.Present, h.Exact, h.Prefix, h.Suffix, h.Regex); n != 1 {
			out = append(out, fmt.Sprintf("%s %q: set exactly one of Present, Exact, Prefix, Suffix and Regex, not %d", hat, h.Name, n))
		}
		out = append(out, regexProblem(hat+" Regex", h.Regex)...)
	}
	for j, q := range m.QueryParam {
		qat := fmt.Sprintf("%s: QueryParam[%d]", at, j)
		if q.Name == "" {
			out = append(out, qat+" has no Name")
		}
		if n := countSet(q.Present, q.Exact, "", "", q.Regex); n != 1 {
			out = append(out, fmt.Sprintf("%s %q: set exactly one of Present, Exact and Regex, not %d", qat, q.Name, n))
		}
		out = append(out, regexProblem(qat+" Regex", q.Regex)...)
	}
	return out
}

// countSet counts the conditions set.
func countSet(present bool, values ...string) int {
	n := 0
	if present {
		n++
	}
	for _, v := range values {
		if v != "" {
			n++
		}
	}
	return n
}

func regexProblem(what, expr string) []string {
	if expr == "" {
		return nil
	}
	if _, err := regexp.Compile(expr); err != nil {
		return []string{fmt.Sprintf("%s %q: %v", what, expr, err)}
	}
	return nil
}

// splitterProblems checks a service-splitter as Consul does: at least one
// split, weights from 0 to 100 with at most two decimals, summing to 100.
func splitterProblems(e *api.ServiceSplitterConfigEntry) []string {
	if len(e.Splits) == 0 {
		return []string{"no Splits"}
	}
	var out []string
	var sum int
	for i, s := range e.Splits {
		w := int(math.Round(float64(s.Weight) * 100))
		if s.Weight < 0 || s.Weight > 100 || math.Abs(float64(s.Weight)*100-float64(w)) > 0.01 {
			out = append(out, fmt.Sprintf("Splits[%d]: Weight %g is not between 0 and 100 with at most two decimals", i, s.Weight))
		}
		sum += w
	}
	if sum != 10000 {
		out = append(out, fmt.Sprintf("the weights sum to %.2f, not 100", float64(sum)/100))
	}
	return out
}
