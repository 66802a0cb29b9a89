#!/usr/bin/env bash
# Benchmark: wasi:blobstore through the blob-files component, per backend (memory, fs, NATS, S3),
# next to each backend's own client doing the same, in one run.
#
#   loadtests/blobstore.sh                 # 1 KiB x 200, 1 MiB x 20, 100 MiB x 2; wrk 10 s
#   QUICK=1 loadtests/blobstore.sh         # fewer repetitions, no 100 MiB
#
# Throughput (MiB/s) of uploads and downloads, one request at a time over one keep-alive
# connection, measured by one Python client for every target: the gateway (PUT and GET
# /files/bench/NAME), and the backends' own clients: the file system (write, fsync, rename;
# read), nats-py's object store, and boto3 against the same SeaweedFS. Then requests/s for small
# objects (1 KiB GET and PUT) through the gateway with wrk. Needs NATS with JetStream on
# 127.0.0.1:4222 (the machine runs it); starts the S3 server itself (tests/services/s3-server).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_wrk
build_all
"$ROOT/tests/services/s3-server" >&2
VENV="$ROOT/target/loadtest-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "boto3==1.44.18" "nats-py==2.16.0"
RELEASE="$ROOT/guests/target/wasm32-wasip2/release"
run=$(date +%s)
DATA="$RESULTS/blobs-$run"
mkdir -p "$DATA"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "clients: Python $(python3 -V | cut -d' ' -f2) http.client, nats-py 2.16.0, boto3 1.44.18; SeaweedFS 4.48; RUST_BACKTRACE unset"
echo

config="$RESULTS/blobstore.toml"
cat > "$config" <<TOML
[server]
listen = "127.0.0.1:18590"
max_request_body = "200MiB"
request_timeout = "120s"
[admin]
listen = "127.0.0.1:19590"
[engine]
cache_dir = "$ROOT/target/wasmgate-cache"
[blobstore.memory]
backend = "memory"
max_total_size = "1GiB"
[blobstore.fs]
backend = "fs"
path = "$DATA/fs"
[blobstore.nats]
backend = "nats"
url = "nats://127.0.0.1:4222"
prefix = "wgbench$run"
[blobstore.s3]
backend = "s3"
endpoint = "http://127.0.0.1:18333"
bucket = "wasmgate-test"
prefix = "bench/$run"
access_key_id = "wasmgate-test-key"
secret_access_key = "wasmgate-test-secret"
TOML
for store in memory fs nats s3; do
  cat >> "$config" <<TOML
[[route]]
host = "$store.blob"
path = "/files/..."
component = "$RELEASE/blob_files.wasm"
blobstore = "$store"
max_concurrency = 256
TOML
done
RUST_LOG=warn "$ROOT/target/release/wasmgate" serve "$config" >"$RESULTS/blobstore-gateway.log" 2>&1 & PIDS+=($!)
wait_http http://127.0.0.1:19590/readyz

echo "## Throughput, MiB/s (upload / download), one request at a time"
QUICK=${QUICK:-} DATA="$DATA" RUN="$run" "$VENV/bin/python" - <<'PY'
import hashlib, http.client, os, sys, time, asyncio

QUICK = bool(os.environ.get("QUICK"))
DATA, RUN = os.environ["DATA"], os.environ["RUN"]
SIZES = [("1 KiB", 1 << 10, 20 if QUICK else 200), ("1 MiB", 1 << 20, 5 if QUICK else 20)]
if not QUICK:
    SIZES.append(("100 MiB", 100 << 20, 2))

def mibs(total, seconds):
    return total / (1 << 20) / seconds

def gateway(store):
    def run(payload, count):
        conn = http.client.HTTPConnection("127.0.0.1", 18590)
        headers = {"Host": f"{store}.blob", "Content-Type": "application/octet-stream"}
        conn.request("PUT", "/files/bench/warm", body=b"x", headers=headers); conn.getresponse().read()
        start = time.perf_counter()
        for i in range(count):
            conn.request("PUT", f"/files/bench/o{len(payload)}-{i}", body=payload, headers=headers)
            r = conn.getresponse(); r.read(); assert r.status == 201, r.status
        up = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(count):
            conn.request("GET", f"/files/bench/o{len(payload)}-{i}", headers={"Host": f"{store}.blob"})
            r = conn.getresponse(); body = r.read(); assert r.status == 200 and len(body) == len(payload)
        down = time.perf_counter() - start
        return up, down
    return run

