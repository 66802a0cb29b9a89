#!/usr/bin/env bash
# Load test: instance reuse. wasmgate's hello route with `reuse` against
# `wasmtime serve -S cli --max-instance-reuse-count` on the same component and the plain hyper
# server (the ceiling), in one run, with the same load generator (wrk). Each instance serves up
# to REUSE_COUNT requests (default 1000) in both servers.
#
#   loadtests/reuse.sh
#   CONNECTIONS=128 DURATION=20s REUSE_COUNT=100 loadtests/reuse.sh
#
# Prints a markdown table (requests/s, p50, p99) and the ratios the issue sets targets for.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
reuse_count=${REUSE_COUNT:-1000}

ensure_wrk
ensure_wasmtime
build_all
HELLO="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"

results=()

"$ROOT/target/release/examples/hyper_hello" 127.0.0.1:18491 >/dev/null & PIDS+=($!)
wait_http http://127.0.0.1:18491/
results+=("$(bench hyper http://127.0.0.1:18491/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

"$WASMTIME" serve -S cli --max-instance-reuse-count "$reuse_count" --idle-instance-timeout 10s \
  --addr 127.0.0.1:18492 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18492/
results+=("$(bench wasmtime-serve-reuse http://127.0.0.1:18492/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

config="$RESULTS/wasmgate-reuse.toml"
gateway_config "$config" 18490 19490 ""
echo "reuse = { max_requests = $reuse_count, max_age = \"10m\", idle_timeout = \"10s\" }" >> "$config"
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18490/
results+=("$(bench wasmgate-reuse http://127.0.0.1:18490/)")
reuses=$(curl -fs http://127.0.0.1:19490/metrics | awk '/^wasmgate_instance_reuses_total/ {print $2}')
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

echo "wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s}, $reuse_count requests per instance at most, $($WASMTIME --version)"
echo
bench_table "${results[@]}"
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: [float(x) for x in r.split()[1:4]] for r in sys.argv[1:]}
g, w, h = rows["wasmgate-reuse"], rows["wasmtime-serve-reuse"], rows["hyper"]
print(f"\nwasmgate / wasmtime serve (both reusing): {g[0] / w[0]:.2f}x req/s (target 1.2x), "
      f"p99 {g[2]:.2f} ms vs {w[2]:.2f} ms")
print(f"wasmgate / hyper ceiling: {100 * g[0] / h[0]:.0f}% (target 40%)")
PY
echo "requests wasmgate served from a reused instance: ${reuses:-?}"
