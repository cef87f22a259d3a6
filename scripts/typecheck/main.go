// Command typecheck type-checks Go packages, their tests and every package
// they import, from source, for the GOOS and GOARCH of its environment,
// without compiling anything. scripts/crossbuild.sh runs it for the systems
// .ci/run does not compile for: it finds what a build would find in code
// that a build constraint selects (an identifier a system's syscall package
// lacks, a file missing for a system) in about a seventh of a build's CPU.
//
//	GOOS=aix GOARCH=ppc64 CGO_ENABLED=0 go run . -C ../.. ./...
//
// It prints each error and exits 1 if there was any.
package main

import (
	"flag"
	"fmt"
	"os"

	"golang.org/x/tools/go/packages"
)

func main() {
	dir := flag.String("C", ".", "the module `directory` to load the patterns from")
	tests := flag.Bool("tests", true, "type-check the packages' tests too")
	flag.Parse()
	cfg := &packages.Config{
		Mode:  packages.NeedName | packages.NeedImports | packages.NeedDeps | packages.NeedSyntax | packages.NeedTypes | packages.NeedTypesInfo,
		Dir:   *dir,
		Tests: *tests,
	}
	pkgs, err := packages.Load(cfg, flag.Args()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "typecheck:", err)
		os.Exit(1)
	}
	if packages.PrintErrors(pkgs) > 0 {
		os.Exit(1)
	}
	fmt.Printf("typecheck: %d packages and their imports type-check\n", len(pkgs))
}
