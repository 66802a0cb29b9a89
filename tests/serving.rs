//! Serving components end to end: protocols, routing, headers, streaming, env, stdio, metrics.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::time::Duration;

fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/hello/:name"
methods = ["GET"]
component = {hello}

[[route]]
path = "/echo/:id/..."
component = {echo}

[[route]]
path = "/stream"
component = {streaming}

[[route]]
path = "/env"
component = {env}
env = {{ GREETING = "hi there", REGION = "test-1" }}
"#,
        hello = toml_path(&guest("hello")),
        echo = toml_path(&guest("echo")),
        streaming = toml_path(&guest("streaming")),
        env = toml_path(&guest("env")),
    )
}

#[tokio::test]
async fn hello_over_http1_and_http2() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let (status, headers, body) = get(&client, &gw.url("/hello/world")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "Hello, world!\n");
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(
            headers["x-request-id"].len(),
            32,
            "a request id is returned"
        );
    }
    // HTTP/2 really was negotiated by prior knowledge.
    let response = send(
        &http2(),
        Request::get(gw.url("/hello/h2")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(response.version(), http::Version::HTTP_2);
}

/// Sends `GET /hello/{name}` on a raw HTTP/1.1 connection and reads its whole answer.
async fn hello_on(connection: &mut tokio::net::TcpStream, name: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /hello/{name} HTTP/1.1\r\nhost: test\r\n\r\n");
    connection.write_all(request.as_bytes()).await.unwrap();
    let want = format!("Hello, {name}!\n");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // The whole answer: its body, and the last chunk when it is chunked.
    let complete = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer);
        text.contains(&want) && (text.ends_with(&want) || text.ends_with("\r\n0\r\n\r\n"))
    };
    while !complete(&answer) {
        let read = tokio::time::timeout(Duration::from_secs(10), connection.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(read > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
}

/// The names of the gateway process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

async fn worker_connections(gw: &Gateway, worker: &str) -> Option<f64> {
    metric_value(
        &gw.metrics().await,
        "wasmgate_worker_connections",
        &[("worker", worker)],
    )
}

#[tokio::test]
async fn per_core_workers_each_serve_their_share_of_the_connections() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "scheduler = \"per_core\"\nworkers = 2\n".into(),
            ..Sections::default()
        },
    );
    let threads = thread_names(gw.pid());
    for worker in ["wg-worker-0", "wg-worker-1"] {
        assert!(threads.iter().any(|t| t == worker), "{threads:?}");
    }
    assert!(!threads.iter().any(|t| t == "wg-worker-2"), "{threads:?}");
    // Each new connection goes to the worker serving the fewest, so four make two each.
    let mut connections = Vec::new();
    for i in 0..4 {
        let mut connection = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        hello_on(&mut connection, &format!("c{i}")).await;
        connections.push(connection);
    }
    assert_eq!(worker_connections(&gw, "0").await, Some(2.0));
    assert_eq!(worker_connections(&gw, "1").await, Some(2.0));
    // Each keeps serving its connections, keep-alive.
    for (i, connection) in connections.iter_mut().enumerate() {
        hello_on(connection, &format!("again{i}")).await;
    }
    drop(connections);
    for worker in ["0", "1"] {
        gw.wait_for_metric(
            "wasmgate_worker_connections",
            &[("worker", worker)],
            0.0,
            Duration::from_secs(10),
        )
        .await;
    }
}

#[tokio::test]
async fn the_work_stealing_scheduler_serves_without_worker_threads() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "scheduler = \"work_stealing\"\n".into(),
            ..Sections::default()
        },
    );
    for client in [http1(), http2()] {
        let (status, _, body) = get(&client, &gw.url("/hello/stolen")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "Hello, stolen!\n")
        );
    }
    let mut connection = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    hello_on(&mut connection, "raw").await;
    let threads = thread_names(gw.pid());
    assert!(
        !threads.iter().any(|t| t.starts_with("wg-worker")),
        "{threads:?}"
    );
    assert_eq!(worker_connections(&gw, "0").await, None);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let gw = Gateway::start(&routes());
    let client = http1();
    for i in 0..20 {
        let (status, _, body) = get(&client, &gw.url(&format!("/hello/n{i}"))).await;
        assert_eq!((status, body), (StatusCode::OK, format!("Hello, n{i}!\n")));
    }
    let metrics = gw.metrics().await;
    let count = metric_value(
        &metrics,
        "http_server_request_duration_seconds_count",
        &[
            ("http_route", "/hello/:name"),
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
        ],
    );
    assert_eq!(count, Some(20.0));
}

