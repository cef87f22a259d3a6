package resolve_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// l7Files is api with a service-router, a 50/50 service-splitter across
// its resolver's subsets, and an admin service with a splitter of its own.
var l7Files = map[string]string{
	"topology.hcl": `topology {
  datacenter = "dc1"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000", "127.0.1.11:21000"] },
    { name = "api", subset = "v1", addresses = ["127.0.1.10:21000"] },
    { name = "api", subset = "v2", addresses = ["127.0.1.11:21000"] },
    { name = "admin", addresses = ["127.0.1.20:21000"] },
    { name = "admin-next", addresses = ["127.0.1.21:21000"] },
  ]
}
`,
	"api.hcl": `Kind = "service-resolver"
Name = "api"
Subsets = { v1 = { Filter = "Service.Meta.version == v1" }, v2 = { Filter = "Service.Meta.version == v2" } }
RequestTimeout = "20s"
`,
	"router.hcl": `Kind = "service-router"
Name = "api"
Routes = [
  { Match = { HTTP = { PathPrefix = "/admin/" } }, Destination = { Service = "admin", PrefixRewrite = "/", RequestTimeout = "3s" } },
  { Match = { HTTP = { Header = [{ Name = "x-canary", Exact = "1" }] } }, Destination = { ServiceSubset = "v2", RequestHeaders = { Set = { "x-routed" = "canary" } } } },
  { Match = { HTTP = { PathExact = "/health", Methods = ["GET", "HEAD"] } }, Destination = { ServiceSubset = "v1" } },
  { Match = { HTTP = { PathRegex = "/items/[0-9]+", QueryParam = [{ Name = "debug", Present = true }] } }, Destination = { ServiceSubset = "v1" } },
]
`,
	"splitter.hcl": `Kind = "service-splitter"
Name = "api"
Splits = [
  { Weight = 50, ServiceSubset = "v1", ResponseHeaders = { Add = { "x-split" = "v1" } } },
  { Weight = 50, ServiceSubset = "v2" },
]
`,
	"admin-splitter.hcl": `Kind = "service-splitter"
Name = "admin"
Splits = [{ Weight = 90 }, { Weight = 10, Service = "admin-next" }]
`,
}

