#!/usr/bin/env bash
# Load test: a WASI 0.3 component (guests/hello-p3) in wasmgate and in `wasmtime serve -S p3`,
# in one run, with the same load generator (wrk): a fresh instance per request in both, then
# instances shared the way `wasmtime serve` shares p3 instances by default (up to 128 requests
# per instance, 16 at once).
#
#   loadtests/p3.sh
#   CONNECTIONS=128 DURATION=20s loadtests/p3.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
ensure_wasmtime
build_all
HELLO_P3="$ROOT/guests/target/wasm32-wasip2/release/hello_p3.wasm"

results=()

wasmtime_p3() { # NAME PORT [FLAGS...]
  local name=$1 port=$2; shift 2
  "$WASMTIME" serve -S p3,cli -W component-model-async "$@" --addr "127.0.0.1:$port" "$HELLO_P3" \
    >/dev/null 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$port/"
  results+=("$(bench "$name" "http://127.0.0.1:$port/")")
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
}

wasmgate_p3() { # NAME PORT ADMIN_PORT [ROUTE_LINES]
  local name=$1 port=$2 admin=$3 lines=${4:-}
  local config="$RESULTS/wasmgate-$name.toml"
  gateway_config "$config" "$port" "$admin" "wasi_p3 = true"
  sed -i "s#release/hello.wasm#release/hello_p3.wasm#" "$config"
  [ -n "$lines" ] && echo "$lines" >> "$config"
  RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$port/"
  results+=("$(bench "$name" "http://127.0.0.1:$port/")")
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
}

wasmtime_p3 wasmtime-p3-fresh 18592 --max-instance-reuse-count 1 --max-instance-concurrent-reuse-count 1
wasmgate_p3 wasmgate-p3-fresh 18590 19590
wasmtime_p3 wasmtime-p3-shared 18593
wasmgate_p3 wasmgate-p3-shared 18591 19591 \
  "$(printf 'reuse = { max_requests = 128, idle_timeout = "1s" }\nmax_concurrent_per_instance = 16')"

echo "wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s}, $($WASMTIME --version)"
echo
bench_table "${results[@]}"
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: [float(x) for x in r.split()[1:4]] for r in sys.argv[1:]}
for mode in ("fresh", "shared"):
    g, w = rows[f"wasmgate-p3-{mode}"], rows[f"wasmtime-p3-{mode}"]
    print(f"\n{mode}: wasmgate / wasmtime serve {g[0] / w[0]:.2f}x req/s, p99 {g[2]:.2f} ms vs {w[2]:.2f} ms", end="")
print()
PY
