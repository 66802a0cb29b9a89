//! Upstream routes end to end: a real gateway forwarding to small hyper servers this test
//! starts (what each request looked like when it arrived, connection counts, failure modes):
//! rewriting and proxy hygiene, keep-alive reuse, balancing, retries and ejection, 502 / 503 /
//! 504, streaming both ways, and a response cut mid-body.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// A test upstream: counts connections and requests, and answers by path:
/// `/status/NNN` with that status, `/slow` after 3 s, `/cut` with half its promised body,
/// `/echo` with the request body streamed back, anything else 200 with a description of the
/// request (method, path and query, then every header as `name: value` lines).
struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// What `/healthz` answers.
    health: Arc<std::sync::atomic::AtomicU16>,
}

async fn test_server(name: &'static str) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let (c, r, h) = (connections.clone(), requests.clone(), health.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::Relaxed);
            let requests = r.clone();
            let health = h.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    if request.uri().path() == "/healthz" {
                        let status = health.load(Ordering::Relaxed);
                        let mut response = Response::new(text_body(name));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        return futures::future::Either::Left(async move {
                            Ok::<_, Infallible>(response)
                        });
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    futures::future::Either::Right(answer(name, request))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer {
        addr,
        connections,
        requests,
        health,
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn text_body(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn answer(
    name: &'static str,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = request.uri().path().to_string();
    if let Some(status) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(status.parse().unwrap_or(500)).unwrap();
        let mut response = Response::new(text_body(name));
        *response.status_mut() = status;
        return Ok(response);
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path == "/cut" {
        // 100 bytes promised, 10 sent, then the body fails: hyper ends the connection.
        // The pause lets the headers and the first bytes go out before the failure.
        let frames = futures::stream::unfold(0, |step| async move {
            match step {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"0123456789"))), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Err(std::io::Error::other("cut")), 2))
                }
                _ => None,
            }
        });
        let mut response = Response::new(StreamBody::new(frames).boxed());
        response
            .headers_mut()
            .insert("content-length", "100".parse().unwrap());
        return Ok(response);
    }
    if path == "/echo" {
        let body = request.into_body();
        let frames = futures::stream::unfold(body, |mut body| async move {
            match body.frame().await {
                Some(Ok(frame)) => Some((Ok::<_, std::io::Error>(frame), body)),
                _ => None,
            }
        });
        let streamed = StreamBody::new(frames).boxed();
        return Ok(Response::new(streamed));
    }
    let mut text = format!(
        "server: {name}\n{} {}\n",
        request.method(),
        request.uri().path_and_query().map_or("", |p| p.as_str())
    );
    for (header, value) in request.headers() {
        text.push_str(&format!("{header}: {}\n", value.to_str().unwrap_or("?")));
    }
    let mut response = Response::new(text_body(text));
    response
        .headers_mut()
        .insert("x-server", name.parse().unwrap());
    // Hop-by-hop headers that must not reach the client.
    response
        .headers_mut()
        .insert("connection", "x-upstream-private".parse().unwrap());
    response
        .headers_mut()
        .insert("x-upstream-private", "1".parse().unwrap());
    response
        .headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(response)
}

/// A port with nothing listening.
fn dead_target() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn upstream(name: &str, targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[upstream.{name}]\ntargets = [{}]\n{extra}\n",
        targets.join(", ")
    )
}

fn upstream_route(path: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n{extra}\n")
}

fn line<'a>(text: &'a str, header: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{header}: ")))
}

