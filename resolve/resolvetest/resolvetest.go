// Package resolvetest lets another project's tests check routing decisions
// against the same files it gives Consul, in a few lines:
//
//	src := resolvetest.Load(t, config.StaticOptions{TrustDomain: td}, "consul/")
//	plan := resolvetest.Plan(t, src, "web", "api")
//	resolvetest.Expect(t, plan, resolvetest.Want{Route: resolve.PathLocalGateway, Layer: modes.LayerProxyDefaults})
//
// When a service has the same upstream name more than once (two datacenters,
// a peer), PlanTo chooses it by where it is:
//
//	plan := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Datacenter: "dc2"})
package resolvetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// Load loads files and directories as the explain tool does (config entries,
// service definitions, topology) and fails tb with every problem if any.
func Load(tb testing.TB, opts config.StaticOptions, paths ...string) *config.Static {
	tb.Helper()
	set, err := config.Load(paths...)
	if err != nil {
		tb.Fatalf("resolvetest: loading %s: %v", strings.Join(paths, ", "), err)
	}
	src, err := config.NewStatic(set, opts)
	if err != nil {
		tb.Fatalf("resolvetest: loading %s: %v", strings.Join(paths, ", "), err)
	}
	if opts.TrustDomain == "" && (set.Topology == nil || set.Topology.TrustDomain == "") {
		// A trust domain decides every SNI: say which one the test gets.
		tb.Logf("resolvetest: no trust domain given (StaticOptions.TrustDomain or the topology's trust_domain); using %s", src.View().TrustDomain)
	}
	return src
}

// Upstream names an upstream and, where the name alone is ambiguous, where
// it is. An empty field matches anything; to ask for the default namespace
// or partition, say "default".
type Upstream struct {
	Name       string
	Datacenter string
	Peer       string
	Namespace  string
	Partition  string
}

func (u Upstream) matches(p resolve.Plan) bool {
	return p.Upstream == u.Name &&
		(u.Datacenter == "" || strings.EqualFold(p.Datacenter, u.Datacenter)) &&
		(u.Peer == "" || p.Peer == u.Peer) &&
		(u.Namespace == "" || p.Namespace == u.Namespace) &&
		(u.Partition == "" || p.Partition == u.Partition)
}

func (u Upstream) String() string {
	s := u.Name
	for _, kv := range [][2]string{{"datacenter", u.Datacenter}, {"peer", u.Peer}, {"namespace", u.Namespace}, {"partition", u.Partition}} {
		if kv[1] != "" {
			s += " " + kv[0] + "=" + kv[1]
		}
	}
	return s
}

// PlanTo returns the plan of service's upstream that up names, failing tb if
// there is none or more than one, and listing what there is.
func PlanTo(tb testing.TB, src mesh.Source, service string, up Upstream) resolve.Plan {
	tb.Helper()
	var found []resolve.Plan
	var all []string
	for _, p := range resolve.PlanAll(src.View()) {
		if p.Service != service {
			continue
		}
		all = append(all, describe(p))
		if up.matches(p) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		tb.Fatalf("resolvetest: no upstream %s of service %q; it has: %s", up, service, strings.Join(all, ", "))
	case 1:
		return found[0]
	default:
		var which []string
		for _, p := range found {
			which = append(which, describe(p))
		}
		if slices.Equal(which, slices.Repeat(which[:1], len(which))) { // the same place each time
			tb.Fatalf("resolvetest: upstream %s of service %q is defined %d times, each %s", up, service, len(found), which[0])
		}
		tb.Fatalf("resolvetest: upstream %s of service %q is ambiguous: %s; say which with Upstream's Datacenter, Peer, Namespace or Partition",
			up, service, strings.Join(which, ", "))
	}
	return resolve.Plan{}
}

// describe names an upstream by where it is.
func describe(p resolve.Plan) string {
	where := "datacenter=" + p.Datacenter
	if p.Peer != "" {
		where = "peer=" + p.Peer
	}
	return fmt.Sprintf("%s (%s namespace=%s partition=%s)", p.Upstream, where, p.Namespace, p.Partition)
}

// Want is what a test expects of a plan; zero fields are not checked. Dial
// is checked when it is not nil (an empty, non-nil Dial expects none).
type Want struct {
	// Mode is the mode as set; NoMode expects none set at any layer (Mode
	// "", from the "default" layer), which Mode cannot say.
	Mode   api.MeshGatewayMode
	NoMode bool
	Layer  modes.Layer
	Route  resolve.Path
	SNI    string
	Dial   []string
	// Subset is the service-resolver subset the SNI names.
	Subset string
}