// Requests to api go where its service-router and the service-splitters
// send them, as Consul compiles them: the first route that matches, else
// the service; then the destination service's splitter, by weight.
func TestRequestsFollowRoutersAndSplitters(t *testing.T) {
	v := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, l7Files)).View()
	for _, tc := range []struct {
		what, method, target string
		header               map[string]string
		pick                 float32
		service, subset      string
		decided              []string
	}{
		{"no route matches: the split's first half", "GET", "/", nil, 10, "api", "v1",
			[]string{"service-splitter api split 1 (50%)"}},
		{"no route matches: the split's second half", "GET", "/", nil, 60, "api", "v2",
			[]string{"service-splitter api split 2 (50%)"}},
		{"a path prefix to another service, through its own splitter", "GET", "/admin/users", nil, 95, "admin-next", "",
			[]string{"service-router api route 1", "service-splitter admin split 2 (10%)"}},
		{"the other service's splitter to itself", "GET", "/admin/users", nil, 5, "admin", "",
			[]string{"service-router api route 1", "service-splitter admin split 1 (90%)"}},
		{"a header to a subset: no split", "GET", "/", map[string]string{"X-Canary": "1"}, 10, "api", "v2",
			[]string{"service-router api route 2"}},
		{"a header with another value does not match", "GET", "/", map[string]string{"X-Canary": "2"}, 10, "api", "v1",
			[]string{"service-splitter api split 1 (50%)"}},
		{"an exact path and a method", "HEAD", "/health", nil, 60, "api", "v1", []string{"service-router api route 3"}},
		{"an exact path and another method", "POST", "/health", nil, 60, "api", "v2", []string{"service-splitter api split 2 (50%)"}},
		{"a regex over the whole path and a query parameter", "GET", "/items/42?debug", nil, 60, "api", "v1", []string{"service-router api route 4"}},
		{"a regex matches the whole path only", "GET", "/items/42/x?debug", nil, 60, "api", "v2", []string{"service-splitter api split 2 (50%)"}},
		{"a regex without its query parameter", "GET", "/items/42", nil, 60, "api", "v2", []string{"service-splitter api split 2 (50%)"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.target, nil)
			for k, val := range tc.header {
				req.Header.Set(k, val)
			}
			d := resolve.RouteHTTP(v, "api", "", req, tc.pick)
			assert.Equal(t, tc.service, d.Service)
			assert.Equal(t, tc.subset, d.Subset)
			assert.Equal(t, "default", d.Namespace)
			assert.Equal(t, tc.decided, d.Decided)
		})
	}

	admin := resolve.RouteHTTP(v, "api", "", httptest.NewRequest("GET", "/admin/users", nil), 5)
	assert.Equal(t, "/admin/", admin.MatchedPrefix)
	assert.Equal(t, "/", admin.PrefixRewrite)
	assert.Equal(t, 3*time.Second, admin.RequestTimeout, "the route's timeout")
	assert.Equal(t, "admin", admin.Route.Service, "the route's destination, for its retries and idle timeout")
	canary := resolve.RouteHTTP(v, "api", "", httptest.NewRequest("GET", "/", nil), 10)
	assert.Zero(t, canary.RequestTimeout, "after a router, never the resolver's timeout: Envoy's default applies")
	assert.Nil(t, canary.Route, "the router's catch-all route has no destination of its own")
	require.Len(t, canary.ResponseHeaders, 1)
	assert.Equal(t, map[string]string{"x-split": "v1"}, canary.ResponseHeaders[0].Add)

	// Where the destination resolves: the subset's own endpoints.
	route := resolve.RouteExportedTo(v, "api", "v2", "")
	require.Len(t, route.Local, 1)
	assert.Equal(t, []string{"127.0.1.11:21000"}, route.Local[0].Dial)
	assert.Equal(t, "v2.api.default.dc1.internal."+config.DefaultTrustDomain, route.Local[0].SNI)

	// Without a router or splitter, the service itself.
	plain := resolve.RouteHTTP(v, "admin-next", "", httptest.NewRequest("GET", "/", nil), 50)
	assert.Equal(t, resolve.HTTPDestination{Service: "admin-next", Namespace: "default"}, plain)
}

// Routers and splitters that Consul would refuse to store are refused at
// load, naming the entry and what is wrong.
func TestRoutersAndSplittersAreCheckedAsConsulChecksThem(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"Kind = \"service-splitter\"\nName = \"api\"\nSplits = [{ Weight = 50 }, { Weight = 40 }]\n",
			`service-splitter "api": the weights sum to 90.00, not 100`},
		{"Kind = \"service-splitter\"\nName = \"api\"\nSplits = [{ Weight = 33.333 }, { Weight = 66.667 }]\n",
			`Splits[0]: Weight 33.333 is not between 0 and 100 with at most two decimals`},
		{"Kind = \"service-splitter\"\nName = \"api\"\n", `service-splitter "api": no Splits`},
		{"Kind = \"service-router\"\nName = \"api\"\nRoutes = [{ Match = { HTTP = { PathExact = \"/a\", PathPrefix = \"/b\" } } }]\n",
			`Routes[0]: set at most one of PathExact, PathPrefix and PathRegex`},
		{"Kind = \"service-router\"\nName = \"api\"\nRoutes = [{ Match = { HTTP = { PathPrefix = \"b\" } } }]\n",
			`Routes[0]: PathPrefix "b" does not begin with /`},
		{"Kind = \"service-router\"\nName = \"api\"\nRoutes = [{ Match = { HTTP = { PathRegex = \"(\" } } }]\n",
			`Routes[0]: PathRegex "(": error parsing regexp`},
		{"Kind = \"service-router\"\nName = \"api\"\nRoutes = [{ Match = { HTTP = { Header = [{ Name = \"x\", Exact = \"1\", Prefix = \"2\" }] } } }]\n",
			`Routes[0]: Header[0] "x": set exactly one of Present, Exact, Prefix, Suffix and Regex, not 2`},
		{"Kind = \"service-router\"\nName = \"api\"\nRoutes = [{ Destination = { PrefixRewrite = \"/\" } }]\n",
			`Routes[0]: PrefixRewrite needs a PathExact or PathPrefix match`},
	} {
		_, err := config.Parse("entry.hcl", []byte(tc.entry))
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorContains(t, err, "entry.hcl")
	}
	set, err := config.Parse("router.hcl", []byte(l7Files["router.hcl"]))
	require.NoError(t, err)
	assert.Len(t, set.ServiceRouters[mesh.KeyOf("api", "", "")].Routes, 4)
}

