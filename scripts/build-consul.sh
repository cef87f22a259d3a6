#!/usr/bin/env bash
# build-consul.sh builds a pinned Consul from the Go module proxy and caches the
# binary outside the repository. It prints the binary's path on stdout.
#
#   CONSUL_VERSION  version to build (default 1.22.0)
#   MESHGATE_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/meshgate)
#
# Some of Consul's dependencies are missing from the checksum database, hence
# GONOSUMDB for github.com/hashicorp. Takes about 5 CPU-minutes on 2 cores.
#
# Safe to run several times at once (go test ./... starts one per test
# package on a fresh machine): one build runs under a lock, and the others
# wait for it and then use its binary.
set -euo pipefail
version=${CONSUL_VERSION:-1.22.0}
cache=${MESHGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate}
bin="$cache/consul-$version/consul"
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache/consul-$version"
# One build at a time: flock where the system has it, else a lock directory
# (mkdir is atomic) that a build left by a killed run holds for at most 30 min.
lock="$cache/consul-$version/build.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  flock 9
else
  until mkdir "$lock.d" 2>/dev/null; do
    if [ -n "$(find "$lock.d" -maxdepth 0 -mmin +30 2>/dev/null)" ]; then rm -rf "$lock.d"; fi
    sleep 2
  done
  trap 'rmdir "$lock.d" 2>/dev/null || true' EXIT
fi
# Another run may have built it while this one waited.
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
work=$(mktemp -d)
tmp=
trap 'rm -rf "$work" ${tmp:+"$tmp"}; rmdir "$lock.d" 2>/dev/null || true' EXIT
cd "$work"
export GONOSUMDB=github.com/hashicorp GOFLAGS=-mod=mod
go mod init meshgate.invalid/buildconsul >/dev/null 2>&1
go get "github.com/hashicorp/consul@v$version" >&2
tmp=$(mktemp "$bin.XXXXXX")
go build -trimpath -o "$tmp" github.com/hashicorp/consul >&2
chmod 755 "$tmp"
mv -f "$tmp" "$bin"
echo "$bin"