#[tokio::test]
async fn the_component_sees_route_params_and_path_info_and_not_spoofed_headers() {
    let gw = Gateway::start(&routes());
    let request = Request::post(gw.url("/echo/42/a/b.txt?q=1"))
        .header("x-wasmgate-route", "/forged")
        .header("x-wasmgate-param-id", "forged")
        .header("x-wasmgate-anything", "forged")
        .header("x-custom", "kept")
        .body(body("payload"))
        .unwrap();
    let (status, headers, text) = read(send(&http1(), request).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "payload");
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-uri"], "/echo/42/a/b.txt?q=1");
    assert_eq!(headers["x-echo-header-x-wasmgate-route"], "/echo/:id/...");
    assert_eq!(headers["x-echo-header-x-wasmgate-param-id"], "42");
    assert_eq!(headers["x-echo-header-x-wasmgate-path-info"], "/a/b.txt");
    assert_eq!(headers["x-echo-header-x-custom"], "kept");
    assert!(
        headers.get("x-echo-header-x-wasmgate-anything").is_none(),
        "spoofed gateway headers are stripped"
    );
    assert_eq!(
        headers["x-echo-header-x-request-id"],
        headers["x-request-id"]
    );
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405_with_allow() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let (status, headers, body) = get(&client, &gw.url("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains(headers["x-request-id"].to_str().unwrap()));

        let request = Request::delete(gw.url("/hello/x")).body(empty()).unwrap();
        let (status, headers, _) = read(send(&client, request).await).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "GET");
    }
    let (status, _, _) = get(&http1(), &gw.url("/echo/1/../../hello/x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "dot segments are refused");
}

#[tokio::test]
async fn env_comes_from_the_route_and_stdio_becomes_tagged_log_lines() {
    let gw = Gateway::start(&routes());
    let (status, headers, body) = get(&http1(), &gw.url("/env")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "args=0\nGREETING=hi there\nREGION=test-1\n",
        "only the route's env, no args"
    );
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    for stream in ["stdout", "stderr"] {
        let line = gw.wait_for_output(Duration::from_secs(5), |l| {
            l.contains(&format!("env guest says hello on {stream}"))
        });
        assert!(
            line.contains(&request_id),
            "tagged with the request id: {line}"
        );
        assert!(line.contains("route=/env"), "tagged with the route: {line}");
        assert!(
            line.contains(&format!("stream=\"{stream}\""))
                || line.contains(&format!("stream={stream}")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn response_body_streams_as_the_guest_writes_it() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let response = send(
            &client,
            Request::get(gw.url("/stream?chunks=4&delay_ms=300"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = body
            .frame()
            .await
            .expect("a first frame")
            .expect("no error");
        let first = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
        assert_eq!(
            first, "chunk 0\n",
            "the first chunk arrives alone, before the guest wrote the rest"
        );
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "chunk 1\nchunk 2\nchunk 3\n");
    }
}

#[tokio::test]
async fn request_body_streams_into_the_guest() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_from(rx);
        let request = Request::builder()
            .method(Method::PUT)
            .uri(gw.url("/echo/1/x"))
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first;"))))
            .await
            .unwrap();
        let response = send(&client, request).await;
        let mut body = response.into_body();
        // The guest echoes the first part while the client has not finished the request.
        let echoed = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(echoed, "first;");
        tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second");
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn two_hundred_concurrent_requests_across_routes_all_answered_correctly() {
    let gw = Gateway::start(&routes());
    let clients = [http1(), http2()];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = clients[i % 2].clone();
        let url_hello = gw.url(&format!("/hello/c{i}"));
        let url_echo = gw.url(&format!("/echo/{i}/p"));
        let url_env = gw.url("/env");
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    let (status, _, body) = get(&client, &url_hello).await;
                    assert_eq!((status, body), (StatusCode::OK, format!("Hello, c{i}!\n")));
                }
                1 => {
                    let payload = format!("payload-{i}").repeat(100);
                    let request = Request::post(&url_echo)
                        .body(body(payload.clone()))
                        .unwrap();
                    let (status, headers, text) = read(send(&client, request).await).await;
                    assert_eq!(status, StatusCode::OK);
                    assert_eq!(text, payload);
                    assert_eq!(
                        headers["x-echo-header-x-wasmgate-param-id"],
                        i.to_string().as_str()
                    );
                }
                _ => {
                    let (status, _, body) = get(&client, &url_env).await;
                    assert_eq!(status, StatusCode::OK);
                    assert!(body.contains("REGION=test-1"));
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("request task");
    }
}

#[tokio::test]
async fn probes_and_metrics_on_the_admin_port() {
    let gw = Gateway::start(&routes());
    let (status, _, _) = get(&http1(), &gw.admin_url("/livez")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&http1(), &gw.admin_url("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, routes) = get(&http1(), &gw.admin_url("/routes")).await;
    assert!(
        routes.contains("/hello/:name hello.wasm\n")
            && routes.contains("/echo/:id/... echo.wasm\n"),
        "{routes}"
    );

    get(&http1(), &gw.url("/hello/metrics")).await;
    get(&http1(), &gw.url("/nowhere")).await;
    let metrics = gw.metrics().await;
    let hello = [("route", "/hello/:name")];
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_instantiation_duration_seconds_count",
            &hello
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "http_server_active_requests",
            &[("http_route", "/hello/:name")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&metrics, "wasmgate_instances_active", &hello),
        Some(0.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "unmatched"),
                ("http_response_status_code", "404")
            ]
        ),
        Some(1.0)
    );
    assert!(
        !metrics.contains("route=\"/hello/metrics\"")
            && !metrics.contains("http_route=\"/hello/metrics\""),
        "the route label is the template, never the path"
    );
    assert!(metrics.contains("wasmgate_build_info{version="));
}

/// A streamed response is in flight, and its duration runs, until its last byte is sent (the
/// OpenTelemetry conventions), not only until its headers.
#[tokio::test]
async fn a_streamed_response_counts_as_active_and_timed_until_its_body_ends() {
    let gw = Gateway::start(&routes());
    let client = http1();
    let response = send(
        &client,
        Request::get(gw.url("/stream?chunks=3&delay_ms=400"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let stream = [("http_route", "/stream")];
    // Headers are out, the body is still coming.
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "http_server_active_requests", &stream),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "http_server_request_duration_seconds_count",
            &stream
        ),
        None,
        "not recorded before the body ends"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = gw.metrics().await;
        let seconds = metric_value(
            &metrics,
            "http_server_request_duration_seconds_sum",
            &stream,
        );
        if let Some(seconds) = seconds {
            assert!(seconds >= 0.8, "the duration covers the body: {seconds}");
            assert_eq!(
                metric_value(&metrics, "http_server_active_requests", &stream),
                Some(0.0)
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
