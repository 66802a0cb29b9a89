#!/usr/bin/env bash
# Load test: wasmgate's hello route against `wasmtime serve -S cli` on the same component and a
# plain hyper server (the ceiling), in one run, with the same load generator (wrk).
#
#   loadtests/run.sh                      # 64 connections, 10 s per server
#   CONNECTIONS=128 DURATION=20s loadtests/run.sh
#
# Prints requests/s and p50/p99 latency for each, the ratios, and wasmgate's instantiation p50
# read from its own metric. Raw wrk output is kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
ensure_wasmtime
build_all
HELLO="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo

results=()

"$ROOT/target/release/examples/hyper_hello" 127.0.0.1:18091 >/dev/null & PIDS+=($!)
wait_http http://127.0.0.1:18091/
results+=("$(bench hyper http://127.0.0.1:18091/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

"$WASMTIME" serve -S cli --addr 127.0.0.1:18092 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18092/
results+=("$(bench wasmtime-serve http://127.0.0.1:18092/)")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

config="$RESULTS/wasmgate-bench.toml"
gateway_config "$config" 18090 19090 ""
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18090/
results+=("$(bench wasmgate http://127.0.0.1:18090/)")
inst_p50=$(histogram_p50_us http://127.0.0.1:19090/metrics wasmgate_instantiation_duration_seconds /)
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

printf '%-16s %10s %10s %10s\n' server req/s p50_ms p99_ms
for r in "${results[@]}"; do printf '%-16s %10s %10s %10s %s\n' $r; done
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: [float(x) for x in r.split()[1:4]] for r in sys.argv[1:]}
g, w, h = rows["wasmgate"], rows["wasmtime-serve"], rows["hyper"]
print(f"\nwasmgate / wasmtime serve: {g[0] / w[0]:.2f}x req/s, p99 {g[2]:.2f} ms vs {w[2]:.2f} ms")
print(f"wasmgate / hyper ceiling:  {g[0] / h[0]:.2f}x req/s")
PY
echo "wasmgate instantiation p50 (from wasmgate_instantiation_duration_seconds): ${inst_p50} us"
