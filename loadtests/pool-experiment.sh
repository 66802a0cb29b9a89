#!/usr/bin/env bash
# The pool-tuning experiment behind the [engine] defaults (see docs/perf.md): wasmgate's hello
# route under the same load with each combination of the pooling allocator's knobs.
#
#   loadtests/pool-experiment.sh            # 10 s per setting
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all


settings=(
  "baseline|"
  "keep_resident_64k|linear_memory_keep_resident = \"64KiB\"
table_keep_resident = \"64KiB\""
  "keep_resident_1m|linear_memory_keep_resident = \"1MiB\"
table_keep_resident = \"1MiB\""
  "decommit_batch_32|decommit_batch_size = 32"
  "pagemap_scan|pagemap_scan = true"
  "keep_1m_batch_32|linear_memory_keep_resident = \"1MiB\"
table_keep_resident = \"1MiB\"
decommit_batch_size = 32"
  "pagemap_keep_1m|pagemap_scan = true
linear_memory_keep_resident = \"1MiB\"
table_keep_resident = \"1MiB\""
  "pagemap_keep_4m|pagemap_scan = true
linear_memory_keep_resident = \"4MiB\"
table_keep_resident = \"1MiB\""
  "pagemap_keep_16m|pagemap_scan = true
linear_memory_keep_resident = \"16MiB\"
table_keep_resident = \"1MiB\""
  "pagemap_keep_16m_b32|pagemap_scan = true
linear_memory_keep_resident = \"16MiB\"
table_keep_resident = \"1MiB\"
decommit_batch_size = 32"
  "warm_slots_0|max_unused_warm_slots = 0"
)

printf '%-20s %10s %10s %10s %12s\n' setting req/s p50_ms p99_ms inst_p50_us
for entry in "${settings[@]}"; do
  name=${entry%%|*}; lines=${entry#*|}
  config="$RESULTS/pool-$name.toml"
  gateway_config "$config" 18190 19190 "$lines"
  RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >/dev/null 2>&1 & pid=$!
  PIDS+=($pid)
  wait_http http://127.0.0.1:18190/
  row=$(bench "pool-$name" http://127.0.0.1:18190/)
  inst=$(histogram_p50_us http://127.0.0.1:19190/metrics wasmgate_instantiation_duration_seconds /)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  set -- $row
  printf '%-20s %10s %10s %10s %12s\n' "$name" "$2" "$3" "$4" "$inst"
done
