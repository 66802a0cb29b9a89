#!/usr/bin/env bash
# Load test: what a link between components costs (docs/linking.md), on one gateway.
#
#   loadtests/linked.sh                   # 10 s per scenario
#   DURATION=20s loadtests/linked.sh
#
# Routes: `hello` at /hello, and `greet-http` linked to `greeter` at /greet/... . Scenarios:
#   hello      the hello component: one instance, no link
#   local      greet-http answering without calling across the link (/greet/local): the cost of
#              instantiating the linked pair
#   greet      one call across the link: string in, string out (/greet?name=...)
#   counter    a resource created in the greeter and 100 calls on it (/greet/counter?names=...)
# Each runs twice: with 1 connection (p50 latency is the service time of one request) and with
# 64 (throughput). Prints requests/s, p50/p99, instantiation p50 per route from the gateway's own
# metric, and the derived per-call cost. Raw wrk output is kept in target/loadtests/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
RELEASE="$ROOT/guests/target/wasm32-wasip2/release"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "load: wrk -t1 -c1 and -t2 -c64, -d${DURATION:-10s} (after a 2 s warm-up), RUST_BACKTRACE unset"
echo

config="$RESULTS/wasmgate-linked.toml"
cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18095"
[admin]
listen = "127.0.0.1:19095"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
[component.greeter]
path = "$RELEASE/greeter.wasm"
[[route]]
path = "/hello"
component = "$RELEASE/hello.wasm"
max_concurrency = 1000
[[route]]
path = "/greet/..."
component = "$RELEASE/greet_http.wasm"
links = { "local:greeter-demo/greet" = "greeter" }
max_concurrency = 1000
TOML
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:18095/hello

base=http://127.0.0.1:18095
names=$(python3 -c 'print(",".join(f"n{i}" for i in range(100)))')
declare -A urls=(
  [hello]="$base/hello"
  [local]="$base/greet/local"
  [greet]="$base/greet?name=Ada"
  [counter]="$base/greet/counter?names=$names"
)
results=()
for conns in 1 64; do
  for name in hello local greet counter; do
    results+=("$(CONNECTIONS=$conns bench "linked-$name-c$conns" "${urls[$name]}")")
  done
done
inst_hello=$(histogram_p50_us http://127.0.0.1:19095/metrics wasmgate_instantiation_duration_seconds /hello)
inst_greet=$(histogram_p50_us http://127.0.0.1:19095/metrics wasmgate_instantiation_duration_seconds /greet/...)

printf '%-22s %10s %10s %10s\n' scenario req/s p50_ms p99_ms
for r in "${results[@]}"; do printf '%-22s %10s %10s %10s %s\n' $r; done
echo
echo "instantiation p50: hello ${inst_hello} us, greet-http + greeter ${inst_greet} us"
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: [float(x) for x in r.split()[1:4]] for r in sys.argv[1:]}
us = lambda name: rows[name][1] * 1000.0
print(f"c1 p50 over hello: instantiating the pair {us('linked-local-c1') - us('linked-hello-c1'):+.1f} us, "
      f"one linked call {us('linked-greet-c1') - us('linked-local-c1'):+.1f} us more, "
      f"101 calls on a resource {us('linked-counter-c1') - us('linked-local-c1'):+.1f} us more")
for n in ("local", "greet", "counter"):
    h, x = rows["linked-hello-c64"][0], rows[f"linked-{n}-c64"][0]
    print(f"c64 throughput {n}: {x:.0f} req/s = {x / h:.2f}x hello")
PY
