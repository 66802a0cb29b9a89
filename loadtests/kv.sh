#!/usr/bin/env bash
# Load test: the kv-counter component (one wasi:keyvalue increment per request) on each backend,
# against the hello route as the baseline, in one run. Requests spread over 1,000 keys.
#
#   loadtests/kv.sh                       # 64 connections, 10 s per scenario
#
# Needs Redis on 127.0.0.1:6379 and NATS with JetStream on 127.0.0.1:4222 (the machine runs them).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
RELEASE="$ROOT/guests/target/wasm32-wasip2/release"
run_id=$(date +%s)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s}, kv-counter over 1,000 keys, RUST_BACKTRACE unset"
echo
printf '%-16s %10s %10s %10s\n' scenario req/s p50_ms p99_ms

scenario() {
  local name=$1 store=$2 path=$3 extra=${4:-}
  local config="$RESULTS/kv-$name.toml"
  cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18490"
[admin]
listen = "127.0.0.1:19490"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
$store
[[route]]
path = "/hello"
component = "$RELEASE/hello.wasm"
max_concurrency = 1000
[[route]]
path = "/count/..."
component = "$RELEASE/kv_counter.wasm"
keyvalue = ["bench"]
env = { KV_STORE = "bench" }
max_concurrency = 1000
TOML
  RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & local pid=$!
  PIDS+=($pid)
  wait_http http://127.0.0.1:18490/hello
  local row
  row=$(bench "kv-$name" "http://127.0.0.1:18490$path" $extra)
  set -- $row
  printf '%-16s %10s %10s %10s %s\n' "$name" "$2" "$3" "$4" "${5:-}"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

memory='[keyvalue.bench]
backend = "memory"'
scenario hello "$memory" /hello
scenario memory "$memory" /count/ "-s $ROOT/loadtests/kv-keys.lua"
rm -f "$RESULTS/kv-bench.redb"
scenario redb "[keyvalue.bench]
backend = \"redb\"
path = \"$RESULTS/kv-bench.redb\"" /count/ "-s $ROOT/loadtests/kv-keys.lua"
rm -f "$RESULTS/kv-bench-synced.redb"
scenario redb-100ms "[keyvalue.bench]
backend = \"redb\"
path = \"$RESULTS/kv-bench-synced.redb\"
sync_interval = \"100ms\"" /count/ "-s $ROOT/loadtests/kv-keys.lua"
scenario redis "[keyvalue.bench]
backend = \"redis\"
url = \"redis://127.0.0.1:6379\"
prefix = \"wasmgate-bench:$run_id\"" /count/ "-s $ROOT/loadtests/kv-keys.lua"
scenario nats "[keyvalue.bench]
backend = \"nats\"
url = \"nats://127.0.0.1:4222\"
bucket = \"wasmgate_bench_$run_id\"" /count/ "-s $ROOT/loadtests/kv-keys.lua"
