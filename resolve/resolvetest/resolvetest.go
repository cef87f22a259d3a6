// Package resolvetest lets another project's tests check routing decisions
// against the same files it gives Consul, in a few lines:
//
//	src := resolvetest.Load(t, resolve.StaticOptions{}, "consul/")
//	plan := resolvetest.Plan(t, src, "web", "api")
//	assert.Equal(t, resolve.PathLocalGateway, plan.Route)
package resolvetest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshgate/meshgate/resolve"
)

// Load loads files and directories as the explain tool does (config entries,
// service definitions, topology) and fails tb with every problem if any.
func Load(tb testing.TB, opts resolve.StaticOptions, paths ...string) *resolve.Static {
	tb.Helper()
	src, err := resolve.LoadStatic(opts, paths...)
	if err != nil {
		tb.Fatalf("resolvetest: loading %s: %v", strings.Join(paths, ", "), err)
	}
	return src
}

// Plan returns the plan of service's upstream named upstream, failing tb if
// the view has no such upstream or has it more than once.
func Plan(tb testing.TB, src resolve.Source, service, upstream string) resolve.Plan {
	tb.Helper()
	var found []resolve.Plan
	var all []string
	for _, p := range resolve.PlanAll(src.View()) {
		all = append(all, p.Service+"->"+p.Upstream)
		if p.Service == service && p.Upstream == upstream {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		tb.Fatalf("resolvetest: no upstream %q of service %q; the files define: %s", upstream, service, strings.Join(all, ", "))
	case 1:
		return found[0]
	default:
		tb.Fatalf("resolvetest: upstream %q of service %q is defined %d times", upstream, service, len(found))
	}
	return resolve.Plan{}
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
