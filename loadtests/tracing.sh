#!/usr/bin/env bash
# What OpenTelemetry tracing costs on the hello route: the same gateway build with tracing off,
# on with sampling_ratio = 0 (spans made but not recorded; context still propagated) and on with
# every trace recorded and exported to an OTLP/HTTP sink (a small Python server that answers
# 200 to every export). Alternated, ROUNDS rounds (default 2).
#
#   loadtests/tracing.sh
#   ROUNDS=3 DURATION=20s loadtests/tracing.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all

python3 - 18950 <<'PY' >/dev/null 2>&1 & PIDS+=($!)
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo "| round | setting | req/s | p50 ms | p99 ms |"
echo "|---|---|---:|---:|---:|"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for setting in off ratio-0 ratio-1; do
    config="$RESULTS/tracing-$setting.toml"
    gateway_config "$config" 18951 18952 ""
    case $setting in
      ratio-0) printf '[tracing]\notlp_endpoint = "http://127.0.0.1:18950"\nsampling_ratio = 0.0\n' >> "$config" ;;
      ratio-1) printf '[tracing]\notlp_endpoint = "http://127.0.0.1:18950"\nsampling_ratio = 1.0\n' >> "$config" ;;
    esac
    RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >"$RESULTS/tracing-$setting.log" 2>&1 & PIDS+=($!)
    wait_http http://127.0.0.1:18951/
    read -r _ rps p50 p99 rest < <(bench "tracing-$setting" http://127.0.0.1:18951/)
    echo "| $round | $setting | $rps | $p50 | $p99 | ${rest:-}"
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  done
done
