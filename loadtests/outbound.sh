#!/usr/bin/env bash
# Load test: a component that calls an upstream on every request (the `outbound` guest fetching
# the plain hyper hello server), the outgoing request on the route's pooled client. Compare a
# build from before the pooled client by pointing WASMGATE_BIN at it (A/B in one run):
#
#   loadtests/outbound.sh
#   WASMGATE_BIN_B=/tmp/wasmgate-before loadtests/outbound.sh     # adds a run of that binary
#   CARGO_TARGET_DIR=/elsewhere loadtests/outbound.sh              # builds and runs from there
#
# Every server listens on 127.0.0.1; raw wrk output is kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
A=${WASMGATE_BIN:-$RELEASE/wasmgate}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo

"$RELEASE/examples/hyper_hello" 127.0.0.1:18491 >/dev/null & PIDS+=($!)
wait_http http://127.0.0.1:18491/

config="$RESULTS/wasmgate-outbound.toml"
cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18490"
[admin]
listen = "127.0.0.1:19490"
[logging]
access_log = false
[[route]]
path = "/out"
component = "$ROOT/guests/target/wasm32-wasip2/release/outbound.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:18491"]
max_concurrency = 256
TOML

url="http://127.0.0.1:18490/out?url=http%3A%2F%2F127.0.0.1%3A18491%2F"
results=()
run() {
  local name=$1 binary=$2
  "$binary" serve "$config" >/dev/null 2>&1 & local pid=$!
  wait_http "$url"
  results+=("$(bench "$name" "$url")")
  # Connections the gateway holds to the upstream at the end of the run.
  results+=("$name: $(ss -Htn state established '( dport = :18491 )' | wc -l) connections open to the upstream")
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
run outbound-pooled "$A"
[ -n "${WASMGATE_BIN_B:-}" ] && run outbound-B "$WASMGATE_BIN_B"

printf '%s\n' "name req/s p50_ms p99_ms" "${results[@]}"
