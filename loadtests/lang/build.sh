#!/usr/bin/env bash
# Builds the "hello" HTTP components in other languages that the load tests compare under
# wasmgate and `wasmtime serve`:
#   target/loadtests/lang/hello-py.wasm  (componentize-py, from hello.py)
#   target/loadtests/lang/hello-js.wasm  (componentize-js via `jco componentize`, from hello.js)
# Both export `wasi:http/incoming-handler@0.2.10` (world in wit/hello.wit) and answer every
# request with 200, `content-type: text/plain`, "hello from <language>\n".
#
# Toolchains are installed under target/ only, at pinned versions, and reused when present:
#   target/lang-venv  componentize-py (PyPI)
#   target/lang-npm   @bytecodealliance/jco + @bytecodealliance/componentize-js (npm)
#
# Usage: loadtests/lang/build.sh [--check]
#   --check  also serve each component with `wasmtime serve -S cli` on 127.0.0.1 and check the body.
#
# Serving needs the WASI CLI interfaces: both runtimes import wasi:cli/*, wasi:filesystem/*
# (and Python wasi:sockets/*), so `wasmtime serve` needs `-S cli` (alias `-S common`); without it
# instantiation fails with "... has the wrong type / implementation is missing". No network
# flag (inherit-network) is needed.
set -euo pipefail

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

COMPONENTIZE_PY_VERSION=${COMPONENTIZE_PY_VERSION:-0.25.1}
# jco 1.35.0 cannot be used: its WIT metadata check runs wasm-tools under a preview2-shim with no
# preopened directories, so every `--wit` path fails with "failed to get path metadata ... (os error 44)".
JCO_VERSION=${JCO_VERSION:-1.34.0}
COMPONENTIZE_JS_VERSION=${COMPONENTIZE_JS_VERSION:-0.22.0}
# Transitive packages pinned too (npm overrides), so that a later release of them cannot change the build.
JCO_TRANSPILE_VERSION=0.14.0
PREVIEW2_SHIM_VERSION=0.25.0

HERE="$ROOT/loadtests/lang"
OUT="$ROOT/target/loadtests/lang"
VENV="$ROOT/target/lang-venv"
NPM_DIR="$ROOT/target/lang-npm"
WIT="$HERE/wit"
mkdir -p "$OUT"

log() { echo "[lang] $*" >&2; }

install_componentize_py() {
  local want="componentize-py $COMPONENTIZE_PY_VERSION"
  if [ -x "$VENV/bin/componentize-py" ] && [ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing componentize-py $COMPONENTIZE_PY_VERSION into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
}

npm_version() { # npm_version PACKAGE: the installed version, or nothing
  node -p "require('$NPM_DIR/node_modules/$1/package.json').version" 2>/dev/null || true
}

install_jco() {
  if [ "$(npm_version @bytecodealliance/jco)" = "$JCO_VERSION" ] \
    && [ "$(npm_version @bytecodealliance/componentize-js)" = "$COMPONENTIZE_JS_VERSION" ] \
    && [ "$(npm_version @bytecodealliance/jco-transpile)" = "$JCO_TRANSPILE_VERSION" ]; then
    return
  fi
  log "installing jco $JCO_VERSION + componentize-js $COMPONENTIZE_JS_VERSION into $NPM_DIR"
  mkdir -p "$NPM_DIR"
  cat > "$NPM_DIR/package.json" <<JSON
{
  "name": "wasmgate-loadtests-lang",
  "private": true,
  "dependencies": {
    "@bytecodealliance/jco": "$JCO_VERSION",
    "@bytecodealliance/componentize-js": "$COMPONENTIZE_JS_VERSION"
  },
  "overrides": {
    "@bytecodealliance/jco-transpile": "$JCO_TRANSPILE_VERSION",
    "@bytecodealliance/preview2-shim": "$PREVIEW2_SHIM_VERSION"
  }
}
JSON
  rm -f "$NPM_DIR/package-lock.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error)
}

build_py() {
  # componentize-py imports the app to pre-initialise it and writes __pycache__ next to it:
  # build from a copy under target/ so the source tree stays clean.
  local src="$OUT/py-src"
  rm -rf "$src" && mkdir -p "$src" && cp "$HERE/hello.py" "$src/"
  "$VENV/bin/componentize-py" -q -d "$WIT" -w hello componentize -p "$src" hello -o "$OUT/hello-py.wasm"
}

build_js() {
  "$NPM_DIR/node_modules/.bin/jco" componentize "$HERE/hello.js" --wit "$WIT" -n hello \
    -o "$OUT/hello-js.wasm" >/dev/null
}

# check_serve WASM PORT EXPECTED_BODY: serve it with `wasmtime serve -S cli`, curl it, stop it.
check_serve() {
  local wasm=$1 port=$2 expected=$3 pid body
  "$WASMTIME" serve -S cli --addr "127.0.0.1:$port" "$wasm" > "$OUT/serve-$port.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  # The first start compiles the component (10-20 s); wasmtime's cache makes later starts fast.
  for _ in $(seq 1 1200); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/serve-$port.log" >&2; return 1; }
    sleep 0.1
  done
  body=$(curl -fsS --max-time 10 "http://127.0.0.1:$port/some/path?q=1"; echo .)
  body=${body%.}
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$body" != "$expected" ]; then
    echo "$(basename "$wasm"): unexpected body: ${body@Q}" >&2
    return 1
  fi
  log "$(basename "$wasm") served by wasmtime serve -S cli: OK"
}

start=$SECONDS
install_componentize_py
install_jco
log "componentize-py: $("$VENV/bin/componentize-py" --version); jco $(npm_version @bytecodealliance/jco); componentize-js $(npm_version @bytecodealliance/componentize-js)"

t=$SECONDS; build_py; log "hello-py.wasm built in $((SECONDS - t)) s"
t=$SECONDS; build_js; log "hello-js.wasm built in $((SECONDS - t)) s"

if [ "${1:-}" = "--check" ]; then
  ensure_wasmtime
  check_serve "$OUT/hello-py.wasm" 18501 $'hello from python\n'
  check_serve "$OUT/hello-js.wasm" 18502 $'hello from javascript\n'
fi

log "done in $((SECONDS - start)) s"
for f in "$OUT/hello-py.wasm" "$OUT/hello-js.wasm"; do
  printf '%s\t%s bytes\t%s\n' "${f#"$ROOT"/}" "$(stat -c %s "$f")" "$(du -h "$f" | cut -f1)"
done
