#!/usr/bin/env bash
# Checks the module on other systems than this one, as .ci/run does, each
# package once:
#   - darwin and windows (amd64), where users write and run their routing
#     tests: go vet of every package and its tests, which compiles them all;
#   - every other GOOS Go supports (its first architecture in go tool dist
#     list, so 32-bit ones are covered too), freebsd included: every package,
#     its tests and every package they import type-checked from source with
#     the files that system's build constraints select (scripts/typecheck, a
#     module of its own). That finds what a build would (an identifier the
#     system's syscall package lacks, a file missing for a system) for about
#     a seventh of a build's CPU; compiling them all cost more than the rest
#     of .ci/run together on a fresh 2-core machine.
# On android and ios only the library packages, without their tests: a
# command or a test binary there needs cgo to link. On js, wasip1 and plan9 the packages that import
# github.com/hashicorp/consul/api are left out: a dependency of that module
# (github.com/armon/go-metrics) does not build there. sni and gateway do.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for os in darwin windows; do
  echo "-- $os/amd64: go vet ./..."
  GOOS=$os GOARCH=amd64 go vet ./... || fail=1
done
typecheck=$(mktemp -d)/typecheck
trap 'rm -rf "$(dirname "$typecheck")"' EXIT
(cd scripts/typecheck && go build -o "$typecheck" .)
for target in $(go tool dist list | awk -F/ '!seen[$1]++'); do
  os=${target%/*} arch=${target#*/}
  case $os in darwin | windows | linux) continue ;; esac
  filter='{{.ImportPath}}' tests=true
  case $os in
    android | ios) filter='{{if ne .Name "main"}}{{.ImportPath}}{{end}}' tests=false ;;
    js | wasip1 | plan9)
      filter='{{$api := false}}{{range .Deps}}{{if eq . "github.com/hashicorp/consul/api"}}{{$api = true}}{{end}}{{end}}{{if not $api}}{{.ImportPath}}{{end}}' ;;
  esac
  pkgs=$(GOOS=$os GOARCH=$arch go list -e -f "$filter" ./...)
  echo "-- $os/$arch: type-check of $(echo $pkgs | wc -w) packages (tests: $tests) and their imports"
  GOOS=$os GOARCH=$arch CGO_ENABLED=0 "$typecheck" -tests=$tests $pkgs || fail=1
done
# Linux on a 32-bit architecture: the code under _linux.go files that the
# amd64 build and tests cover, with 32-bit types.
echo "-- linux/386: type-check"
GOOS=linux GOARCH=386 CGO_ENABLED=0 "$typecheck" ./... || fail=1
exit $fail
