# wasmgate: build the gateway and the example guests, then ship them on a small non-root image.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wasmgate \
 && mkdir -p /out/guests \
 && cp target/release/wasmgate /out/ \
 && cp guests/target/wasm32-wasip2/release/*.wasm /out/guests/ \
 && sed -e 's#127.0.0.1:8080#0.0.0.0:8080#' -e 's#127.0.0.1:9090#0.0.0.0:9090#' \
        -e 's#\.\./guests/target/wasm32-wasip2/release/#/app/guests/#' \
        -e 's#\.\./target/wasmgate-cache#/app/cache#' config/wasmgate.toml > /out/wasmgate.toml

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /app wasmgate && mkdir -p /app/cache && chown wasmgate /app/cache
COPY --from=build /out/wasmgate /usr/local/bin/wasmgate
COPY --from=build /out/guests /app/guests
COPY --from=build /out/wasmgate.toml /app/wasmgate.toml
USER wasmgate
WORKDIR /app
EXPOSE 8080 9090
# Compile the components into the cache at build time so the first start is fast.
RUN wasmgate check /app/wasmgate.toml
ENTRYPOINT ["wasmgate"]
CMD ["serve", "/app/wasmgate.toml"]
