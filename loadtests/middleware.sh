#!/usr/bin/env bash
# Load test: what per-route middleware and traffic splitting cost on the hello component. The
# same gateway serves three routes, measured one after another with the same wrk settings:
#   /plain   the hello component, no middleware
#   /layers  the same with cors, headers and compression (hello's 21-byte body is below
#            compression's threshold, so this measures the layers, not gzip)
#   /split   a split of the hello component 50/50 under two names, sticky by header
#
#   loadtests/middleware.sh
#   CARGO_TARGET_DIR=/elsewhere loadtests/middleware.sh    # builds and runs from there
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo

hello="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"
config="$RESULTS/wasmgate-middleware.toml"
cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18590"
[admin]
listen = "127.0.0.1:19590"
[logging]
access_log = false
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
[[route]]
path = "/plain"
component = "$hello"
max_concurrency = 256
[[route]]
path = "/layers"
component = "$hello"
max_concurrency = 256
compression = true
cors = { allow_origins = ["https://app.example.com"] }
headers = { response_set = { x-frame-options = "DENY" }, response_remove = ["x-powered-by"] }
[[route]]
path = "/split"
targets = [{ component = "$hello", weight = 50, name = "a" }, { component = "$hello", weight = 50, name = "b" }]
sticky = { header = "x-user" }
max_concurrency = 256
TOML
RUST_LOG=warn "$RELEASE/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18590/plain

results=()
results+=("$(bench plain http://127.0.0.1:18590/plain)")
results+=("$(bench layers http://127.0.0.1:18590/layers -H 'Origin: https://app.example.com' -H 'Accept-Encoding: gzip')")
results+=("$(bench split http://127.0.0.1:18590/split)")

printf '%-8s %10s %10s %10s\n' route req/s p50_ms p99_ms
for r in "${results[@]}"; do printf '%-8s %10s %10s %10s %s\n' $r; done