// Expect checks plan against want and fails tb with one line per field that
// differs, as "field: got X, want Y".
func Expect(tb testing.TB, plan resolve.Plan, want Want) {
	tb.Helper()
	var diffs []string
	check := func(field string, got, want any, set bool) {
		if set && fmt.Sprint(got) != fmt.Sprint(want) {
			diffs = append(diffs, fmt.Sprintf("  %s: got %q, want %q", field, fmt.Sprint(got), fmt.Sprint(want)))
		}
	}
	check("mode", plan.Mode, want.Mode, want.Mode != "")
	if want.NoMode && (plan.Mode != "" || plan.Layer != modes.LayerDefault) {
		diffs = append(diffs, fmt.Sprintf("  mode: got %q from %s, want none set", plan.Mode, plan.Layer))
	}
	check("source (the deciding layer)", plan.Layer, want.Layer, want.Layer != "")
	check("route", plan.Route, want.Route, want.Route != "")
	check("sni", plan.SNI, want.SNI, want.SNI != "")
	check("dial", plan.Dial, want.Dial, want.Dial != nil)
	check("subset", plan.Subset, want.Subset, want.Subset != "")
	if len(diffs) > 0 {
		tb.Errorf("resolvetest: plan of %s -> %s differs:\n%s", plan.Service, describe(plan), strings.Join(diffs, "\n"))
	}
}

// Chain describes plan's discovery chain, one string per target in the
// order a dialer tries them: the target (resolve.Target.String) and its
// route, such as "api dc1 direct", "api dc2 local-gateway",
// "v1.api dc2 remote-gateway" or "api peer other remote-gateway".
func Chain(plan resolve.Plan) []string {
	var out []string
	for _, t := range plan.Chain() {
		out = append(out, t.String()+" "+string(t.Route))
	}
	return out
}

// ExpectChain checks plan's discovery chain (see Chain) against want, in
// one line: the primary target first, then each failover target.
//
//	resolvetest.ExpectChain(t, plan, "api dc1 direct", "api dc2 local-gateway")
func ExpectChain(tb testing.TB, plan resolve.Plan, want ...string) {
	tb.Helper()
	if got := Chain(plan); !slices.Equal(got, want) {
		tb.Errorf("resolvetest: chain of %s -> %s differs:\n  got  %q\n  want %q", plan.Service, describe(plan), got, want)
	}
}

// ExpectExport checks where a peer's connection to the exported service
// name (in namespace; empty means "default") goes (resolve.RouteExported),
// in one line: the primary target's healthy endpoints, in the catalog's
// order (an exporting gateway never fails over: a primary without healthy
// endpoints refuses). Whether the service is exported to a given peer is
// the routing.PeeringRouter's to say.
//
//	resolvetest.ExpectExport(t, src, "api", "", "10.0.1.11:21000")
func ExpectExport(tb testing.TB, src mesh.Source, name, namespace string, want ...string) {
	tb.Helper()
	r := resolve.RouteExported(src.View(), name, namespace)
	if got := r.Primary; !slices.Equal(got, want) {
		tb.Errorf("resolvetest: export of %q (namespace %q) resolves to %s and goes to %q, want %q (left out: %q; not failed over to: %q)",
			name, namespace, r.Target, got, want, r.Skipped, r.NotFailedOver)
	}
}

// Plan returns the plan of service's upstream named upstream, failing tb if
// the view has no such upstream or has it more than once (PlanTo then says
// which).
func Plan(tb testing.TB, src mesh.Source, service, upstream string) resolve.Plan {
	tb.Helper()
	return PlanTo(tb, src, service, Upstream{Name: upstream})
}

