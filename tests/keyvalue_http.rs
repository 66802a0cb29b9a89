//! wasi:keyvalue end to end: real components (kv-counter imports 0.2.0-draft, kv-crud imports
//! 0.2.0-draft2) behind real gateways, on every backend, with real Redis and NATS.

mod common;

use common::*;
use http::{Method, Request, StatusCode};
use std::time::Duration;

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A `[keyvalue.NAME]` table on `backend`, with unique names so runs never collide.
fn store_table(name: &str, backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "memory" => format!("[keyvalue.{name}]\nbackend = \"memory\"\n"),
        "redb" => format!(
            "[keyvalue.{name}]\nbackend = \"redb\"\npath = {}\n",
            toml_path(&dir.join("kv.redb"))
        ),
        "redis" => format!(
            "[keyvalue.{name}]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{}\"\n",
            unique("wasmgate-test:")
        ),
        "nats" => format!(
            "[keyvalue.{name}]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nbucket = \"{}\"\n",
            unique("wasmgate_test_")
        ),
        other => panic!("unknown backend {other}"),
    }
}

fn counter_route(store: &str) -> String {
    format!(
        "[[route]]\npath = \"/count/...\"\ncomponent = {}\nkeyvalue = [\"{store}\"]\nenv = {{ KV_STORE = \"{store}\" }}\nmax_concurrency = 64\n",
        toml_path(&guest("kv-counter"))
    )
}

async fn thousand_increments_from_fifty_clients(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{}",
        store_table("counts", backend, dir.path()),
        counter_route("counts")
    );
    let gw = Gateway::start(&config);
    let client = http1();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let url = gw.url("/count/visits");
            tokio::spawn(async move {
                for _ in 0..20 {
                    let (status, _, body) = get(&client, &url).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (_, _, body) = get(&client, &gw.url("/count/visits")).await;
    assert_eq!(
        body, "1001\n",
        "1,000 increments and this one, none lost on {backend}"
    );
    let metrics = gw.metrics().await;
    let ok = metric_value(
        &metrics,
        "wasmgate_keyvalue_operations_total",
        &[
            ("store", "counts"),
            ("backend", backend),
            ("op", "increment"),
            ("outcome", "ok"),
        ],
    );
    assert_eq!(ok, Some(1001.0));
}

#[tokio::test]
async fn thousand_increments_memory() {
    thousand_increments_from_fifty_clients("memory").await;
}

#[tokio::test]
async fn thousand_increments_redb() {
    thousand_increments_from_fifty_clients("redb").await;
}

#[tokio::test]
async fn thousand_increments_redis() {
    thousand_increments_from_fifty_clients("redis").await;
}

#[tokio::test]
async fn thousand_increments_nats() {
    thousand_increments_from_fifty_clients("nats").await;
}

/// Two gateway processes on one shared store count together and see each other's writes.
async fn two_gateways_share(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_table("shared", backend, dir.path());
    let routes = format!(
        "{store}\n{}\n[[route]]\npath = \"/kv/...\"\ncomponent = {}\nkeyvalue = [\"shared\"]\nenv = {{ KV_STORE = \"shared\" }}\n",
        counter_route("shared"),
        toml_path(&guest("kv-crud"))
    );
    let a = Gateway::start(&routes);
    let b = Gateway::start(&routes);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/count/both")
            } else {
                b.url("/count/both")
            };
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(get(&http1(), &url).await.0, StatusCode::OK);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (_, _, body) = get(&http1(), &a.url("/count/both")).await;
    assert_eq!(
        body, "201\n",
        "both gateways' increments counted on {backend}"
    );

    let put = Request::put(a.url("/kv/note"))
        .body(body_from("written by a"))
        .unwrap();
    assert_eq!(
        read(send(&http1(), put).await).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _, body) = get(&http1(), &b.url("/kv/note")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "written by a"));
}

fn body_from(text: &str) -> ClientBody {
    body(text.to_string())
}

