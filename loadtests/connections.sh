#!/usr/bin/env bash
# Idle keep-alive connections: how many the gateway holds and what each costs in memory.
# Starts the hello gateway, warms its instance pool with wrk (so pool memory is not counted as
# the connections'), then opens IDLE_CONNECTIONS (default 10000) connections, one request on each,
# and keeps them open (loadtests/idle_connections.py). Needs an open-files limit above
# IDLE_CONNECTIONS for this shell and the gateway.
#
#   loadtests/connections.sh
#   IDLE_CONNECTIONS=5000 loadtests/connections.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
count=${IDLE_CONNECTIONS:-10000}
# Each connection is a file on both sides: raise this shell's limit (the gateway inherits it).
ulimit -n $(( count + 1024 )) 2>/dev/null || {
  echo "cannot raise the open-files limit to $(( count + 1024 )) (hard limit $(ulimit -Hn))" >&2; exit 1; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); open files: $(ulimit -n)"
config="$RESULTS/connections.toml"
gateway_config "$config" 18961 18962 ""
# Idle connections are the subject: the idle and header timeouts must outlast the measurement.
sed -i "s/^listen = \"127.0.0.1:18961\"\$/listen = \"127.0.0.1:18961\"\nidle_timeout = \"300s\"\nheader_read_timeout = \"300s\"\nmax_connections = $(( count + 1000 ))/" "$config"
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >"$RESULTS/connections.log" 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18961/
wrk -t2 -c200 -d3s http://127.0.0.1:18961/ >/dev/null
sleep 1
python3 "$ROOT/loadtests/idle_connections.py" "$count" 18961 "${PIDS[-1]}"