// Dir writes files (name to contents) into a new temporary directory and
// returns its path, for tests that keep their config inline.
func Dir(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// Route returns the route a mesh gateway registered as gatewayService
// (empty: routing.DefaultGatewayService, "mesh-gateway") gives a
// connection for serverName over src, as routing.New routes it (what
// examples/meshgateway and explain run): its targets in the catalog's
// order, the load-balancing policy and weights the gateway applies to
// them, and the limits of the gateway's own service-defaults. It fails tb,
// naming the reason, when the name is refused.
//
//	route := resolvetest.Route(t, src, "", "api.default.dc1.internal."+td)
//	resolvetest.ExpectRoute(t, route, resolvetest.WantRoute{Policy: "least_request", MaxConnections: 5})
func Route(tb testing.TB, src mesh.Source, gatewayService, serverName string) gateway.Route {
	tb.Helper()
	route, reason, err := routeOf(src, gatewayService, serverName)
	if err != nil {
		tb.Fatalf("resolvetest: %s is refused (%s): %v", serverName, reason, err)
	}
	return route
}

// ExpectRefused checks that a mesh gateway over src refuses serverName
// with reason (routing's Reason constants), as Route would route it.
func ExpectRefused(tb testing.TB, src mesh.Source, gatewayService, serverName, reason string) {
	tb.Helper()
	route, got, err := routeOf(src, gatewayService, serverName)
	switch {
	case err == nil:
		tb.Errorf("resolvetest: %s routes to %q (%s), want it refused with %q", serverName, route.Targets, route.Name, reason)
	case got != reason:
		tb.Errorf("resolvetest: %s is refused with %q, want %q: %v", serverName, got, reason, err)
	}
}

func routeOf(src mesh.Source, gatewayService, serverName string) (gateway.Route, string, error) {
	r := routing.New(src)
	r.SetGatewayService(gatewayService)
	route, err := r.Route(context.Background(), &sni.ClientHello{ServerName: serverName})
	if err != nil {
		var rej *gateway.Rejection
		if errors.As(err, &rej) {
			return route, rej.Reason, err
		}
		return route, gateway.ReasonRouterError, err
	}
	return route, "", nil
}

// WantRoute is what ExpectRoute checks of a route; a zero field is not
// checked.
type WantRoute struct {
	// Kind is the route's kind (routing.RouteService, RouteGateway, ...).
	Kind string
	// Targets are the route's targets, in the catalog's order.
	Targets []string
	// Policy is the load-balancing policy the gateway applies
	// (gateway.BalanceRoundRobin, BalanceLeastRequest, BalanceRandom), and
	// ChoiceCount least_request's sample.
	Policy      string
	ChoiceCount int
	// Weights are the targets' weights, in order (all 1: nil).
	Weights []int
	// MaxConnections, MaxPendingRequests and MaxConcurrentRequests are the
	// route's limits; NoLimits says it has none.
	MaxConnections, MaxPendingRequests, MaxConcurrentRequests int
	NoLimits                                                  bool
}

// ExpectRoute checks route against want, naming each field that differs.
func ExpectRoute(tb testing.TB, route gateway.Route, want WantRoute) {
	tb.Helper()
	var diffs []string
	differ := func(field string, got, want any) {
		diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", field, got, want))
	}
	if want.Kind != "" && route.Kind != want.Kind {
		differ("kind", route.Kind, want.Kind)
	}
	if want.Targets != nil && !slices.Equal(route.Targets, want.Targets) {
		differ("targets", route.Targets, want.Targets)
	}
	if want.Policy != "" && route.Balance.Policy != want.Policy {
		differ("policy", route.Balance.Policy, want.Policy)
	}
	if want.ChoiceCount != 0 && route.Balance.ChoiceCount != want.ChoiceCount {
		differ("choice_count", route.Balance.ChoiceCount, want.ChoiceCount)
	}
	if want.Weights != nil && !slices.Equal(route.Weights, want.Weights) {
		differ("weights", route.Weights, want.Weights)
	}
	limit := func(field string, got *int, want int) {
		switch {
		case want == 0:
		case got == nil:
			differ(field, "none", want)
		case *got != want:
			differ(field, *got, want)
		}
	}
	limit("MaxConnections", route.Limits.MaxConnections, want.MaxConnections)
	limit("MaxPendingRequests", route.Limits.MaxPendingRequests, want.MaxPendingRequests)
	limit("MaxConcurrentRequests", route.Limits.MaxConcurrentRequests, want.MaxConcurrentRequests)
	if want.NoLimits && !route.Limits.IsZero() {
		differ("limits", fmt.Sprintf("%+v", route.Limits), "none")
	}
	if len(diffs) > 0 {
		tb.Errorf("resolvetest: route %q:\n\t%s", route.Name, strings.Join(diffs, "\n\t"))
	}
}
