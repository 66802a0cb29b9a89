//! What the in-process benchmarks share: serving requests one after another through
//! `Gateway::handle` and summing up their times.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate::gateway::Gateway;

pub const WARMUP: usize = 2_000;
pub const ITERATIONS: usize = 20_000;

/// A request with an empty body, of the type `Gateway::handle` takes.
pub type BenchRequest = http::Request<
    http_body_util::combinators::MapErr<
        Empty<Bytes>,
        fn(std::convert::Infallible) -> wasmtime_wasi_http::Error,
    >,
>;

/// An empty request body.
pub fn empty() -> http_body_util::combinators::MapErr<
    Empty<Bytes>,
    fn(std::convert::Infallible) -> wasmtime_wasi_http::Error,
> {
    Empty::<Bytes>::new().map_err(|e| match e {})
}

/// Serves `WARMUP + ITERATIONS` requests made by `request`, one at a time, each with its
/// response body read to the end and its status checked by `expected`; the median and mean of
/// the last `ITERATIONS`.
pub async fn measure(
    gateway: &Arc<Gateway>,
    request: impl Fn() -> anyhow::Result<BenchRequest>,
    expected: impl Fn(http::StatusCode) -> bool,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let request = request()?;
        let path = request.uri().path().to_string();
        let started = Instant::now();
        let response = gateway.handle(request).await;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{path}: the body failed: {e}"))?
            .to_bytes();
        let elapsed = started.elapsed();
        anyhow::ensure!(
            expected(status),
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if i >= WARMUP {
            times.push(elapsed);
        }
    }
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    times.sort();
    Ok((times[times.len() / 2], mean))
}

pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
