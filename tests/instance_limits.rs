//! `[engine] max_instances` through the real binary: a pool that cannot be reserved fails the
//! start (it used to fall back to on-demand allocation with no cap), and the cap holds with the
//! pool and without it.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_pool_that_cannot_be_reserved_fails_the_start_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmgate.toml");
    // 64 instances ask for 256 linear memory slots of 4 GiB: far over an 8 GiB limit, which the
    // process itself (threads, allocator arenas) stays well under.
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [engine]\ncache_dir = {}\nmax_instances = 64\n\n\
             [[route]]\npath = \"/\"\ncomponent = {}\n",
            toml_path(&shared_cache_dir()),
            toml_path(&guest("hello"))
        ),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -v 8388608 && exec \"$0\" serve \"$1\"",
            env!("CARGO_BIN_EXE_wasmgate"),
            config.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running under a limit the pool cannot fit in:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "{text}");
    for fragment in [
        "cannot create the instance pool",
        "[engine] max_instances = 64",
        "lower [engine] max_instances",
        "ulimit -v",
        "pooling = false",
    ] {
        assert!(text.contains(fragment), "lacks `{fragment}`:\n{text}");
    }
    assert!(!text.contains("serving HTTP"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// With `max_instances = 2`, two slow requests hold both instances: a third gets the
/// pool-exhaustion 503 at once, whatever the allocator, and once they are done a request is
/// served again.
async fn at_most_max_instances_run_at_once(pooling: bool) {
    let routes = format!(
        "[[route]]\npath = \"/stream\"\ncomponent = {}\n",
        toml_path(&guest("streaming"))
    );
    let gateway = Gateway::start_with(
        &routes,
        Sections {
            engine: format!(
                "cache_dir = {}\nmax_instances = 2\npooling = {pooling}\n",
                toml_path(&shared_cache_dir())
            ),
            ..Sections::default()
        },
    );
    let client = http1();
    let slow = || {
        Request::get(gateway.url("/stream?chunks=3&delay_ms=700"))
            .body(empty())
            .unwrap()
    };
    // The guest sends its headers before its first delay: both instances are alive now.
    let first = send(&client, slow()).await;
    let second = send(&client, slow()).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );

    let started = Instant::now();
    let (status, headers, body) = get(&client, &gateway.url("/stream?chunks=1")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "pooling = {pooling}: {body}"
    );
    assert!(body.contains("pool_exhausted"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered at once"
    );

    for response in [first, second] {
        let (status, _, body) = read(response).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "chunk 0\nchunk 1\nchunk 2\n")
        );
    }
    // The slots are given back once the instances are gone.
    let (status, _, body) = get(&client, &gateway.url("/stream?chunks=1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "chunk 0\n"));

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_admission_rejected_total",
            &[("route", "/stream"), ("reason", "pool_exhausted")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_the_pool_max_instances_still_caps_live_instances() {
    at_most_max_instances_run_at_once(false).await;
}

#[tokio::test]
async fn with_the_pool_max_instances_caps_live_instances() {
    at_most_max_instances_run_at_once(true).await;
}
