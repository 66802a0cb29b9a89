#!/usr/bin/env bash
# Start-up and footprint: how long the gateway takes from process start to serving (the first
# 200 from /readyz, polled every 5 ms), and its RSS when idle, for configs of ROUTES routes
# (default: 10, 50, 1000 and 10000) over the example guests, with the compile cache warm (a
# first start fills it and is not counted). Reported: the median of three starts.
#
#   loadtests/startup.sh
#   ROUTES="50 1000" loadtests/startup.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

build_all
GUESTS="$ROOT/guests/target/wasm32-wasip2/release"
components=(hello echo env config_echo streaming kv_counter logger outbound)

# config FILE ROUTES: ROUTES routes over 100 hosts, each route serving one of the components.
config() {
  {
    printf '[server]\nlisten = "127.0.0.1:18971"\n[admin]\nlisten = "127.0.0.1:18972"\n'
    printf '[engine]\ncache_dir = "%s"\n' "$ROOT/target/wasmgate-cache"
    printf '[logging]\naccess_log = false\n'
    printf '[keyvalue.default]\nbackend = "memory"\n'
    for i in $(seq 0 $(( $2 - 1 ))); do
      c=${components[$(( i % ${#components[@]} ))]}
      printf '[[route]]\nhost = "h%d.example.com"\npath = "/r%d/..."\ncomponent = "%s/%s.wasm"\n' \
        $(( i % 100 )) "$i" "$GUESTS" "$c"
      if [ "$c" = kv_counter ]; then printf 'keyvalue = ["default"]\n'; fi
    done
  } > "$1"
}

# start CONFIG: sets STARTED_MS to the milliseconds from exec to the first ready answer, and
# leaves the gateway running (its pid last in PIDS). Not run in a subshell, so PIDS stays ours.
start() {
  local started now
  started=$(date +%s%N)
  RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$1" >"$RESULTS/startup.log" 2>&1 & PIDS+=($!)
  local tries=0
  until curl -fs -o /dev/null http://127.0.0.1:18972/readyz; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "the gateway exited; see $RESULTS/startup.log" >&2; exit 1; }
    tries=$(( tries + 1 ))
    [ "$tries" -lt 12000 ] || { echo "not ready within a minute" >&2; exit 1; }
    sleep 0.005
  done
  now=$(date +%s%N)
  STARTED_MS=$(( (now - started) / 1000000 ))
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "| routes | serving after (median of 3) | idle RSS |"
echo "|---:|---:|---:|"
for routes in ${ROUTES:-10 50 1000 10000}; do
  file="$RESULTS/startup-$routes.toml"
  config "$file" "$routes"
  start "$file"   # fills the compile cache
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  times=()
  for _ in 1 2 3; do
    start "$file"
    times+=("$STARTED_MS")
    sleep 1
    rss=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[-1]}/status")
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
  echo "| $routes | $median ms | $(( rss / 1024 )) MB |"
done
