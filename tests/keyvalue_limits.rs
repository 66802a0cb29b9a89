//! What a guest can make the host hold or wait for through wasi:keyvalue, bounded: batch sizes,
//! bytes held per request (batch results, `cas` handles), the total size of memory stores,
//! unsigned counters checked before they are written, and remote backends that accept
//! connections and never answer. Real gateways, real components, real HTTP.

mod common;

use common::*;
use http::{Method, Request, StatusCode};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn crud_route(store: &str) -> String {
    format!(
        "[[route]]\npath = \"/kv/...\"\ncomponent = {}\nkeyvalue = [\"{store}\"]\nenv = {{ KV_STORE = \"{store}\" }}\nmax_concurrency = 64\n",
        toml_path(&guest("kv-crud"))
    )
}

fn counter_route(store: &str) -> String {
    format!(
        "[[route]]\npath = \"/count/...\"\ncomponent = {}\nkeyvalue = [\"{store}\"]\nenv = {{ KV_STORE = \"{store}\" }}\nmax_concurrency = 64\n",
        toml_path(&guest("kv-counter"))
    )
}

fn request(method: Method, url: String, body_bytes: Vec<u8>) -> Request<ClientBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(body(body_bytes))
        .unwrap()
}

/// The resident memory of a process, from /proc/PID/status.
fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

#[tokio::test]
async fn get_many_of_a_mebibyte_ten_thousand_times_is_refused_and_the_gateway_memory_stays_bounded()
{
    let gw = Gateway::start(&format!(
        "[keyvalue.big]\nbackend = \"memory\"\n\n{}",
        crud_route("big")
    ));
    let c = http1();
    let put = request(Method::PUT, gw.url("/kv/mib"), vec![b'x'; MIB]);
    assert_eq!(read(send(&c, put).await).await.0, StatusCode::NO_CONTENT);

    // Within the limits, get-many works (and warms up the instance and allocator).
    for _ in 0..3 {
        let (status, _, body) = get(&c, &gw.url("/kv/mib?copies=8")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "8 values, 8388608 bytes\n")
        );
    }
    let before = rss_bytes(gw.pid());

    for _ in 0..3 {
        // More keys than max_batch_keys (1,000): refused before anything is read.
        let (status, _, body) = get(&c, &gw.url("/kv/mib?copies=10000")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains(
                "the batch names 10000 keys, more than the store's limit of 1000 (max_batch_keys)"
            ),
            "{body}"
        );
        // As many keys as allowed, but 1,000 MiB of values: refused once 16 MiB are held.
        let (status, _, body) = get(&c, &gw.url("/kv/mib?copies=1000")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("the values of get-many would take this request past the store's limit of 16777216 bytes held at once (max_request_bytes)"),
            "{body}"
        );
    }
    let after = rss_bytes(gw.pid());
    let growth = after.saturating_sub(before);
    eprintln!(
        "gateway RSS: {} MiB before, {} MiB after ({} MiB more)",
        before / MIB,
        after / MIB,
        growth / MIB
    );
    assert!(
        growth < 64 * MIB,
        "the gateway grew by {} MiB",
        growth / MIB
    );
    // The gateway still serves.
    let (status, _, body) = get(&c, &gw.url("/kv/mib?copies=2")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "2 values, 2097152 bytes\n")
    );
}

#[tokio::test]
async fn cas_handles_count_against_the_bytes_a_request_may_hold() {
    let gw = Gateway::start(&format!(
        "[keyvalue.cas]\nbackend = \"memory\"\nmax_request_bytes = \"4MiB\"\n\n{}",
        crud_route("cas")
    ));
    let c = http1();
    let put = request(Method::PUT, gw.url("/kv/mib"), vec![b'x'; MIB]);
    assert_eq!(read(send(&c, put).await).await.0, StatusCode::NO_CONTENT);

    let hold = |n: usize| {
        request(
            Method::POST,
            gw.url(&format!("/kv/mib/cas?handles={n}")),
            vec![],
        )
    };
    let (status, _, body) = read(send(&c, hold(3)).await).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "held 3\n"));
    // Each handle keeps a copy of the 1 MiB value: the fourth does not fit in 4 MiB.
    let (status, _, body) = read(send(&c, hold(100)).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("another cas handle would take this request past the store's limit of 4194304 bytes held at once (max_request_bytes)"),
        "{body}"
    );
    // The budget is per request: the next one starts afresh.
    let (status, _, body) = read(send(&c, hold(3)).await).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "held 3\n"));
}

