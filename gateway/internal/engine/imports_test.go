package engine_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/meshgate/meshgate"

// The packages under gateway/internal, by role. Every package there must
// be listed, so that a new engine is held to the rules below.
var (
	contract = "gateway/internal/engine"
	engines  = []string{"gateway/internal/epoll", "gateway/internal/goroutine", "gateway/internal/iouring"}
	helpers  = []string{"gateway/internal/freelist", "gateway/internal/rawsock"}
)

// The engines reach the server only through the contract: no engine
// package, nor the contract, nor a helper imports package gateway,
// directly or through another package (so none can see Server's fields,
// lock or maps); an engine does not import another engine (it hands over
// through the contract); the contract imports no engine; and no package
// there reaches around the compiler with go:linkname. Files of every
// GOOS are read, whatever this one is. Since package gateway imports every
// engine (checked too), the compiler also refuses such an import as a
// cycle; this test names the rule, and covers an engine not yet wired in.
func TestEnginesStandOnTheContract(t *testing.T) {
	root := moduleRoot(t)
	entries, err := os.ReadDir(filepath.Join(root, "gateway", "internal"))
	if err != nil {
		t.Fatal(err)
	}
	known := append(append([]string{contract}, engines...), helpers...)
	for _, e := range entries {
		if p := "gateway/internal/" + e.Name(); e.IsDir() && !slices.Contains(known, p) {
			t.Errorf("%s is not classified as the contract, an engine or a helper in this test: add it to one of them", p)
		}
	}

	g := importGraph{root: root, imports: map[string][]string{}}
	for _, p := range known {
		if path := g.reaches(t, p, "gateway"); path != nil {
			t.Errorf("%s imports package gateway (%s): an engine reaches the server only through %s", p, strings.Join(path, " -> "), contract)
		}
		g.noLinkname(t, p)
	}
	for _, e := range engines {
		if path := g.reaches(t, contract, e); path != nil {
			t.Errorf("the contract imports the engine %s (%s)", e, strings.Join(path, " -> "))
		}
		for _, other := range engines {
			if path := g.reaches(t, e, other); other != e && path != nil {
				t.Errorf("engine %s imports engine %s (%s): engines hand over through %s", e, other, strings.Join(path, " -> "), contract)
			}
		}
		if !slices.Contains(g.direct(t, e), contract) {
			t.Errorf("engine %s does not import %s", e, contract)
		}
	}
	for _, e := range engines {
		if !slices.Contains(g.direct(t, "gateway"), e) {
			t.Errorf("package gateway does not use the engine %s", e)
		}
	}
}

// importGraph reads the module's imports from its source files (tests
// excluded, every build tag included).
type importGraph struct {
	root    string
	imports map[string][]string // package (module-relative) -> module packages it imports
}

func (g *importGraph) direct(t *testing.T, pkg string) []string {
	if imps, ok := g.imports[pkg]; ok {
		return imps
	}
	files, err := filepath.Glob(filepath.Join(g.root, filepath.FromSlash(pkg), "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s: %v", pkg, err)
	}
	var imps []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, is := range file.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			if rel, ok := strings.CutPrefix(p, module+"/"); ok && !slices.Contains(imps, rel) {
				imps = append(imps, rel)
			}
		}
	}
	g.imports[pkg] = imps
	return imps
}

// reaches returns a chain of imports from pkg to target, or nil if there
// is none.
func (g *importGraph) reaches(t *testing.T, pkg, target string) []string {
	seen := map[string]bool{}
	var walk func(p string) []string
	walk = func(p string) []string {
		if p == target {
			return []string{p}
		}
		if seen[p] {
			return nil
		}
		seen[p] = true
		for _, q := range g.direct(t, p) {
			if path := walk(q); path != nil {
				return append([]string{p}, path...)
			}
		}
		return nil
	}
	return walk(pkg)
}

// noLinkname fails if a file of pkg (tests aside) has a go:linkname
// directive.
func (g *importGraph) noLinkname(t *testing.T, pkg string) {
	files, _ := filepath.Glob(filepath.Join(g.root, filepath.FromSlash(pkg), "*.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "//go:linkname") {
			t.Errorf("%s uses go:linkname", f)
		}
	}
}

// moduleRoot finds the directory of go.mod above the test's.
func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
