package l7

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
)

// viewCache holds what the terminator works out from one view, once: the
// routes of its exports, each target's load-balancing policy, each
// route's retry policy, and the mesh entry's TLS settings.
type viewCache struct {
	view     *mesh.View
	routes   sync.Map // [3]string{service, subset, namespace} -> *resolve.ExportedRoute
	balances sync.Map // target SNI -> balance
	retries  sync.Map // *api.ServiceRouteDestination -> retryPolicy

	incoming, outgoing tlsParams
}

// cache returns the cache of v, making it (and warning about what v sets
// that cannot apply) when v is new.
func (t *Terminator) cache(v *mesh.View) *viewCache {
	old := t.views.Load()
	if old != nil && old.view == v {
		return old
	}
	vc := &viewCache{view: v}
	var problems []string
	var err error
	if vc.incoming, err = meshTLS(v.Mesh, false); err != nil {
		problems = append(problems, err.Error())
	}
	if vc.outgoing, err = meshTLS(v.Mesh, true); err != nil {
		problems = append(problems, err.Error())
	}
	if !t.views.CompareAndSwap(old, vc) {
		if now := t.views.Load(); now != nil && now.view == v {
			return now
		}
		return vc
	}
	t.warn(append(problems, unapplied(v)...))
	return vc
}

// warn logs problems in one warning, unless it is the last one logged.
func (t *Terminator) warn(problems []string) {
	sort.Strings(problems)
	msg := strings.Join(problems, "; ")
	if last := t.warned.Load(); (last == nil && msg == "") || (last != nil && *last == msg) {
		return
	}
	t.warned.Store(&msg)
	if msg != "" {
		t.logger().Warn("l7: set but not applied to terminated exports: " + msg)
	}
}

// unapplied names the fields of v's config entries, for http, http2 and
// grpc services, that the terminator cannot apply as Consul's gateway
// would: values Consul itself would refuse (a file source is not checked
// by Consul), which fall back to Envoy's defaults.
func unapplied(v *mesh.View) []string {
	var out []string
	for k, r := range v.Resolvers {
		if !httpLike(v.Protocol(k.Name, k.Namespace, k.Partition)) {
			continue
		}
		if _, err := balanceOf(r.LoadBalancer); err != nil {
			out = append(out, fmt.Sprintf("service-resolver %s: LoadBalancer: %v: round_robin", k, strings.TrimPrefix(err.Error(), "l7: ")))
		}
	}
	for k, router := range v.Routers {
		for i, route := range router.Routes {
			if _, err := retryPolicyOf(route.Destination); err != nil {
				out = append(out, fmt.Sprintf("service-router %s: Routes[%d]: %v: no retries", k, i, strings.TrimPrefix(err.Error(), "l7: ")))
			}
		}
	}
	return out
}

// httpLike reports whether protocol is one a terminator serves.
func httpLike(protocol string) bool {
	return protocol == "http" || protocol == "http2" || protocol == "grpc"
}

// route returns the route to subset of service name in namespace, worked
// out once per view.
func (vc *viewCache) route(v *mesh.View, name, subset, namespace string) *resolve.ExportedRoute {
	key := [3]string{name, subset, namespace}
	if r, ok := vc.routes.Load(key); ok {
		return r.(*resolve.ExportedRoute)
	}
	r := resolve.RouteExportedTo(v, name, subset, namespace)
	stored, _ := vc.routes.LoadOrStore(key, &r)
	return stored.(*resolve.ExportedRoute)
}

// balance returns the load-balancing policy of target's cluster: its
// service-resolver's LoadBalancer (injectLBToCluster), Envoy's round
// robin when it sets none or one the terminator cannot apply (unapplied
// names it).
func (vc *viewCache) balance(v *mesh.View, target *resolve.Target) balance {
	if b, ok := vc.balances.Load(target.SNI); ok {
		return b.(balance)
	}
	var lb *api.LoadBalancer
	if r := v.ResolverFor(target.Service, target.Namespace, target.Partition); r != nil {
		lb = r.LoadBalancer
	}
	b, err := balanceOf(lb)
	if err != nil {
		b, _ = balanceOf(nil)
	}
	vc.balances.Store(target.SNI, b)
	return b
}

// retry returns the retry policy of a route's destination (nil: none).
func (vc *viewCache) retry(d *api.ServiceRouteDestination) retryPolicy {
	if d == nil {
		return retryPolicy{}
	}
	if p, ok := vc.retries.Load(d); ok {
		return p.(retryPolicy)
	}
	p, _ := retryPolicyOf(d) // an error leaves no retries; unapplied names it
	vc.retries.Store(d, p)
	return p
}