#[tokio::test]
async fn requests_are_rewritten_forwarded_and_kept_alive() {
    let server = test_server("a").await;
    let target = format!("http://{}", server.addr);
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("api", &[target], ""),
        upstream_route("/api/...", "api", "strip_prefix = \"/api\"\n")
    ));
    let client = http1();
    let request = Request::get(gw.url("/api/users?page=2"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header(
            "connection",
            "x-secret, x-forwarded-for, x-request-id, forwarded",
        )
        .header("x-secret", "1")
        .body(empty())
        .unwrap();
    let (status, headers, text) = read(send(&client, request).await).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("GET /users?page=2\n"), "{text}");
    assert_eq!(line(&text, "host"), Some("shop.example"));
    assert_eq!(line(&text, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(line(&text, "x-forwarded-proto"), Some("http"));
    assert_eq!(line(&text, "via"), Some("1.1 wasmgate"));
    assert!(line(&text, "x-request-id").is_some(), "{text}");
    assert!(line(&text, "forwarded").is_some(), "{text}");
    assert_eq!(
        line(&text, "x-secret"),
        None,
        "a header Connection names crossed"
    );
    assert_eq!(headers["x-server"], "a");
    assert!(headers.get("x-upstream-private").is_none(), "{headers:?}");
    assert!(headers.get("keep-alive").is_none(), "{headers:?}");
    assert!(headers.get("x-request-id").is_some());

    // The exact prefix alone becomes `/`.
    let (_, _, text) = get(&client, &gw.url("/api")).await;
    assert!(text.contains("GET /\n"), "{text}");

    // Keep-alive: many requests, few connections to the target.
    for i in 0..40 {
        let (status, _, _) = get(&client, &gw.url(&format!("/api/r{i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(server.requests.load(Ordering::Relaxed) >= 42);
    assert!(
        server.connections.load(Ordering::Relaxed) <= 3,
        "{} connections for 42 requests",
        server.connections.load(Ordering::Relaxed)
    );
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_upstream_requests_total",
            &[("upstream", "api"), ("status", "200")]
        )
        .unwrap_or(0.0)
            >= 42.0,
        "{metrics}"
    );
    // The pool's counts, as the gateway sees them, match the target's.
    let opened = metric_value(
        &metrics,
        "wasmgate_upstream_connections_opened_total",
        &[("upstream", "api")],
    );
    assert_eq!(
        opened,
        Some(server.connections.load(Ordering::Relaxed) as f64),
        "{metrics}"
    );
    let open = metric_value(
        &metrics,
        "wasmgate_upstream_connections",
        &[("upstream", "api")],
    );
    assert!(open.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(
        metric_value(
            &metrics,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "/api/..."),
                ("http_response_status_code", "200")
            ]
        )
        .unwrap_or(0.0)
            >= 42.0
    );
}

#[tokio::test]
async fn round_robin_spreads_load_and_a_dead_target_is_ejected_without_client_errors() {
    let (a, b) = (test_server("a").await, test_server("b").await);
    let targets = [
        format!("http://{}", a.addr),
        dead_target(),
        format!("http://{}", b.addr),
    ];
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(
            "api",
            &targets,
            "retries = { attempts = 2, on = [\"connect-failure\"] }\neject_after = 3\neject_for = \"60s\"\n"
        ),
        upstream_route("/...", "api", "")
    ));
    let client = http1();
    for i in 0..300 {
        let (status, _, text) = get(&client, &gw.url(&format!("/r{i}"))).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {text}");
    }
    let (served_a, served_b) = (
        a.requests.load(Ordering::Relaxed) as f64,
        b.requests.load(Ordering::Relaxed) as f64,
    );
    assert!(
        (served_a - served_b).abs() <= 0.1 * (served_a + served_b) / 2.0,
        "a served {served_a}, b served {served_b}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_upstream_target_healthy",
            &[("upstream", "api"), ("target", &targets[1])]
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(gw.output().contains("upstream target ejected"));
}

#[tokio::test]
async fn failures_are_502_504_and_503_and_a_cut_body_aborts_the_response() {
    let server = test_server("a").await;
    let live = format!("http://{}", server.addr);
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        upstream("dead", &[dead_target()], "eject_after = 2\n"),
        upstream("live", std::slice::from_ref(&live), "timeout = \"500ms\"\n"),
        upstream_route("/dead/...", "dead", "strip_prefix = \"/dead\"\n"),
        upstream_route("/live/...", "live", "strip_prefix = \"/live\"\n"),
        ""
    ));
    let client = http1();
    for _ in 0..2 {
        let (status, _, _) = get(&client, &gw.url("/dead/x")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    // Ejected after two failures: no healthy target.
    let (status, headers, _) = get(&client, &gw.url("/dead/x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));

    let (status, _, _) = get(&client, &gw.url("/live/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // A target's own error status passes through (no retries configured).
    let (status, _, _) = get(&client, &gw.url("/live/status/503")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The target promised 100 bytes and sent 10: the client's response must not look complete.
    let response = send(
        &client,
        Request::get(gw.url("/live/cut")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ends");
    assert!(body.is_err(), "a cut response read as complete");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let server = test_server("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("api", &[format!("http://{}", server.addr)], ""),
        upstream_route("/...", "api", "")
    ));
    let payload: Vec<u8> = (0..(8 << 20)).map(|i| (i % 251) as u8).collect();
    let request = Request::post(gw.url("/echo"))
        .body(body(payload.clone()))
        .unwrap();
    let response = send(&http2(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "the body came back changed");
}

#[test]
fn upstream_routes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let api = upstream("api", &["http://127.0.0.1:9".into()], "");
    for (config, expect) in [
        (
            upstream_route("/x", "nope", ""),
            "upstream `nope` is not defined",
        ),
        (
            format!("{api}[[route]]\npath = \"/x\"\nupstream = \"api\"\ncomponent = \"a.wasm\"\n"),
            "give one of `component`, `upstream` and `targets`",
        ),
        (
            format!(
                "{api}{}",
                upstream_route("/x", "api", "env = { A = \"1\" }\n")
            ),
            "`env` is for component routes",
        ),
        (
            format!(
                "{api}{}",
                upstream_route("/x/...", "api", "strip_prefix = \"/y\"\n")
            ),
            "strip_prefix `/y` must be a literal leading part",
        ),
        (
            upstream("bad", &["ftp://x".into()], ""),
            "[upstream.bad]: target `ftp://x`",
        ),
        (
            upstream("bad", &["http://x:1/path".into()], ""),
            "must not have a path",
        ),
        (
            upstream("bad", &["http://x:1".into()], "hash_key = \"header:x\""),
            "hash_key is for balance = \"hash\"",
        ),
        (
            upstream(
                "bad",
                &["http://x:1".into()],
                "balance = \"hash\"\nhash_key = \"query:x\"",
            ),
            "hash_key is `client_ip`, `header:NAME` or `cookie:NAME`",
        ),
        (
            "[[route]]\npath = \"/x\"\n".to_string(),
            "needs a `component`, an `upstream` or `targets`",
        ),
    ] {
        let (ok, text) = check_config(dir.path(), &config);
        assert!(!ok && text.contains(expect), "{expect}: {text}");
    }
}

#[tokio::test]
async fn admission_limits_apply_to_upstream_routes() {
    let server = test_server("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("api", &[format!("http://{}", server.addr)], ""),
        upstream_route("/...", "api", "max_concurrency = 1\nqueue_size = 0\n")
    ));
    let slow_url = gw.url("/slow");
    let slow = tokio::spawn(async move { get(&http1(), &slow_url).await.0 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, headers, _) = get(&http1(), &gw.url("/fast")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let (status, _, _) = get(&http1(), &gw.url("/fast")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn https_targets_are_verified_against_the_configured_ca_and_speak_h2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::Pki::new(dir.path(), "internal");
    let addr = common::tls::https_test_server(&pki, "upstream.internal").await;
    let target = format!("https://{addr}");
    let trusted = format!(
        "tls = {{ ca = {}, server_name = \"upstream.internal\" }}\n",
        toml_path(pki.ca_path())
    );
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream("trusted", std::slice::from_ref(&target), &trusted),
        upstream(
            "untrusted",
            std::slice::from_ref(&target),
            "tls = { server_name = \"upstream.internal\" }\n"
        ),
        upstream_route("/trusted/...", "trusted", "strip_prefix = \"/trusted\"\n"),
        upstream_route(
            "/untrusted/...",
            "untrusted",
            "strip_prefix = \"/untrusted\"\n"
        ),
    ));
    let (status, headers, text) = get(&http1(), &gw.url("/trusted/x")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["x-server"], "tls");
    assert_eq!(text, "HTTP/2.0", "ALPN should pick h2 to an https target");
    // Without the internal CA, the target's certificate is not trusted.
    let (status, _, _) = get(&http1(), &gw.url("/untrusted/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn active_health_checks_take_a_target_out_and_bring_it_back() {
    let (a, b) = (test_server("a").await, test_server("b").await);
    let target_a = format!("http://{}", a.addr);
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(
            "api",
            &[target_a.clone(), format!("http://{}", b.addr)],
            "health = { path = \"/healthz\", interval = \"100ms\", unhealthy_after = 2, healthy_after = 2 }\n"
        ),
        upstream_route("/...", "api", "")
    ));
    let healthy = |metrics: &str| {
        metric_value(
            metrics,
            "wasmgate_upstream_target_healthy",
            &[("upstream", "api"), ("target", &target_a)],
        )
    };
    let wait_for = |want: f64| {
        let gw = &gw;
        async move {
            let started = std::time::Instant::now();
            while healthy(&gw.metrics().await) != Some(want) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "target a never {want}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    a.health.store(503, Ordering::Relaxed);
    wait_for(0.0).await;
    for i in 0..20 {
        let (status, headers, _) = get(&http1(), &gw.url(&format!("/r{i}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["x-server"], "b",
            "request {i} reached the unhealthy target"
        );
    }
    a.health.store(200, Ordering::Relaxed);
    wait_for(1.0).await;
    let mut servers = std::collections::HashSet::new();
    for i in 0..10 {
        let (_, headers, _) = get(&http1(), &gw.url(&format!("/s{i}"))).await;
        servers.insert(headers["x-server"].to_str().unwrap().to_string());
    }
    assert!(
        servers.contains("a"),
        "target a is back in rotation: {servers:?}"
    );
    assert!(gw.output().contains("failed its health checks"));
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_upstream_and_its_connections() {
    let server = test_server("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("api", &[format!("http://{}", server.addr)], ""),
        upstream_route("/api/...", "api", "")
    ));
    let client = http1();
    let requests = |n: usize| {
        let (client, url) = (client.clone(), gw.url("/api/x"));
        async move {
            for _ in 0..n {
                let (status, _, text) = get(&client, &url).await;
                assert_eq!(status, StatusCode::OK, "{text}");
            }
        }
    };
    requests(5).await;
    assert_eq!(server.connections.load(Ordering::Relaxed), 1);

    let path = gw.dir.path().join("wasmgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let reload = || async {
        let request = Request::post(gw.admin_url("/reload"))
            .body(empty())
            .unwrap();
        let (status, _, body) = read(send(&http1(), request).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    // Another route, the same upstream: its pool carries over.
    std::fs::write(
        &path,
        format!("{text}{}", upstream_route("/other", "api", "")),
    )
    .unwrap();
    reload().await;
    requests(5).await;
    assert_eq!(server.connections.load(Ordering::Relaxed), 1);

    // A changed upstream is built again, with a new pool.
    std::fs::write(
        &path,
        text.replace("[upstream.api]\n", "[upstream.api]\ntimeout = \"20s\"\n"),
    )
    .unwrap();
    reload().await;
    requests(1).await;
    assert_eq!(server.connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn hash_balancing_keeps_a_key_on_its_target_and_moves_only_a_leaving_targets_keys() {
    let servers = [
        test_server("a").await,
        test_server("b").await,
        test_server("c").await,
    ];
    let targets: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(
            "api",
            &targets,
            "balance = \"hash\"\nhash_key = \"header:x-user\"\n\
             health = { path = \"/healthz\", interval = \"100ms\", unhealthy_after = 1, healthy_after = 1 }\n"
        ),
        upstream_route("/...", "api", "")
    ));
    let client = http1();
    let server_of = |user: usize| {
        let (client, url) = (client.clone(), gw.url("/who"));
        async move {
            let request = Request::get(url)
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            let (status, headers, _) = read(send(&client, request).await).await;
            assert_eq!(status, StatusCode::OK);
            headers["x-server"].to_str().unwrap().to_string()
        }
    };
    let mut before = Vec::new();
    for user in 0..60 {
        let first = server_of(user).await;
        for _ in 0..2 {
            assert_eq!(server_of(user).await, first, "user-{user} moved");
        }
        before.push(first);
    }
    for name in ["a", "b", "c"] {
        let share = before.iter().filter(|s| *s == name).count();
        assert!(share >= 5, "{name} got {share} of 60 users: {before:?}");
    }

    // b fails its health check: its users move, nobody else does.
    servers[1].health.store(503, Ordering::Relaxed);
    let started = std::time::Instant::now();
    loop {
        let healthy = metric_value(
            &gw.metrics().await,
            "wasmgate_upstream_target_healthy",
            &[("upstream", "api"), ("target", &targets[1])],
        );
        if healthy == Some(0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "b never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (user, was) in before.iter().enumerate() {
        let now = server_of(user).await;
        if was == "b" {
            assert_ne!(now, "b", "user-{user} still on b");
        } else {
            assert_eq!(&now, was, "user-{user} moved though its target stayed");
        }
    }
}

#[tokio::test]
async fn a_retried_answer_reaches_the_client_when_no_other_try_answers() {
    let server = test_server("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(
            "api",
            &[format!("http://{}", server.addr), dead_target()],
            "retries = { attempts = 2, on = [\"connect-failure\", \"503\"] }\neject_after = 100\n"
        ),
        upstream_route("/...", "api", "")
    ));
    // Whichever target comes first, the 503 is the only answer there is: the client gets it,
    // not a 502.
    for _ in 0..4 {
        let (status, _, body) = get(&http1(), &gw.url("/status/503")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "a")
        );
    }
}

/// A line of `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_body_far_larger_than_memory_streams_both_ways_in_bounded_memory() {
    let server = test_server("a").await;
    let gw = Gateway::start_with(
        &format!(
            "{}{}",
            upstream("api", &[format!("http://{}", server.addr)], ""),
            upstream_route("/...", "api", "")
        ),
        Sections {
            server: "max_request_body = \"1GiB\"".into(),
            ..Sections::default()
        },
    );
    // Warm up (pools, buffers), then note the peak so far.
    let (status, _, _) = get(&http1(), &gw.url("/warm")).await;
    assert_eq!(status, StatusCode::OK);
    let before = memory_kib(gw.pid(), "VmHWM");

    // 256 MiB up and back down, made and checked in chunks: nobody holds it whole.
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 4096;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let sent = chunk.clone();
    let frames = futures::stream::iter(
        (0..CHUNKS).map(move |_| Ok::<_, BoxError>(Frame::data(sent.clone()))),
    );
    let request = Request::post(gw.url("/echo"))
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len();
        }
    }
    assert_eq!(received, CHUNK * CHUNKS);

    let grown_mib = (memory_kib(gw.pid(), "VmHWM").saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 64,
        "the gateway's peak memory grew {grown_mib} MiB carrying 256 MiB"
    );
}

#[tokio::test]
async fn host_header_target_sends_the_targets_own_host() {
    let server = test_server("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(
            "api",
            &[format!("http://{}", server.addr)],
            "host_header = \"target\"\n"
        ),
        upstream_route("/...", "api", "")
    ));
    let request = Request::get(gw.url("/who"))
        .header("host", "shop.example")
        .body(empty())
        .unwrap();
    let (status, _, text) = read(send(&http1(), request).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        line(&text, "host"),
        Some(server.addr.to_string().as_str()),
        "{text}"
    );
    // The client's host still reaches the target, as x-forwarded-host.
    assert_eq!(
        line(&text, "x-forwarded-host"),
        Some("shop.example"),
        "{text}"
    );
}
