#!/usr/bin/env bash
# HTTP/2 with many streams per connection: h2load (Debian's nghttp2-client) against the hello
# route of wasmgate over h2c (prior knowledge), and the same load over HTTP/1.1 against wasmgate
# and `wasmtime serve -S cli` (which speaks HTTP/1.1 only), in one run.
#
#   loadtests/h2.sh                  # 4 clients x 100 streams, 10 s each
#   CLIENTS=8 STREAMS=100 DURATION=20 loadtests/h2.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v h2load >/dev/null; then
  echo "installing h2load (Debian's nghttp2-client)" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq nghttp2-client >/dev/null
fi
ensure_wasmtime
build_all
HELLO="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"
clients=${CLIENTS:-4} streams=${STREAMS:-100} duration=${DURATION:-10}
case $duration in
  *ms) echo "DURATION is in whole seconds for h2load (got $duration)" >&2; exit 2 ;;
esac
duration=${duration%s}

# h2load_run NAME URL [ARGS...]: a 2 s warm-up, then DURATION seconds; prints a table row.
h2load_run() {
  local name=$1 url=$2; shift 2
  local file="$RESULTS/h2-${name//[^A-Za-z0-9]/-}.txt"
  h2load -c"$clients" -m"$streams" -D2 "$@" "$url" >/dev/null 2>&1 || true
  h2load -c"$clients" -m"$streams" -D"$duration" "$@" "$url" > "$file" 2>&1
  python3 - "$name" "$file" <<'PY'
import re, sys
name, text = sys.argv[1], open(sys.argv[2]).read()
rps = re.search(r"finished in .*?, ([\d.]+) req/s", text).group(1)
done = re.search(r"requests: .*? (\d+) succeeded, (\d+) failed", text)
line = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
print(f"| {name} | {float(rps):,.0f} | {line.group(3)} | {line.group(2)} | {done.group(2)} |")
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: h2load -c$clients -m$streams -D$duration (after a 2 s warm-up), RUST_BACKTRACE unset"
echo "| server | req/s | mean per request | max | failed |"
echo "|---|---:|---:|---:|---:|"

config="$RESULTS/h2-wasmgate.toml"
gateway_config "$config" 18981 18982 ""
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18981/
h2load_run "wasmgate h2c" http://127.0.0.1:18981/
h2load_run "wasmgate HTTP/1.1" http://127.0.0.1:18981/ --h1
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

"$WASMTIME" serve -S cli --addr 127.0.0.1:18983 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18983/
h2load_run "wasmtime serve HTTP/1.1" http://127.0.0.1:18983/ --h1
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