#[tokio::test]
async fn a_memory_store_refuses_writes_past_its_total_size() {
    let gw = Gateway::start(&format!(
        "[keyvalue.small]\nbackend = \"memory\"\nmax_total_size = \"3MiB\"\n\n{}",
        crud_route("small")
    ));
    let c = http1();
    let put = |key: &str| {
        request(
            Method::PUT,
            gw.url(&format!("/kv/{key}")),
            vec![b'v'; 1_000_000],
        )
    };
    for key in ["a", "b", "c"] {
        assert_eq!(
            read(send(&c, put(key)).await).await.0,
            StatusCode::NO_CONTENT
        );
    }
    let (status, _, body) = read(send(&c, put("d")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("the store is full") && body.contains("max_total_size of 3145728 bytes"),
        "{body}"
    );
    assert_eq!(get(&c, &gw.url("/kv/d")).await.0, StatusCode::NOT_FOUND);
    // Deleting makes room again.
    let delete = request(Method::DELETE, gw.url("/kv/a"), vec![]);
    assert_eq!(read(send(&c, delete).await).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        read(send(&c, put("d")).await).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn an_unsigned_counter_that_would_go_negative_is_refused_before_it_is_written() {
    let gw = Gateway::start(&format!(
        "[keyvalue.counters]\nbackend = \"memory\"\n\n{}\n{}",
        crud_route("counters"),
        counter_route("counters")
    ));
    let c = http1();
    // A draft2 guest (kv-crud) stores -5; a draft guest (kv-counter, u64 counters) adds 1.
    let put = request(Method::PUT, gw.url("/kv//count/neg"), b"-5".to_vec());
    assert_eq!(read(send(&c, put).await).await.0, StatusCode::NO_CONTENT);
    let (status, _, body) = get(&c, &gw.url("/count/neg")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("the counter would be negative"), "{body}");
    let (status, _, body) = get(&c, &gw.url("/kv//count/neg")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "-5"),
        "nothing was written"
    );
}

/// A TCP server on loopback that accepts every connection and never says a word.
fn blackhole() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    port
}

/// 20 concurrent requests to a route whose store never answers: each gets the guest's error
/// within 3 s of the start (one shared connection attempt, bounded by the 2 s timeout), not
/// one connection attempt after another.
async fn twenty_requests_to_a_blackhole_all_fail_promptly(store: &str) {
    let gw = Gateway::start(&format!("{store}\n{}", counter_route("hole")));
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let url = gw.url(&format!("/count/{i}"));
            tokio::spawn(async move {
                let (status, _, body) = get(&http1(), &url).await;
                (status, body, started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let (status, body, elapsed) = task.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("unavailable"), "{body}");
        assert!(
            elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}: {body}"
        );
    }
}

#[tokio::test]
async fn twenty_requests_to_a_blackholed_redis_all_fail_within_3s() {
    let port = blackhole();
    twenty_requests_to_a_blackhole_all_fail_promptly(&format!(
        "[keyvalue.hole]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n"
    ))
    .await;
}

#[tokio::test]
async fn twenty_requests_to_a_blackholed_nats_all_fail_within_3s() {
    let port = blackhole();
    twenty_requests_to_a_blackhole_all_fail_promptly(&format!(
        "[keyvalue.hole]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\n"
    ))
    .await;
}

#[test]
fn limits_that_cannot_work_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (table, error) in [
        (
            "backend = \"memory\"\nmax_value_size = \"2MiB\"\nmax_request_bytes = \"1MiB\"\n",
            "[keyvalue.s]: max_request_bytes (1048576 bytes) must be at least max_value_size (2097152 bytes)",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nmax_total_size = \"1MiB\"\n",
            "[keyvalue.s]: `max_total_size` does not apply to a Redis store",
        ),
        (
            "backend = \"memory\"\nmax_batch_keys = 0\n",
            "[keyvalue.s]: max_batch_keys and max_total_size must be at least 1",
        ),
    ] {
        let config = format!(
            "[engine]\ncache_dir = {}\n[keyvalue.s]\n{table}",
            toml_path(&shared_cache_dir())
        );
        let (ok, output) = check_config(dir.path(), &config);
        assert!(!ok && output.contains(error), "{table}: {output}");
    }
}
