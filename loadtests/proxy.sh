#!/usr/bin/env bash
# Load test: wasmgate as a reverse proxy. The same upstream (the plain hyper hello server,
# examples/hyper_hello.rs) measured direct, through wasmgate's upstream route, and through nginx
# (Debian's package; proxy_pass with keepalive to the upstream), one at a time, same wrk
# settings.
#
#   loadtests/proxy.sh
#   CONNECTIONS=128 DURATION=20s loadtests/proxy.sh
#
# Every server listens on 127.0.0.1; raw wrk output is kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
command -v nginx >/dev/null || { echo "installing nginx (Debian package)" >&2; apt-get update -qq >/dev/null; apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null; }
build_all

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo "nginx: $(nginx -v 2>&1)"
echo

"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_hello" 127.0.0.1:18391 >/dev/null & PIDS+=($!)
wait_http http://127.0.0.1:18391/

results=()
results+=("$(bench direct http://127.0.0.1:18391/)")

config="$RESULTS/wasmgate-proxy.toml"
cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18390"
[admin]
listen = "127.0.0.1:19390"
[logging]
access_log = false
[upstream.hello]
targets = ["http://127.0.0.1:18391"]
[[route]]
path = "/..."
upstream = "hello"
max_concurrency = 1000
TOML
RUST_LOG=warn "${WASMGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/wasmgate}" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18390/
results+=("$(bench wasmgate http://127.0.0.1:18390/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

prefix="$RESULTS/nginx"
mkdir -p "$prefix/logs"
cat > "$prefix/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream hello { server 127.0.0.1:18391; keepalive 128; }
  server {
    listen 127.0.0.1:18392;
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
CONF
nginx -p "$prefix" -c "$prefix/nginx.conf" & PIDS+=($!)
wait_http http://127.0.0.1:18392/
results+=("$(bench nginx http://127.0.0.1:18392/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

printf '%-12s %10s %10s %10s\n' via req/s p50_ms p99_ms
for r in "${results[@]}"; do printf '%-12s %10s %10s %10s %s\n' $r; done
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: [float(x) for x in r.split()[1:4]] for r in sys.argv[1:]}
g, n = rows["wasmgate"], rows["nginx"]
print(f"\nwasmgate / nginx: {g[0] / n[0]:.2f}x req/s, p99 {g[2]:.2f} ms vs {n[2]:.2f} ms")
PY
