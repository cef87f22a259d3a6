package resolvetest_test

import (
	"fmt"
	"path/filepath"
	"testing"

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
	msg string
}

type fatal struct{}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	panic(fatal{})
}

func check(t *testing.T, f func(tb testing.TB)) string {
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
	return r.msg
}

var seeds = filepath.Join("..", "..", "config", "testdata", "seeds")

func TestPlanFailsClearly(t *testing.T) {
	src := resolvetest.Load(t, resolve.StaticOptions{}, filepath.Join(seeds, "upstreams.hcl"))
	p := resolvetest.Plan(t, src, "web", "db")
	assert.Equal(t, "db", p.Upstream)

	msg := check(t, func(tb testing.TB) { resolvetest.Plan(tb, src, "web", "cache") })
	assert.Equal(t, `resolvetest: no upstream "cache" of service "web"; the files define: web->api, web->db, web->logging`, msg)

	twice := resolvetest.Load(t, resolve.StaticOptions{}, filepath.Join(seeds, "instance-remote.hcl"))
	msg = check(t, func(tb testing.TB) { resolvetest.Plan(tb, twice, "web", "api") })
	assert.Equal(t, `resolvetest: upstream "api" of service "web" is defined 2 times`, msg)
}

func TestLoadFailsWithEveryProblem(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"bad.hcl": "service {\n  nam = \"web\"\n}\n"})
	msg := check(t, func(tb testing.TB) { resolvetest.Load(tb, resolve.StaticOptions{}, dir) })
	require.NotEmpty(t, msg)
	assert.Contains(t, msg, `bad.hcl:2: service: unknown key "nam" (did you mean "name"?)`)
}
