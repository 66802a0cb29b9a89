#!/usr/bin/env bash
# Slow-client attacks against wasmgate's HTTP/1.1 listener, with slowhttptest (Debian package):
#
#   slowloris  (-H): many connections that send request headers a line at a time, never ending
#                    them, to hold connection slots;
#   slow read  (-X): many connections that ask for a large response and read it a few bytes at
#                    a time through a tiny TCP window, to hold connections, route slots and
#                    instances while the gateway waits to send.
#
# While each attack runs, a probe asks for /hello/probe once a second with curl (5 s timeout),
# as a normal client would; the summary says how many probes were served, the slowest, and what
# slowhttptest saw. Everything listens on 127.0.0.1 only; each attack is bounded in time.
#
#   loadtests/slowhttp.sh                                   # target/debug/wasmgate, defaults
#   WASMGATE_BIN=target/release/wasmgate loadtests/slowhttp.sh
#   CONNECTIONS=800 DURATION=60 loadtests/slowhttp.sh
#   SERVER_EXTRA='max_connections = 256' loadtests/slowhttp.sh   # extra [server] lines
#   MODES=slowloris loadtests/slowhttp.sh                   # one attack only
#
# Exit status: 0 when every probe during every attack was answered 200 within 5 s, 1 otherwise.
# Files (config, gateway log, slowhttptest CSV/HTML, probe log) are kept in
# target/loadtests/slowhttp/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WASMGATE_BIN=${WASMGATE_BIN:-$ROOT/target/debug/wasmgate}
CONNECTIONS=${CONNECTIONS:-400}
RATE=${RATE:-200}
DURATION=${DURATION:-45}
PORT=${PORT:-18480}
ADMIN_PORT=${ADMIN_PORT:-18481}
MODES=${MODES:-slowloris slowread}
SERVER_EXTRA=${SERVER_EXTRA:-}
OUT=$RESULTS/slowhttp
mkdir -p "$OUT"

command -v slowhttptest >/dev/null || {
  echo "installing slowhttptest (Debian package)" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq slowhttptest >/dev/null
}
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }
[ -x "$WASMGATE_BIN" ] || { echo "$WASMGATE_BIN is missing: cargo build (or set WASMGATE_BIN)" >&2; exit 2; }
GUESTS=$ROOT/guests/target/wasm32-wasip2/release
for guest in hello streaming; do
  [ -f "$GUESTS/$guest.wasm" ] || { echo "$GUESTS/$guest.wasm is missing: build the guests" >&2; exit 2; }
done
# slowhttptest needs a descriptor per connection, and so does the gateway.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cat > "$OUT/wasmgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
$SERVER_EXTRA

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[engine]
cache_dir = "$ROOT/target/wasmgate-cache"

[logging]
level = "warn"

[[route]]
path = "/hello/:name"
component = "$GUESTS/hello.wasm"

# Up to 12 MB per response (?chunks=1000000), written as fast as the client takes it: the
# slow-read target; larger than the kernel socket buffers can absorb.
[[route]]
path = "/stream"
component = "$GUESTS/streaming.wasm"
TOML

BASE=http://127.0.0.1:$PORT
PROBE_URL=$BASE/hello/probe
"$WASMGATE_BIN" serve "$OUT/wasmgate.toml" > "$OUT/wasmgate.log" 2>&1 & GATEWAY=$!
PIDS+=("$GATEWAY")
wait_http "$PROBE_URL"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$GATEWAY/status" 2>/dev/null || echo "?"; }
fds() { ls "/proc/$GATEWAY/fd" 2>/dev/null | wc -l; }

# probe URL FILE: one GET a second on a new connection until killed;
# "unix_time http_code seconds" per line (000: no answer within 5 s).
probe() {
  while true; do
    local line
    line=$(curl -s -o /dev/null --max-time 5 -w '%{http_code} %{time_total}' "$1" || true)
    echo "$(date +%s) ${line:-000 5}" >> "$2"
    sleep 1
  done
}

