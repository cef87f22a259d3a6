#!/usr/bin/env bash
# install-prometheus.sh installs Debian's prometheus package, for the tests
# that have a real Prometheus scrape a gateway (gatewaymetrics' Envoy
# dashboards test), and prints the binary's path on stdout. The package's
# .deb files are kept outside the repository, so that a later install on
# the same machine downloads nothing; the package's own service is not
# started (the tests start Prometheus themselves, on loopback).
#
#   MESHGATE_CACHE  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/meshgate)
#
# Needs root (apt-get), as CI and the developers' machines have. Safe to run
# several times at once (promtest runs it for each test binary that needs
# Prometheus): one install runs under a lock, the others then find it.
set -euo pipefail
if bin=$(command -v prometheus) && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
cache=${MESHGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate}
archives="$cache/apt-archives"
mkdir -p "$archives/partial"
exec 9>"$cache/prometheus-install.lock"
flock 9
if bin=$(command -v prometheus) && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-prometheus.sh: installing Debian's prometheus package needs root; install it (apt-get install prometheus) or set MESHGATE_PROMETHEUS_BIN" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the package's init script from starting a Prometheus of its own.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  added_policy=1
fi
trap '[ -z "$added_policy" ] || rm -f "$policy"' EXIT
apt() { apt-get -o Dir::Cache::archives="$archives" -o DPkg::Lock::Timeout=300 -y -q "$@" >&2; }
if ! apt install --no-install-recommends prometheus; then
  apt update
  apt install --no-install-recommends prometheus
fi
command -v prometheus
