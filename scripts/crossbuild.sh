#!/usr/bin/env bash
# Builds the module for other systems than this one, as .ci/run does, each
# package once:
#   - darwin, windows and freebsd (amd64): go vet of every package and its
#     tests, which compiles them all (a separate go build would compile them
#     again for nothing but the links);
#   - every other GOOS Go supports (its first architecture in go tool dist
#     list, so 32-bit ones are covered too): go build of every library package
#     (not the commands, whose linking needs cgo on android and ios), without
#     optimisation (-N -l), which compiles the same files in 30% less CPU.
# On js, wasip1 and plan9 the packages that import
# github.com/hashicorp/consul/api are left out: a dependency of that module
# (github.com/armon/go-metrics) does not build there. sni and gateway do.
# go list -e: listing android and ios reports that linking a command needs
# cgo; the library packages it lists build without.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for os in darwin windows freebsd; do
  echo "-- $os/amd64: go vet ./..."
  GOOS=$os GOARCH=amd64 go vet ./... || fail=1
done
for target in $(go tool dist list | awk -F/ '!seen[$1]++'); do
  os=${target%/*} arch=${target#*/}
  case $os in darwin | windows | freebsd) continue ;; esac
  filter='{{if ne .Name "main"}}{{.ImportPath}}{{end}}'
  case $os in
    js | wasip1 | plan9)
      filter='{{if ne .Name "main"}}{{$api := false}}{{range .Deps}}{{if eq . "github.com/hashicorp/consul/api"}}{{$api = true}}{{end}}{{end}}{{if not $api}}{{.ImportPath}}{{end}}{{end}}' ;;
  esac
  pkgs=$(GOOS=$os GOARCH=$arch go list -e -f "$filter" ./... | grep -v '/tools/' || true)
  echo "-- $os/$arch: go build of $(echo $pkgs | wc -w) library packages"
  GOOS=$os GOARCH=$arch CGO_ENABLED=0 go build -gcflags=all='-N -l' $pkgs || fail=1
done
exit $fail
