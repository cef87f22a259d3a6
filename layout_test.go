package meshgate_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/meshgate/meshgate"

// rule says what the packages matching Packages may not link (their
// non-test dependencies, direct or not): any package whose import path
// starts with one of Forbidden. AllowOnly, when set, is the other way
// round: every meshgate package they link must start with one of its
// prefixes. Why is what the layout loses otherwise (docs/design.md).
type rule struct {
	Packages  string // an import path, or a prefix ending in "/..."
	Forbidden []string
	AllowOnly []string
	Why       string
	// Future marks a rule for packages that may not exist yet (the
	// engines moving under gateway/internal): it holds once they do.
	Future bool
}

// layout is docs/design.md's "allowed imports", as a test.
var layout = []rule{
	{Packages: "sni", AllowOnly: []string{"internal/"},
		Why: "sni is the ground floor: ClientHellos and Consul's names"},
	{Packages: "gateway/...", AllowOnly: []string{"sni", "gateway/", "internal/"},
		Why: "the data path knows nothing of Consul"},
	{Packages: "gateway/internal/...", AllowOnly: []string{"gateway/internal/", "sni", "internal/"}, Future: true,
		Why: "an engine under gateway sees a narrow interface, not Server: it imports no gateway"},
	{Packages: "mesh", AllowOnly: []string{"sni", "internal/"},
		Why: "the model imports no rules, sources or data path"},
	{Packages: "modes", AllowOnly: []string{"internal/"},
		Why: "mode precedence is a pure function of Consul's types"},
	{Packages: "resolve", Forbidden: []string{"gateway", "config", "routing", "consulview", "google.golang.org/grpc"},
		Why: "resolve is Consul's rules only, over mesh: no data path, no file loaders"},
	{Packages: "config", Forbidden: []string{"gateway", "resolve", "routing", "consulview", "sidecar"},
		Why: "files become a mesh.View; they plan and route nothing"},
	{Packages: "sidecar", Forbidden: []string{"gateway", "config", "routing", "consulview", "gatewaycert",
		"google.golang.org/grpc", "github.com/envoyproxy/"},
		Why: "a program that only dials upstreams links no gateway, file parsers, gRPC or Envoy protos"},
	{Packages: "routing", Forbidden: []string{"config", "consulview", "registration", "gatewaycert", "sidecar"},
		Why: "routing is a pure function of a mesh.Source; sources are the program's to choose"},
	{Packages: "consulview", Forbidden: []string{"gateway", "routing", "config", "sidecar"},
		Why: "a live agent as a mesh.Source, nothing more"},
	{Packages: "internal/...", AllowOnly: []string{"internal/"},
		Why: "internal/ is the ground: nothing in it runs back up the import graph (rigs that need meshgate's packages are public test packages, such as routing/routingtest)"},
}

// A package's non-test dependencies respect the layout: go list -deps
// -test=false, for every package of the module.
func TestImportsFollowTheLayout(t *testing.T) {
	deps := moduleDeps(t)
	for _, r := range layout {
		matched := 0
		for pkg, ds := range deps {
			if !matches(r.Packages, strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")) {
				continue
			}
			matched++
			for _, d := range ds {
				if bad := crosses(r, d); bad != "" {
					t.Errorf("%s links %s (%s): %s", pkg, d, bad, r.Why)
				}
			}
		}
		if !r.Future {
			require.NotZero(t, matched, "rule for %s matches no package: the layout moved without its test", r.Packages)
		}
	}
}

