# syntax=docker/dockerfile:1
# wasmgate: the gateway and the example guests on a small non-root image.
#
#   docker build -t wasmgate .
#   docker run -p 8080:8080 -v wasmgate-data:/app/data wasmgate
#
# The runtime stage is replayed without Docker by tests/image.rs (run by .ci/run): the same
# files in a temporary root, as an unprivileged user, with only the volume writable.

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# The registry and both target directories are cache mounts: a rebuild after a source change
# recompiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/src/guests/target \
    cargo build --release --locked --manifest-path guests/Cargo.toml --target wasm32-wasip2 \
 && WASMGATE_SKIP_GUESTS=1 cargo build --release --locked --bin wasmgate \
 && mkdir -p /out/guests \
 && cp target/release/wasmgate /out/ \
 && cp guests/target/wasm32-wasip2/release/*.wasm /out/guests/

FROM debian:bookworm-slim
# The system's root certificates: components pulled from HTTPS registries (oci://) and an
# HTTPS OTLP collector are verified against them (guests' and upstreams' HTTPS also trust the
# bundled public roots). Unpinned on purpose: the roots should track Debian's updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin wasmgate \
 && mkdir -p /app/data \
 && chown wasmgate /app/data
COPY --from=build /out/wasmgate /usr/local/bin/wasmgate
COPY --from=build /out/guests /app/guests
COPY deploy/docker/wasmgate.toml /app/wasmgate.toml
USER 10001
WORKDIR /app
# Every component compiled into the cache (under the volume) now, so a start loads them in
# milliseconds. On a host whose CPU differs, the cache's compatibility check fails and the
# gateway compiles them again at start, then rewrites the cache.
RUN ["wasmgate", "check", "/app/wasmgate.toml"]
# The only place the gateway writes: the compile cache, the keyvalue file and the blob store.
VOLUME /app/data
# 8080 is public; 9090 is the admin port (probes, /metrics, /routes, POST /reload): keep it off
# the public network (docs/operations.md).
EXPOSE 8080 9090
# Asks /readyz on [admin] listen, or where WASMGATE_ADMIN__LISTEN moved it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["wasmgate", "health"]
ENTRYPOINT ["wasmgate"]
CMD ["serve", "/app/wasmgate.toml"]