// Where the route timeout and the hash policies come from, as Consul's
// makeUpstreamRouteForDiscoveryChain and compiler take them: the resolver's
// RequestTimeout only for a chain that starts at the resolver; the hash
// policies of the node the routing reaches (its resolver after redirects,
// or the first hash-based resolver among a splitter's splits).
func TestRouteTimeoutsAndHashPoliciesFollowTheChain(t *testing.T) {
	v := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{
		"topology.hcl": `topology {
  datacenter = "dc1"
  services = [
    { name = "plain", addresses = ["127.0.1.10:21000"] },
    { name = "old", addresses = ["127.0.1.11:21000"] },
    { name = "split", addresses = ["127.0.1.12:21000"] },
    { name = "round", addresses = ["127.0.1.13:21000"] },
    { name = "hashed", addresses = ["127.0.1.14:21000"] },
  ]
}
`,
		"plain.hcl": `Kind = "service-resolver"
Name = "plain"
RequestTimeout = "7s"
LoadBalancer = { Policy = "ring_hash", HashPolicies = [{ Field = "header", FieldValue = "x-user" }] }
`,
		"old.hcl": `Kind = "service-resolver"
Name = "old"
Redirect = { Service = "plain" }
`,
		"round.hcl": `Kind = "service-resolver"
Name = "round"
LoadBalancer = { Policy = "least_request" }
`,
		"hashed.hcl": `Kind = "service-resolver"
Name = "hashed"
RequestTimeout = "9s"
LoadBalancer = { Policy = "maglev", HashPolicies = [{ SourceIP = true }] }
`,
		"split.hcl": `Kind = "service-splitter"
Name = "split"
Splits = [{ Weight = 50, Service = "round" }, { Weight = 50, Service = "hashed" }]
`,
	})).View()
	get := httptest.NewRequest("GET", "/", nil)

	plain := resolve.RouteHTTP(v, "plain", "", get, 0)
	assert.Equal(t, 7*time.Second, plain.RequestTimeout, "the chain starts at the resolver")
	assert.Equal(t, "x-user", plain.HashPolicies[0].FieldValue)

	old := resolve.RouteHTTP(v, "old", "", get, 0)
	assert.Equal(t, 7*time.Second, old.RequestTimeout, "the redirect's resolver is the node's")
	require.Len(t, old.HashPolicies, 1)

	round := resolve.RouteHTTP(v, "round", "", get, 0)
	assert.Nil(t, round.HashPolicies, "least_request has none")

	for _, pick := range []float32{10, 90} {
		split := resolve.RouteHTTP(v, "split", "", get, pick)
		assert.Zero(t, split.RequestTimeout, "after a splitter, never a resolver's timeout (pick %v)", pick)
		require.Len(t, split.HashPolicies, 1, "the splitter's: the first hash-based split's")
		assert.True(t, split.HashPolicies[0].SourceIP)
	}
}
