#!/usr/bin/env bash
# Load test: wasmgate's hello route against `wasmtime serve -S cli` on the same component and a
# plain hyper server (the ceiling), in one run, with the same load generator (wrk).
#
#   loadtests/run.sh                      # 64 connections, 10 s per server
#   CONNECTIONS=128 DURATION=20s loadtests/run.sh
#   loadtests/run.sh --all                # and then every other comparison (below)
#   loadtests/run.sh --all --quick        # the same, 3 s per measurement, smaller sizes
#
# Prints requests/s and p50/p99 latency for each, the ratios, and wasmgate's instantiation p50
# read from its own metric. With --all it goes on with HTTP/2 against `wasmtime serve`
# (h2.sh), instance reuse against `wasmtime serve --max-instance-reuse-count` (reuse.sh), WASI 0.3 against `wasmtime serve -S p3` (p3.sh),
# hello components from componentize-py and componentize-js with each pool setting (lang.sh), start-up and footprint by route count (startup.sh), idle keep-alive connections
# (connections.sh), tracing's cost (tracing.sh) and route lookups (cargo bench --bench router),
# and writes everything to target/loadtests/summary.md. Raw output is kept in target/loadtests/.
set -euo pipefail
all=false
quick=false
for arg in "$@"; do
  case $arg in
    --all) all=true ;;
    --quick) quick=true ;;
    *) echo "unknown argument $arg (--all, --quick)" >&2; exit 2 ;;
  esac
done
if $quick; then
  export DURATION=${DURATION:-3s} ROUNDS=${ROUNDS:-1} IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-2000}
  export ROUTES=${ROUTES:-"50 1000"}
fi
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

if $all; then
  summary="$RESULTS/summary.md"
  here=$(dirname "$0")
  {
    echo "# loadtests/run.sh --all$($quick && echo ' --quick'), $(date -u +%Y-%m-%d)"
    echo
    echo "## hello: wasmgate, wasmtime serve -S cli, hyper (wrk)"
    echo
    bench_table "${results[@]}"
    echo
    echo "## HTTP/2 (h2load)"
    echo
    DURATION=${DURATION:-10s} bash "$here/h2.sh"
    echo
    echo "## Instance reuse (wrk)"
    echo
    bash "$here/reuse.sh"
    echo
    echo "## WASI 0.3 (wrk)"
    echo
    bash "$here/p3.sh"
    echo
    echo "## Hello components from three toolchains, and the pool settings (wrk)"
    echo
    bash "$here/lang.sh"
    echo
    echo "## Start-up and idle RSS by route count"
    echo
    bash "$here/startup.sh"
    echo
    echo "## Idle keep-alive connections"
    echo
    bash "$here/connections.sh"
    echo
    echo "## Tracing"
    echo
    bash "$here/tracing.sh"
    echo
    echo "## Route lookups (cargo bench --bench router)"
    echo
    (cd "$ROOT" && cargo bench -q --bench router 2>/dev/null)
    echo
    echo "## The request path in process (cargo bench --bench request_path)"
    echo
    (cd "$ROOT" && cargo bench -q --bench request_path 2>/dev/null)
  } | tee "$summary"
  echo "written: $summary"
fi
