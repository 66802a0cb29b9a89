#!/usr/bin/env bash
# Load test: what a config reload costs the traffic it happens under, and how long it takes.
#
#   loadtests/reload.sh                  # 30 s per run
#   DURATION=10s loadtests/reload.sh
#
# 1. wrk against hello at / for DURATION, once without reloads and once with `POST /reload`
#    every second (the config alternates between two versions that change /extra's component);
#    prints requests/s, p50, p99 and any non-2xx or socket errors for each.
# 2. The time one reload takes, measured by `wasmgate reload` round trips, with 2 and with 50
#    routes, when one component changed (a cache hit: the compiled code is on disk) and when
#    nothing changed.
# Every server listens on 127.0.0.1; raw wrk output is kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
RELEASE="$ROOT/guests/target/wasm32-wasip2/release"
WASMGATE="$ROOT/target/release/wasmgate"
DURATION=${DURATION:-30s}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t2 -c64 -d$DURATION (after a 2 s warm-up), RUST_BACKTRACE unset"
echo

# write_config FILE ROUTES EXTRA_COMPONENT: hello at /, ROUTES-1 more hello routes, and /extra.
write_config() {
  local file=$1 routes=$2 extra=$3
  {
    cat <<TOML
[server]
listen = "127.0.0.1:18097"
[admin]
listen = "127.0.0.1:19097"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
[[route]]
path = "/"
component = "$RELEASE/hello.wasm"
max_concurrency = 1000
[[route]]
path = "/extra"
component = "$RELEASE/$extra.wasm"
TOML
    for i in $(seq 3 "$routes"); do
      printf '[[route]]\npath = "/r%d"\ncomponent = "%s/hello.wasm"\n' "$i" "$RELEASE"
    done
  } > "$file"
}

config="$RESULTS/wasmgate-reload.toml"
write_config "$config" 2 hello
RUST_LOG=warn "$WASMGATE" serve "$config" >"$RESULTS/wasmgate-reload.log" 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18097/
# Fill the compile cache for both versions of /extra.
write_config "$config" 2 echo && "$WASMGATE" reload --admin 127.0.0.1:19097 >/dev/null
write_config "$config" 2 hello && "$WASMGATE" reload --admin 127.0.0.1:19097 >/dev/null

echo "name req/s p50_ms p99_ms"
DURATION=$DURATION bench reload-none http://127.0.0.1:18097/
seconds=${DURATION%s}
(
  for i in $(seq 1 "$seconds"); do
    if [ $((i % 2)) -eq 0 ]; then write_config "$config" 2 hello; else write_config "$config" 2 echo; fi
    "$WASMGATE" reload --admin 127.0.0.1:19097 >/dev/null || echo "reload $i failed" >&2
    sleep 1
  done
) &
reloader=$!
DURATION=$DURATION bench reload-every-second http://127.0.0.1:18097/
wait "$reloader"
curl -fs http://127.0.0.1:19097/metrics | grep -E '^wasmgate_config_(reloads_total|generation)' || true
echo

# reload_ms ROUTES changed|same: median of 10 reloads, each changing /extra's component (cache
# hits) or of an unchanged config.
reload_ms() {
  local routes=$1 mode=$2 times=()
  write_config "$config" "$routes" hello
  for i in $(seq 1 10); do
    if [ "$mode" = changed ]; then
      if [ $((i % 2)) -eq 0 ]; then write_config "$config" "$routes" hello; else write_config "$config" "$routes" echo; fi
    fi
    local start end
    start=$(date +%s%N)
    "$WASMGATE" reload --admin 127.0.0.1:19097 >/dev/null
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n '5p' | awk '{printf "%.1f", $1 / 1000}'
}
echo "reload time (wasmgate reload round trip, median of 10):"
echo "  2 routes, one component changed (cache hit):  $(reload_ms 2 changed) ms"
echo "  50 routes, one component changed (cache hit): $(reload_ms 50 changed) ms"
echo "  2 routes, nothing changed:                    $(reload_ms 2 same) ms"
echo "  50 routes, nothing changed:                   $(reload_ms 50 same) ms"
