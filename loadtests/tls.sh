#!/usr/bin/env bash
# Load test: hello over TLS against the same gateway in cleartext and against `wasmtime serve`
# (which has no TLS), in one run: HTTP/1.1 keep-alive (wrk), HTTP/2 (h2load, 64 connections x 10
# streams), and new connections per second (wrk with `Connection: close`, a full handshake per
# request). Certificates are an ECDSA P-256 chain made with openssl for this run.
#
#   loadtests/tls.sh
#   CONNECTIONS=128 DURATION=20s loadtests/tls.sh
#
# Raw outputs are kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
command -v h2load >/dev/null || { echo "installing h2load (nghttp2-client)" >&2; apt-get update -qq >/dev/null; apt-get install -y -qq nghttp2-client >/dev/null; }
ensure_wasmtime
build_all
HELLO="$ROOT/guests/target/wasm32-wasip2/release/hello.wasm"

certs="$RESULTS/tls-certs"
mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$certs/site.key" -out "$certs/site.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$certs/ext"
openssl x509 -req -in "$certs/site.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" -CAcreateserial \
  -days 2 -extfile "$certs/ext" -out "$certs/site.pem" 2>/dev/null

config="$RESULTS/wasmgate-tls.toml"
cat > "$config" <<TOML
[admin]
listen = "127.0.0.1:19190"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
[[listener]]
name = "plain"
address = "127.0.0.1:18190"
[[listener]]
name = "tls"
address = "127.0.0.1:18191"
tls = { cert = "$certs/site.pem", key = "$certs/site.key" }
[[route]]
path = "/"
component = "$HELLO"
max_concurrency = 1000
TOML

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t2 -c${CONNECTIONS:-64} -d${DURATION:-10s}; h2load -c64 -m10 -D${DURATION:-10s}; RUST_BACKTRACE unset"
echo

# h2load NAME URL: "NAME rps p50_ms(mean) p99_ms(max)" from h2load's summary.
h2bench() {
  local name=$1 url=$2
  h2load -c64 -m10 -t2 -D2 "$url" >/dev/null 2>&1 || true
  h2load -c64 -m10 -t2 -D"${DURATION:-10s}" "$url" > "$RESULTS/$name.h2load" 2>&1 || true
  python3 - "$name" "$RESULTS/$name.h2load" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", text).group(1))
m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
failed = re.search(r"(\d+) failed", text).group(1)
print(f"{name} {rps:.0f} {ms(m.group(3)):.3f} {ms(m.group(2)):.3f} failed={failed}")
PY
}

results=()
"$WASMTIME" serve -S cli --addr 127.0.0.1:18192 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18192/
results+=("$(bench wasmtime-serve-h1 http://127.0.0.1:18192/)")
results+=("$(bench wasmtime-serve-close http://127.0.0.1:18192/ -H 'Connection: close')")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18190/
results+=("$(bench wasmgate-h1 http://127.0.0.1:18190/)")
results+=("$(bench wasmgate-tls-h1 https://127.0.0.1:18191/)")
results+=("$(bench wasmgate-close http://127.0.0.1:18190/ -H 'Connection: close')")
results+=("$(bench wasmgate-tls-close https://127.0.0.1:18191/ -H 'Connection: close')")
results+=("$(h2bench wasmgate-h2c http://127.0.0.1:18190/)")
results+=("$(h2bench wasmgate-tls-h2 https://127.0.0.1:18191/)")
failures=$(curl -fs http://127.0.0.1:19190/metrics | grep '^wasmgate_tls_handshake_failures_total' || true)
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

printf '%-22s %10s %10s %10s\n' run req/s p50_ms p99_ms
for r in "${results[@]}"; do printf '%-22s %10s %10s %10s %s\n' $r; done
echo "(h2load rows: mean and max request time instead of p50 and p99)"
echo "handshake failures: ${failures:-none}"