# sample FILE: the gateway's open descriptors and RSS (KiB) every second until killed.
sample() {
  while true; do
    echo "$(fds) $(rss_kib)" >> "$1"
    sleep 1
  done
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "gateway: $WASMGATE_BIN ($("$WASMGATE_BIN" --version 2>/dev/null || echo '?')), [server] extra: ${SERVER_EXTRA:-none}"
echo "slowhttptest: $(dpkg-query -W -f '${Version}' slowhttptest 2>/dev/null || echo '?'), $CONNECTIONS connections at $RATE/s for ${DURATION}s per attack"
echo

failed=0
summaries=()
for mode in $MODES; do
  case $mode in
    slowloris)
      # Headers never finished: a new 1-24 byte header line every 5 s.
      args=(-H -c "$CONNECTIONS" -r "$RATE" -l "$DURATION" -i 5 -x 24 -t GET -u "$BASE/hello/slowloris")
      route_probe_url=""
      ;;
    slowread)
      # Two pipelined requests per connection for ~12 MB each, a receive window of 16-32 bytes,
      # 32 bytes read every 5 s. The attacked route is probed too (a small response from it).
      args=(-X -c "$CONNECTIONS" -r "$RATE" -l "$DURATION" -k 2 -w 16 -y 32 -n 5 -z 32
            -u "$BASE/stream?chunks=1000000&delay_ms=0")
      route_probe_url="$BASE/stream?chunks=1&delay_ms=0"
      ;;
    *) echo "unknown mode $mode (slowloris, slowread)" >&2; exit 2 ;;
  esac
  rm -f "$OUT/probe-$mode.txt" "$OUT/route-probe-$mode.txt" "$OUT/sample-$mode.txt" "$OUT/$mode".*
  touch "$OUT/route-probe-$mode.txt"
  before_rss=$(rss_kib); before_fds=$(fds)
  echo "== $mode: slowhttptest ${args[*]} -p 3 -g -o $OUT/$mode"
  probe "$PROBE_URL" "$OUT/probe-$mode.txt" & PIDS+=($!)
  helpers=($!)
  if [ -n "$route_probe_url" ]; then
    probe "$route_probe_url" "$OUT/route-probe-$mode.txt" & PIDS+=($!)
    helpers+=($!)
  fi
  sample "$OUT/sample-$mode.txt" & PIDS+=($!)
  helpers+=($!)
  # -p 3: slowhttptest's own probe counts the service as down after 3 s without an answer.
  timeout $((DURATION + 60)) slowhttptest "${args[@]}" -p 3 -g -o "$OUT/$mode" \
    > "$OUT/slowhttptest-$mode.txt" 2>&1 || true
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  alive=yes; kill -0 "$GATEWAY" 2>/dev/null || alive=NO
  summary=$(python3 - "$mode" "$OUT" <<'PY'
import csv, sys
mode, out = sys.argv[1:3]
def probes(path):
    rows = [line.split() for line in open(path) if line.strip()]
    ok = [r for r in rows if r[1] == "200" and float(r[2]) < 5]
    worst = max((float(r[2]) for r in rows), default=0.0)
    return len(ok), len(rows), worst
ok, total, worst = probes(f"{out}/probe-{mode}.txt")
text = f"{mode}: other route {ok}/{total} probes served (200 < 5 s), slowest {worst:.2f} s"
failed = total - ok
r_ok, r_total, r_worst = probes(f"{out}/route-probe-{mode}.txt")
if r_total:
    text += f"; attacked route {r_ok}/{r_total}, slowest {r_worst:.2f} s"
    failed += r_total - r_ok
connected = unavailable = closed = 0
first_close = "never"
try:
    rows = list(csv.DictReader(open(f"{out}/{mode}.csv")))
    connected = max(int(r["Connected"]) for r in rows)
    closed = max(int(r["Closed"]) for r in rows)
    first_close = next((f"at {r['Seconds']} s" for r in rows if int(r["Closed"]) > 0), "never")
    # slowhttptest writes the connection count while its probe is answered, 0 when not.
    unavailable = sum(1 for r in rows if r["Service Available"].strip() == "0")
except (OSError, ValueError, KeyError):
    pass
samples = [line.split() for line in open(f"{out}/sample-{mode}.txt") if line.strip()]
peak_fds = max((int(s[0]) for s in samples if s[0].isdigit()), default=0)
peak_rss = max((int(s[1]) for s in samples if s[1].isdigit()), default=0)
print(f"{text}; slowhttptest: peak {connected} connected, {closed} closed by the gateway "
      f"(first {first_close}), its probe failed {unavailable} s; "
      f"gateway peak {peak_fds} fds, {peak_rss} KiB RSS; FAILED={failed}")
PY
)
  summary="$summary; alive $alive (before: $before_fds fds, $before_rss KiB)"
  echo "$summary"
  summaries+=("$summary")
  case $summary in *"FAILED=0;"*) ;; *) failed=1 ;; esac
  [ "$alive" = yes ] || failed=1
  # Let the attack's connections close before the next one.
  sleep 3
done

echo
echo "== summary"
printf '%s\n' "${summaries[@]}"
if [ "$failed" = 0 ]; then echo "RESULT: PASS (every probe served)"; else echo "RESULT: FAIL (see $OUT)"; fi
exit "$failed"
