package resolvetest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is a testing.TB whose Fatalf records the message and stops the
// helper the way testing.T does, by ending the goroutine's work (a panic
// recovered by check).
type recorder struct {
	testing.TB
	msg, logs string
}

func (r *recorder) Errorf(format string, args ...any) { r.msg = fmt.Sprintf(format, args...) }
func (r *recorder) Logf(format string, args ...any)   { r.logs += fmt.Sprintf(format, args...) + "\n" }

type fatal struct{}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	panic(fatal{})
}

func check(t *testing.T, f func(tb testing.TB)) string {
	return record(t, f).msg
}

func record(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if v := recover(); v != nil {
				if _, ok := v.(fatal); !ok {
					panic(v)
				}
			}
		}()
		f(r)
	}()
	return r
}

var seeds = filepath.Join("..", "..", "config", "testdata", "seeds")

func TestPlanFailsClearly(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, filepath.Join(seeds, "upstreams.hcl"))
	p := resolvetest.Plan(t, src, "web", "db")
	assert.Equal(t, "db", p.Upstream)

	msg := check(t, func(tb testing.TB) { resolvetest.Plan(tb, src, "web", "cache") })
	assert.Equal(t, `resolvetest: no upstream cache of service "web"; it has: api (datacenter=dc1 namespace=default partition=default), `+
		`db (datacenter=dc1 namespace=default partition=default), logging (datacenter=dc1 namespace=default partition=default)`, msg)

	twice := resolvetest.Load(t, config.StaticOptions{}, filepath.Join(seeds, "instance-remote.hcl"))
	msg = check(t, func(tb testing.TB) { resolvetest.Plan(tb, twice, "web", "api") })
	assert.Equal(t, `resolvetest: upstream api of service "web" is defined 2 times, each api (datacenter=secondary namespace=default partition=default)`, msg)
}

func TestLoadFailsWithEveryProblem(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"bad.hcl": "service {\n  nam = \"web\"\n}\n"})
	msg := check(t, func(tb testing.TB) { resolvetest.Load(tb, config.StaticOptions{}, dir) })
	require.NotEmpty(t, msg)
	assert.Contains(t, msg, `bad.hcl:2: service: unknown key "nam" (did you mean "name"?)`)
}

const td = "11111111-2222-3333-4444-555555555555.consul"

// Three upstreams named api: PlanTo tells them apart by where they are.
func TestPlanToChoosesByLocation(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"web.hcl": `
service {
  name = "web"
  connect { sidecar_service { proxy {
    upstreams = [
      { destination_name = "api", datacenter = "dc2", local_bind_port = 10001 },
      { destination_name = "api", datacenter = "dc3", local_bind_port = 10002 },
      { destination_name = "api", destination_peer = "other", local_bind_port = 10003 },
    ]
  } } }
}
topology {
  datacenter   = "dc1"
  trust_domain = "` + td + `"
  gateways = [{ datacenter = "dc2", wan_addresses = ["192.0.2.2:8443"] }]
}
`})
	src := resolvetest.Load(t, config.StaticOptions{}, dir)
	assert.Equal(t, 10001, resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Datacenter: "dc2"}).LocalBindPort)
	assert.Equal(t, 10002, resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Datacenter: "DC3"}).LocalBindPort)
	assert.Equal(t, 10003, resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Peer: "other"}).LocalBindPort)

	msg := check(t, func(tb testing.TB) { resolvetest.PlanTo(tb, src, "web", resolvetest.Upstream{Name: "api"}) })
	assert.Equal(t, `resolvetest: upstream api of service "web" is ambiguous: api (datacenter=dc2 namespace=default partition=default), `+
		`api (datacenter=dc3 namespace=default partition=default), api (peer=other namespace=default partition=default); `+
		`say which with Upstream's Datacenter, Peer, Namespace or Partition`, msg)
	msg = check(t, func(tb testing.TB) {
		resolvetest.PlanTo(tb, src, "web", resolvetest.Upstream{Name: "api", Datacenter: "dc9"})
	})
	assert.Contains(t, msg, "resolvetest: no upstream api datacenter=dc9 of service \"web\"; it has: api (datacenter=dc2")

	// Expect: one line per field that differs.
	plan := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api", Datacenter: "dc2"})
	resolvetest.Expect(t, plan, resolvetest.Want{Layer: modes.LayerDefault, Route: resolve.PathDirect,
		SNI: "api.default.dc2.internal." + td, Dial: []string{}})
	msg = check(t, func(tb testing.TB) {
		resolvetest.Expect(tb, plan, resolvetest.Want{Route: resolve.PathLocalGateway, SNI: "api.default.dc2.internal." + td, Dial: []string{"192.0.2.2:8443"}})
	})
	assert.Equal(t, "resolvetest: plan of web -> api (datacenter=dc2 namespace=default partition=default) differs:\n"+
		"  route: got \"direct\", want \"local-gateway\"\n  dial: got \"[]\", want \"[192.0.2.2:8443]\"", msg)
}

// A test that gives no trust domain is told which one it got.
func TestLoadSaysWhichTrustDomain(t *testing.T) {
	r := record(t, func(tb testing.TB) {
		resolvetest.Load(tb, config.StaticOptions{}, filepath.Join(seeds, "upstreams.hcl"))
	})
	assert.Contains(t, r.logs, "no trust domain given")
	assert.Contains(t, r.logs, config.DefaultTrustDomain)
	r = record(t, func(tb testing.TB) {
		resolvetest.Load(tb, config.StaticOptions{TrustDomain: td}, filepath.Join(seeds, "upstreams.hcl"))
	})
	assert.Empty(t, r.logs)
	// A topology that names the default trust domain has given one.
	topo := filepath.Join(t.TempDir(), "topology.hcl")
	require.NoError(t, os.WriteFile(topo, []byte("topology {\n  trust_domain = \""+config.DefaultTrustDomain+"\"\n}\n"), 0o600))
	r = record(t, func(tb testing.TB) {
		resolvetest.Load(tb, config.StaticOptions{}, filepath.Join(seeds, "upstreams.hcl"), topo)
	})
	assert.Empty(t, r.logs, "the topology gave the trust domain, even if it is the default one")
}

// ExpectExport asserts an export's route in one line, and says what it
// got when it differs: the default subset's endpoints, never the failover
// target's, as Consul's exporting gateway.
func TestExpectExport(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, map[string]string{
		"topology.hcl": `topology {
  services = [
    { name = "api", addresses = ["127.0.0.10:21000", "127.0.0.11:21000"] },
    { name = "api", subset = "v1", addresses = ["127.0.0.11:21000"] },
    { name = "api-backup", addresses = ["127.0.0.20:21000"] },
  ]
}`,
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v1\"\nSubsets = { v1 = {} }\nFailover = { \"*\" = { Service = \"api-backup\" } }\n"}))
	resolvetest.ExpectExport(t, src, "api", "", "127.0.0.11:21000")
	for _, wrong := range [][]string{{"127.0.0.10:21000"}, {"127.0.0.11:21000", "127.0.0.20:21000"}} {
		ft := &testing.T{}
		resolvetest.ExpectExport(ft, src, "api", "", wrong...)
		assert.True(t, ft.Failed(), "%v", wrong)
	}
}