#[tokio::test]
async fn two_gateways_share_redis() {
    two_gateways_share("redis").await;
}

#[tokio::test]
async fn two_gateways_share_nats() {
    two_gateways_share("nats").await;
}

#[tokio::test]
async fn redb_data_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}\n{}",
        store_table("durable", "redb", dir.path()),
        counter_route("durable")
    );
    let mut first = Gateway::start(&routes);
    for expected in ["1\n", "2\n", "3\n"] {
        assert_eq!(
            get(&http1(), &first.url("/count/restarts")).await.2,
            expected
        );
    }
    assert!(first.terminate().success());
    let second = Gateway::start(&routes);
    assert_eq!(get(&http1(), &second.url("/count/restarts")).await.2, "4\n");
}

#[tokio::test]
async fn redb_with_a_sync_interval_keeps_writes_older_than_it_through_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}sync_interval = \"50ms\"\n{}",
        store_table("synced", "redb", dir.path()),
        counter_route("synced")
    );
    let mut first = Gateway::start(&routes);
    for expected in ["1\n", "2\n", "3\n"] {
        assert_eq!(get(&http1(), &first.url("/count/crash")).await.2, expected);
    }
    // Well past the interval, the writes are on disk; SIGKILL leaves the gateway no chance to
    // sync on the way out.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    first.kill();
    let second = Gateway::start(&routes);
    assert_eq!(get(&http1(), &second.url("/count/crash")).await.2, "4\n");
}

#[tokio::test]
async fn redb_with_a_sync_interval_loses_nothing_on_a_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}sync_interval = \"60s\"\n{}",
        store_table("synced", "redb", dir.path()),
        counter_route("synced")
    );
    let mut first = Gateway::start(&routes);
    for expected in ["1\n", "2\n"] {
        assert_eq!(get(&http1(), &first.url("/count/stop")).await.2, expected);
    }
    // Long before the interval: only a sync on shutdown (ours, or redb closing the database) can
    // have saved them.
    assert!(first.terminate().success());
    let second = Gateway::start(&routes);
    assert_eq!(get(&http1(), &second.url("/count/stop")).await.2, "3\n");
}