// Every package is drawn in docs/design.md's picture of the layout, and
// imports only packages on its own line or below it: go list, for every
// package of the module, against the picture as the reader sees it.
func TestImportsRunDownThePicture(t *testing.T) {
	picture := drawnLayout(t)
	for pkg, imports := range moduleImports(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		if rel == "" || rel == "docs" { // the module's doc package, and the guides' tests
			continue
		}
		at := floorOf(picture, rel)
		if at < 0 {
			t.Errorf("%s is not drawn in docs/design.md's picture of the layout: give it a line (or a place on one) above everything it imports and below everything that imports it", rel)
			continue
		}
		for _, imp := range imports {
			if !under(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			if up := floorOf(picture, dep); up >= 0 && up < at {
				t.Errorf("%s imports %s, drawn above it in docs/design.md's picture: the import runs up the layout", rel, dep)
			}
		}
	}
}

// The picture's reading places packages as the reader does.
func TestPictureReading(t *testing.T) {
	picture := [][]string{{"examples"}, {"routing"}, {"routing/l7", "gatewaymetrics"}, {"gateway"}, {"internal"}}
	require.Equal(t, 0, floorOf(picture, "examples/internal/admin"))
	require.Equal(t, 2, floorOf(picture, "routing/l7"), "the nearest name wins")
	require.Equal(t, 1, floorOf(picture, "routing/routingtest"))
	require.Equal(t, 3, floorOf(picture, "gateway/internal/epoll"))
	require.Equal(t, 4, floorOf(picture, "internal/testrig/echo"))
	require.Equal(t, -1, floorOf(picture, "gatewaycert"), "a prefix is a whole path element")
	require.Equal(t, -1, floorOf(picture, "sni"))
}

// The rules catch what they are for.
func TestLayoutRulesCatchACrossing(t *testing.T) {
	find := func(pkgs string) rule {
		for _, r := range layout {
			if r.Packages == pkgs {
				return r
			}
		}
		t.Fatalf("no rule for %s", pkgs)
		return rule{}
	}
	require.NotEmpty(t, crosses(find("resolve"), module+"/gateway"))
	require.NotEmpty(t, crosses(find("resolve"), module+"/config"))
	require.NotEmpty(t, crosses(find("sidecar"), "google.golang.org/grpc/codes"))
	require.NotEmpty(t, crosses(find("sidecar"), module+"/routing/l7"))
	require.NotEmpty(t, crosses(find("internal/..."), module+"/sidecar"))
	require.Empty(t, crosses(find("internal/..."), module+"/internal/tenancy"))
	require.Empty(t, crosses(find("internal/..."), "github.com/hashicorp/consul/api"))
	require.NotEmpty(t, crosses(find("gateway/internal/..."), module+"/gateway"))
	require.Empty(t, crosses(find("gateway/internal/..."), module+"/gateway/internal/x"))
	require.Empty(t, crosses(find("resolve"), module+"/resolvex"), "a prefix is a whole path element")
	require.True(t, matches("gateway/internal/...", "gateway/internal/engine"))
	require.False(t, matches("gateway/internal/...", "gateway"))
	require.True(t, matches("gateway/...", "gateway"))
}

// Errors are joined one way, internal/problems.Join (docs/design.md says
// why): no errors.Join or multierror.Append elsewhere in the library and
// the programs.
func TestErrorsAreJoinedOneWay(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}`, "./...").Output()
	require.NoError(t, err)
	files := strings.Fields(string(out))
	require.NotEmpty(t, files)
	for _, f := range files {
		if strings.Contains(filepath.ToSlash(f), "/internal/problems/") {
			continue
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, call := range []string{"errors.Join(", "multierror.Append("} {
			if bytes.Contains(src, []byte(call)) {
				t.Errorf("%s calls %s: join errors with problems.Join", f, strings.TrimSuffix(call, "("))
			}
		}
	}
}

// crosses returns why dep may not be linked under r, or "".
func crosses(r rule, dep string) string {
	if r.AllowOnly != nil && (dep == module || strings.HasPrefix(dep, module+"/")) {
		rel := strings.TrimPrefix(strings.TrimPrefix(dep, module), "/")
		for _, a := range r.AllowOnly {
			if under(rel, a) {
				return ""
			}
		}
		return "not among " + strings.Join(r.AllowOnly, ", ")
	}
	for _, f := range r.Forbidden {
		path := f
		if !strings.Contains(f, ".") {
			path = module + "/" + f
		}
		if under(dep, path) {
			return "forbidden: " + f
		}
	}
	return ""
}

// under reports whether path is prefix or below it; a prefix ending in "/"
// is a tree.
func under(path, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(path, prefix)
	}
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}

// matches reports whether the module-relative package rel is pattern: an
// import path, or a tree "x/..." (x itself included).
func matches(pattern, rel string) bool {
	if tree, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == tree || strings.HasPrefix(rel, tree+"/")
	}
	return rel == pattern
}

// drawnLayout returns the lines of docs/design.md's picture of the layout
// (the first text block after "## The layout"), top first, each as the
// packages it names: the names before the first run of spaces, separated
// by ", ".
func drawnLayout(t *testing.T) [][]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("docs", "design.md"))
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(doc), "\n## The layout\n")
	require.True(t, ok, "docs/design.md has no section \"## The layout\"")
	_, block, ok := strings.Cut(after, "```text\n")
	require.True(t, ok, "docs/design.md's layout section has no text block (its picture)")
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok, "docs/design.md's picture is not closed")
	var lines [][]string
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		names, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		lines = append(lines, strings.Split(names, ", "))
	}
	require.NotEmpty(t, lines)
	return lines
}

// floorOf returns the index of the line of picture that draws the
// module-relative package rel: the line naming rel or, failing that, its
// nearest parent; -1 if none does.
func floorOf(picture [][]string, rel string) int {
	at, best := -1, -1
	for i, names := range picture {
		for _, n := range names {
			if under(rel, n) && len(n) > best {
				at, best = i, len(n)
			}
		}
	}
	return at
}

// moduleImports returns each package of the module with the packages it
// imports (not its tests), as go list reports them.
func moduleImports(t *testing.T) map[string][]string { return moduleList(t, "Imports") }

// moduleDeps returns each package of the module with its non-test
// dependencies, as go list -deps reports them.
func moduleDeps(t *testing.T) map[string][]string { return moduleList(t, "Deps") }

// moduleList returns field (Imports or Deps) of each package of the
// module, as go list -json reports it.
func moduleList(t *testing.T, field string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-e", "-json=ImportPath,"+field+",Error", "./...").Output()
	require.NoError(t, err)
	lists := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath    string
			Imports, Deps []string
			Error         *struct{ Err string }
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else {
			require.NoError(t, err)
		}
		require.Nil(t, p.Error, "go list %s", p.ImportPath)
		lists[p.ImportPath] = p.Imports
		if field == "Deps" {
			lists[p.ImportPath] = p.Deps
		}
	}
	require.NotEmpty(t, lists)
	return lists
}
