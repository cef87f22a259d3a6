#!/usr/bin/env bash
# peerbench.sh installs the peers from Debian's packages if missing, then runs
# the comparison harness (tools/peerbench). Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-stream haproxy >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream haproxy >/dev/null
fi
# System calls are counted with perf's tracepoints, or strace without perf.
if ! command -v perf >/dev/null && ! command -v strace >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
fi
# nginx from the package starts a default site; the harness runs its own.
systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || true
exec go run ./tools/peerbench "$@"
