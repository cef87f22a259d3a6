package docs_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every ```go block of the README and the guides is code that exists: a
// whole program (package main) compiles and passes go vet against this
// module; a fragment says where it comes from with a
// `<!-- from: PATH FUNC -->` comment on the line before it, and its lines
// are lines of that function, in order, so that it cannot drift from the
// code the tests run.
func TestGoBlocksAreRealCode(t *testing.T) {
	root, files := docFiles(t)
	total := 0
	for _, file := range files {
		for _, b := range blocks(t, file, "go") {
			total++
			name := fmt.Sprintf("%s:%d", filepath.Base(file), b.Line)
			t.Run(name, func(t *testing.T) {
				switch {
				case b.From != "":
					require.NoError(t, fragmentOf(root, b.From, b.Body), "%s: the go block", name)
				case strings.HasPrefix(b.Body, "package main\n"):
					t.Parallel()
					vetProgram(t, root, b.Body)
				default:
					t.Fatalf("%s: a go block is a whole program (package main) or names where it comes from with <!-- from: PATH FUNC --> on the line before", name)
				}
			})
		}
	}
	require.NotZero(t, total, "no go blocks found: the test looks in the wrong place")
}

// vetProgram compiles a program as a file of this module's, with its
// dependencies, and runs go vet on it.
func vetProgram(t *testing.T, root, src string) {
	path := filepath.Join(t.TempDir(), "main.go")
	require.NoError(t, os.WriteFile(path, []byte(src), 0o600))
	cmd := exec.Command("go", "vet", path)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go vet of the program:\n%s\n%s", out, numbered(src))
}

// fragmentOf checks that every non-blank line of fragment is a line of
// the function from names ("PATH FUNC", FUNC a function or a method's
// name), in order, ignoring indentation.
func fragmentOf(root, from, fragment string) error {
	parts := strings.Fields(from)
	if len(parts) != 2 {
		return fmt.Errorf("from %q: want PATH FUNC", from)
	}
	path := filepath.Join(root, filepath.FromSlash(parts[0]))
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, 0)
	if err != nil {
		return err
	}
	var fn *ast.FuncDecl
	for _, d := range f.Decls {
		if d, ok := d.(*ast.FuncDecl); ok && d.Name.Name == parts[1] {
			fn = d
		}
	}
	if fn == nil {
		return fmt.Errorf("%s has no function %s", parts[0], parts[1])
	}
	body := nonBlankLines(string(src[fset.Position(fn.Pos()).Offset:fset.Position(fn.End()).Offset]))
	j := 0
	for _, line := range nonBlankLines(fragment) {
		for j < len(body) && body[j] != line {
			j++
		}
		if j == len(body) {
			return fmt.Errorf("line %q is not in %s %s, or not in this order", line, parts[0], parts[1])
		}
		j++
	}
	return nil
}

func nonBlankLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func numbered(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(src, "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, l)
	}
	return b.String()
}

// A fragment must be its function's lines in order; anything else is
// caught.
func TestFragmentOf(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	const from = "docs/gocode_test.go nonBlankLines"
	require.NoError(t, fragmentOf(root, from, "var out []string\n\n  return out\n"))
	require.ErrorContains(t, fragmentOf(root, from, "return out\nvar out []string\n"), "not in this order")
	require.ErrorContains(t, fragmentOf(root, from, "var out []int\n"), `"var out []int"`)
	require.ErrorContains(t, fragmentOf(root, "docs/gocode_test.go noSuchFunc", "x"), "no function noSuchFunc")
}