#[tokio::test]
async fn crud_list_swap_and_limits_through_the_draft2_interface() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}max_key_size = 32\nmax_value_size = \"1KiB\"\n\n[[route]]\npath = \"/kv/...\"\ncomponent = {}\nkeyvalue = [\"data\"]\nenv = {{ KV_STORE = \"data\" }}\n",
        store_table("data", "memory", dir.path()),
        toml_path(&guest("kv-crud"))
    );
    let gw = Gateway::start(&routes);
    let c = http1();
    let req = |method: Method, path: &str, body_text: &str| {
        Request::builder()
            .method(method)
            .uri(gw.url(path))
            .body(body_from(body_text))
            .unwrap()
    };

    assert_eq!(
        get(&c, &gw.url("/kv/missing")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        read(send(&c, req(Method::PUT, "/kv/a", "alpha")).await)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&c, &gw.url("/kv/a")).await.2, "alpha");
    assert_eq!(
        read(send(&c, req(Method::HEAD, "/kv/a", "")).await).await.0,
        StatusCode::OK
    );
    assert_eq!(
        read(send(&c, req(Method::DELETE, "/kv/a", "")).await)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        read(send(&c, req(Method::HEAD, "/kv/a", "")).await).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        read(send(&c, req(Method::DELETE, "/kv/a", "")).await)
            .await
            .0,
        StatusCode::NO_CONTENT,
        "deleting a missing key succeeds"
    );

    // Listing pages through every key exactly once (the gateway's page holds 1000 keys).
    for i in 0..1205 {
        let (status, _, _) =
            read(send(&c, req(Method::PUT, &format!("/kv/k{i:04}"), "v")).await).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/kv?cursor={cursor}"),
            None => "/kv".to_string(),
        };
        let (status, headers, body) = get(&c, &gw.url(&path)).await;
        assert_eq!(status, StatusCode::OK);
        keys.extend(body.lines().map(str::to_string));
        match headers.get("x-next-cursor") {
            Some(next) => cursor = Some(next.to_str().unwrap().to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..1205).map(|i| format!("k{i:04}")).collect();
    assert_eq!(keys, expected);

    // Increment and compare-and-swap.
    assert_eq!(
        read(send(&c, req(Method::POST, "/kv/n/increment?by=5", "")).await)
            .await
            .2,
        "5\n"
    );
    assert_eq!(
        read(send(&c, req(Method::POST, "/kv/n/increment?by=-7", "")).await)
            .await
            .2,
        "-2\n"
    );
    let swap = |expected: Option<&str>, new: &str| {
        let mut builder = Request::post(gw.url("/kv/s/swap"));
        if let Some(expected) = expected {
            builder = builder.header("x-expected", expected);
        }
        builder.body(body_from(new)).unwrap()
    };
    assert_eq!(
        read(send(&c, swap(None, "one")).await).await.0,
        StatusCode::OK
    );
    assert_eq!(
        read(send(&c, swap(None, "two")).await).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        read(send(&c, swap(Some("one"), "two")).await).await.0,
        StatusCode::OK
    );
    assert_eq!(
        read(send(&c, swap(Some("one"), "three")).await).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(get(&c, &gw.url("/kv/s")).await.2, "two");

    // Limits: a clear error to the guest, which answers 503 with it.
    let long_key = "k".repeat(33);
    let (status, _, body) =
        read(send(&c, req(Method::PUT, &format!("/kv/{long_key}"), "v")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("more than the store's limit of 32 bytes"),
        "{body}"
    );
    let (status, _, body) =
        read(send(&c, req(Method::PUT, "/kv/big", &"x".repeat(1025))).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("more than the store's limit of 1024 bytes"),
        "{body}"
    );
}

#[tokio::test]
async fn stores_not_granted_to_the_route_are_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}{}\n[[route]]\npath = \"/other/...\"\ncomponent = {}\nkeyvalue = [\"mine\"]\nenv = {{ KV_STORE = \"theirs\" }}\n",
        store_table("mine", "memory", dir.path()),
        store_table("theirs", "memory", dir.path()),
        toml_path(&guest("kv-counter"))
    );
    let gw = Gateway::start(&routes);
    let (status, _, body) = get(&http1(), &gw.url("/other/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "keyvalue error: access denied\n")
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_keyvalue_operations_total",
            &[("store", "theirs"), ("op", "open"), ("outcome", "denied")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_unreachable_backend_is_an_error_the_guest_handles_and_other_routes_keep_serving() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let routes = format!(
        "[keyvalue.down]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n\n{}\n[[route]]\npath = \"/hello/:name\"\ncomponent = {}\n",
        counter_route("down"),
        toml_path(&guest("hello"))
    );
    let gw = Gateway::start(&routes);
    let (status, _, body) = get(&http1(), &gw.url("/count/x")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the guest got an error, not a trap: {body}"
    );
    assert!(body.contains("unavailable"), "{body}");
    assert_eq!(
        get(&http1(), &gw.url("/hello/still")).await.0,
        StatusCode::OK
    );
    gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("keyvalue backend failed") && l.contains("store=down")
    });
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_keyvalue_operations_total",
            &[
                ("store", "down"),
                ("backend", "redis"),
                ("outcome", "error")
            ]
        )
        .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn a_route_naming_an_undefined_store_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[engine]\ncache_dir = {}\n[keyvalue.real]\nbackend = \"memory\"\n{}",
        toml_path(&shared_cache_dir()),
        counter_route("imaginary")
    );
    let (ok, stderr) = check_config(dir.path(), &config);
    assert!(!ok);
    assert!(
        stderr.contains("route 1 (/count/...)")
            && stderr.contains("keyvalue store `imaginary` is not defined"),
        "{stderr}"
    );
}
