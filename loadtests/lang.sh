#!/usr/bin/env bash
# Load test: hello components from three toolchains (Rust `guests/hello`, componentize-py and
# componentize-js, built by loadtests/lang/build.sh) under `wasmtime serve -S cli` (its
# defaults) and under wasmgate with its default pool settings and with each alternative that
# matters for large guests, in one run, with the same load generator (wrk). A fresh instance
# per request everywhere.
#
#   loadtests/lang.sh                       # 64 connections, 10 s per server
#   CONNECTIONS=32 DURATION=20s loadtests/lang.sh
#   GUESTS="py js" loadtests/lang.sh        # some of rust, py, js
#
# Prints, per guest, a markdown table (requests/s, p50, p99, instantiation p50 from wasmgate's
# own metric) and the ratio of each wasmgate row to `wasmtime serve`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
ensure_wasmtime
build_all
"$ROOT/loadtests/lang/build.sh"

declare -A COMPONENTS=(
  [rust]="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"
  [py]="$ROOT/target/loadtests/lang/hello-py.wasm"
  [js]="$ROOT/target/loadtests/lang/hello-js.wasm"
)
# wasmgate's settings: NAME|[engine] lines|the route's lines. The default, the pool knobs that
# move large guests (docs/perf.md "Hello components from other toolchains"), and the best of
# them as the route's own `pool`, which `wasmgate check` suggests for the py and js hellos.
settings=(
  "default||"
  "no_pagemap_scan|pagemap_scan = false|"
  "keep_16m|linear_memory_keep_resident = \"16MiB\"|"
  "no_pagemap_keep_16m|pagemap_scan = false
linear_memory_keep_resident = \"16MiB\"|"
  "route_pool||pool = { pagemap_scan = false, linear_memory_keep_resident = \"16MiB\" }"
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset, $("$WASMTIME" --version)"
for guest in ${GUESTS:-rust py js}; do
  component=${COMPONENTS[$guest]}
  results=()
  # wasmtime compiles the component on its first start and caches it; the wait covers that.
  "$WASMTIME" serve -S cli --addr 127.0.0.1:18592 "$component" >/dev/null 2>&1 & PIDS+=($!)
  wait_http http://127.0.0.1:18592/
  results+=("-|$(bench "$guest-wasmtime-serve" http://127.0.0.1:18592/)")
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

  for entry in "${settings[@]}"; do
    IFS='|' read -r -d '' name engine_lines route_lines <<< "$entry" || true
    config="$RESULTS/lang-$guest-$name.toml"
    COMPONENT=$component gateway_config "$config" 18590 19590 "$engine_lines" "${route_lines%$'\n'}"
    RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
    wait_http http://127.0.0.1:18590/
    row=$(bench "$guest-wasmgate-$name" http://127.0.0.1:18590/)
    inst=$(histogram_p50_us http://127.0.0.1:19590/metrics wasmgate_instantiation_duration_seconds /)
    results+=("$inst|$row")
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  done

  echo
  echo "### $guest ($(du -h "$component" | cut -f1) component)"
  echo
  python3 - "${results[@]}" <<'PY'
import sys
rows = [(r.split("|", 1)[0], r.split("|", 1)[1].split(maxsplit=4)) for r in sys.argv[1:]]
base = float(rows[0][1][1])
print("| server | req/s | p50 ms | p99 ms | inst. p50 µs | / wasmtime serve |")
print("|---|---:|---:|---:|---:|---:|")
for inst, (name, rps, p50, p99, *errors) in rows:
    errors = f" ({errors[0]})" if errors else ""
    print(f"| {name}{errors} | {float(rps):,.0f} | {p50} | {p99} | {inst} | {float(rps) / base:.2f}x |")
PY
done
