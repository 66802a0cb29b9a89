//! `wasi:http` 0.3 (p3) components through the real binary, with the `hello-p3` guest, which
//! numbers the requests its instance has taken: served on the same routes as p2 components,
//! with the same failures, limits and metrics; a fresh instance per request by default; with
//! `reuse` and `max_concurrent_per_instance`, requests that share an instance, at once.

mod common;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use std::time::Duration;

fn hello_p3() -> String {
    toml_path(&guest("hello_p3"))
}

fn engine_p3() -> String {
    format!(
        "cache_dir = {}\nmax_instances = 64\nwasi_p3 = true\n",
        toml_path(&shared_cache_dir())
    )
}

/// A gateway with `[engine] wasi_p3 = true` and `routes`.
fn start_p3(routes: &str) -> Gateway {
    Gateway::start_with(
        routes,
        Sections {
            engine: engine_p3(),
            ..Sections::default()
        },
    )
}

async fn hello(client: &HttpClient, gw: &Gateway, path: &str) -> String {
    let (status, headers, body) = get(client, &gw.url(path)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert!(headers.contains_key("x-request-id"));
    body
}

fn said(request: u64) -> String {
    format!("Hello from wasi:http 0.3! (request {request} of this instance)\n")
}

#[tokio::test]
async fn a_p3_component_gets_a_fresh_instance_per_request_by_default() {
    let gw = start_p3(&format!(
        "[[route]]\npath = \"/p3\"\ncomponent = {}\n",
        hello_p3()
    ));
    let client = http1();
    for _ in 0..3 {
        assert_eq!(hello(&client, &gw, "/p3").await, said(1));
    }
    let (status, _, body) = get(&http2(), &gw.url("/p3")).await;
    assert_eq!((status, body), (StatusCode::OK, said(1)), "over HTTP/2 too");
    let metrics = gw.metrics().await;
    let count = |name| metric_value(&metrics, name, &[("route", "/p3")]);
    assert_eq!(
        count("wasmgate_instantiation_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(count("wasmgate_instance_reuses_total"), Some(0.0));
    let served = metric_value(
        &metrics,
        "http_server_request_duration_seconds_count",
        &[("http_route", "/p3"), ("http_response_status_code", "200")],
    );
    assert_eq!(served, Some(4.0), "{metrics}");
}

#[tokio::test]
async fn with_reuse_requests_share_an_instance_and_run_in_it_at_once() {
    let gw = start_p3(&format!(
        r#"
[[route]]
path = "/one-at-a-time"
component = {hello}
reuse = {{ max_requests = 100 }}

[[route]]
path = "/together"
component = {hello}
reuse = {{ max_requests = 100 }}
max_concurrent_per_instance = 8
"#,
        hello = hello_p3()
    ));
    let client = http1();
    for path in ["/one-at-a-time", "/together"] {
        // One after another: the same instance, which counts on.
        assert_eq!(hello(&client, &gw, path).await, said(1));
        assert_eq!(hello(&client, &gw, path).await, said(2));
        // A slow request holds the instance; a quick one sent meanwhile gets another instance,
        // or, where the route allows it, runs in the same one and finishes first.
        // The slow request is in the instance once the instance counts its third request.
        let slow_url = gw.url(&format!("{path}?delay_ms=3000"));
        let slow_client = http1();
        let slow = tokio::spawn(async move { get(&slow_client, &slow_url).await });
        wait_for_reuses(&gw, path, 2.0).await;
        let quick = hello(&http1(), &gw, path).await;
        assert!(
            !slow.is_finished(),
            "{path}: the quick request came back first"
        );
        let (status, _, slow) = slow.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(slow, said(3), "{path}");
        if path == "/together" {
            assert_eq!(
                quick,
                said(4),
                "{path}: the quick request joined the busy instance"
            );
        } else {
            assert_eq!(
                quick,
                said(1),
                "{path}: the quick request had an instance of its own"
            );
        }
    }
    let metrics = gw.metrics().await;
    let reuses = |route| {
        metric_value(
            &metrics,
            "wasmgate_instance_reuses_total",
            &[("route", route)],
        )
    };
    assert_eq!(reuses("/one-at-a-time"), Some(2.0), "{metrics}");
    assert_eq!(reuses("/together"), Some(3.0), "{metrics}");
}

async fn wait_for_reuses(gw: &Gateway, route: &str, count: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = gw.metrics().await;
        let reuses = metric_value(
            &metrics,
            "wasmgate_instance_reuses_total",
            &[("route", route)],
        );
        if reuses == Some(count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{route}: {count} reuses never counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_p3_trap_is_a_500_and_a_slow_guest_a_504() {
    let gw = start_p3(&format!(
        r#"
[[route]]
path = "/p3"
component = {hello}
timeout = "300ms"
"#,
        hello = hello_p3()
    ));
    let client = http1();
    let (status, _, _) = get(&client, &gw.url("/p3?trap=1")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, _) = get(&client, &gw.url("/p3?delay_ms=5000")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(hello(&client, &gw, "/p3").await, said(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gw.metrics().await;
        let traps = |kind| {
            metric_value(
                &metrics,
                "wasmgate_guest_traps_total",
                &[("route", "/p3"), ("kind", kind)],
            )
        };
        if traps("trap") == Some(1.0) && traps("timeout") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a trap and a timeout counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_p3_body_cut_off_by_a_trap_is_not_passed_off_as_complete() {
    let gw = start_p3(&format!(
        "[[route]]\npath = \"/p3\"\ncomponent = {}\n",
        hello_p3()
    ));
    for client in [http1(), http2()] {
        // The guest sends the headers and `partial\n`, waits 300 ms, then traps: the client has
        // a 200 and the start of the body, and then the body must fail, not end.
        let request = http::Request::get(gw.url("/p3?cut=300"))
            .body(empty())
            .unwrap();
        let response = client.request(request).await.expect("the response headers");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first frame")
            .expect("a frame")
            .expect("the first frame is sent whole");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"partial\n"[..]));
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the body ends");
        assert!(rest.is_err(), "a body whose guest trapped is cut off");
    }
    // And the route still serves.
    assert_eq!(hello(&http1(), &gw, "/p3").await, said(1));
}

#[tokio::test]
async fn a_p3_component_calls_routes_of_either_kind_through_self() {
    let gw = start_p3(&format!(
        r#"
[[route]]
path = "/p3"
component = {hello_p3}
allowed_outbound_hosts = ["http://self"]

[[route]]
path = "/p2/hello"
component = {hello}
private = true

[[route]]
path = "/p3-private"
component = {hello_p3}
private = true
"#,
        hello_p3 = hello_p3(),
        hello = toml_path(&guest("hello")),
    ));
    let client = http1();
    assert_eq!(
        hello(&client, &gw, "/p3?self=p2/hello").await,
        "200 Hello from wasmgate!\n"
    );
    assert_eq!(
        hello(&client, &gw, "/p3?self=p3-private").await,
        format!("200 {}", said(1))
    );
    let missing = hello(&client, &gw, "/p3?self=nowhere").await;
    assert!(missing.starts_with("404 "), "{missing}");
}

#[test]
fn without_wasi_p3_a_p3_component_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = check_config(
        dir.path(),
        &format!("[[route]]\npath = \"/\"\ncomponent = {}\n", hello_p3()),
    );
    assert!(!ok, "{output}");
    assert!(
        output.contains("it is a WASI 0.3 component") && output.contains("`wasi_p3 = true`"),
        "{output}"
    );
}

#[test]
fn max_concurrent_per_instance_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = format!("[engine]\n{}", engine_p3());
    for (route, expected) in [
        (
            format!(
                "path = \"/\"\ncomponent = {}\nmax_concurrent_per_instance = 4",
                hello_p3()
            ),
            "max_concurrent_per_instance above 1 shares an instance between requests: add `reuse`",
        ),
        (
            format!(
                "path = \"/\"\ncomponent = {}\nreuse = {{}}\nmax_concurrent_per_instance = 4",
                toml_path(&guest("hello"))
            ),
            "max_concurrent_per_instance is for `wasi:http` 0.3 components",
        ),
        (
            format!(
                "path = \"/\"\ncomponent = {}\nmax_concurrent_per_instance = 0",
                hello_p3()
            ),
            "max_concurrent_per_instance must be at least 1",
        ),
    ] {
        let (ok, output) = check_config(dir.path(), &format!("{engine}[[route]]\n{route}\n"));
        assert!(!ok, "{route}");
        assert!(output.contains(expected), "{route}: {output}");
    }
    let (ok, output) = check_config(
        dir.path(),
        &format!(
            "{engine}[[route]]\npath = \"/\"\ncomponent = {}\nreuse = {{}}\nmax_concurrent_per_instance = 4\n",
            hello_p3()
        ),
    );
    assert!(ok, "{output}");
}