def files(payload, count):
    root = os.path.join(DATA, "direct")
    os.makedirs(root, exist_ok=True)
    start = time.perf_counter()
    for i in range(count):
        path = os.path.join(root, f"o{i}")
        with open(path + ".tmp", "wb") as f:
            f.write(payload); f.flush(); os.fsync(f.fileno())
        os.rename(path + ".tmp", path)
    up = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        with open(os.path.join(root, f"o{i}"), "rb") as f:
            assert len(f.read()) == len(payload)
    return up, time.perf_counter() - start

def nats_direct(payload, count):
    import nats
    async def go():
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        bucket = f"wgbenchdirect{RUN}_{len(payload)}"
        obs = await js.create_object_store(bucket)
        start = time.perf_counter()
        for i in range(count):
            await obs.put(f"o{i}", payload)
        up = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(count):
            res = await obs.get(f"o{i}")
            assert len(res.data) == len(payload)
        down = time.perf_counter() - start
        await js.delete_object_store(bucket)
        await nc.close()
        return up, down
    return asyncio.run(go())

def s3_direct(payload, count):
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:18333", region_name="us-east-1",
                      aws_access_key_id="wasmgate-test-key", aws_secret_access_key="wasmgate-test-secret",
                      config=Config(s3={"addressing_style": "path"}))
    start = time.perf_counter()
    for i in range(count):
        s3.put_object(Bucket="wasmgate-test", Key=f"bench/{RUN}/direct/o{len(payload)}-{i}", Body=payload)
    up = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        body = s3.get_object(Bucket="wasmgate-test", Key=f"bench/{RUN}/direct/o{len(payload)}-{i}")["Body"].read()
        assert len(body) == len(payload)
    return up, time.perf_counter() - start

targets = [
    ("wasmgate memory", gateway("memory")),
    ("wasmgate fs", gateway("fs")),
    ("file system direct", files),
    ("wasmgate nats", gateway("nats")),
    ("nats-py object store", nats_direct),
    ("wasmgate s3", gateway("s3")),
    ("boto3 s3", s3_direct),
]
print("| target | " + " | ".join(f"{label} up / down" for label, _, _ in SIZES) + " |")
print("|---|" + "---|" * len(SIZES))
for name, run in targets:
    cells = []
    for label, size, count in SIZES:
        payload = os.urandom(size)
        up, down = run(payload, count)
        cells.append(f"{mibs(size * count, up):.1f} / {mibs(size * count, down):.1f}")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
PY

echo
echo "## Small objects through the gateway: wrk -c${CONNECTIONS:-32} -d${DURATION:-10s}, 1 KiB"
cat > "$RESULTS/blob-put.lua" <<'LUA'
wrk.method = "PUT"
wrk.body = string.rep("x", 1024)
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/files/bench/small-" .. (counter % 1000))
end
LUA
printf '%-14s %10s %10s %10s\n' scenario req/s p50_ms p99_ms
for store in memory fs nats s3; do
  curl -fs -o /dev/null -T <(head -c 1024 /dev/zero) -H "Host: $store.blob" http://127.0.0.1:18590/files/bench/small
  for op in get put; do
    args=(-H "Host: $store.blob")
    url=http://127.0.0.1:18590/files/bench/small
    [ "$op" = put ] && args+=(-s "$RESULTS/blob-put.lua")
    row=$(CONNECTIONS=${CONNECTIONS:-32} bench "blob-$store-$op" "$url" "${args[@]}")
    set -- $row
    printf '%-14s %10s %10s %10s %s\n' "$store $op" "$2" "$3" "$4" "${5:-}"
  done
done
rm -rf "$DATA"
