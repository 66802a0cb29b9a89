//! Hardening: what idle, silent and slow clients, malformed requests and signals can no longer
//! do (issue 8). Each test failed before its fix.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/hello/:name"
component = {hello}

[[route]]
host = "a.example.com"
path = "/tenant"
component = {hello}

[[route]]
host = "*.example.com"
path = "/tenant"
component = {hello}

[[route]]
path = "/internal"
methods = ["GET"]
component = {hello}
private = true

[[route]]
path = "/echo"
component = {echo}

[[route]]
path = "/slow"
component = {looping}
timeout = "20s"

[[route]]
path = "/slow-one"
component = {looping}
timeout = "20s"
max_concurrency = 1
queue_timeout = "20s"

[[route]]
path = "/stream"
component = {streaming}
timeout = "60s"

[keyvalue.default]
backend = "memory"

[[route]]
path = "/kv/..."
component = {kv}
keyvalue = ["default"]
"#,
        kv = toml_path(&guest("kv-crud")),
        streaming = toml_path(&guest("streaming")),
        hello = toml_path(&guest("hello")),
        echo = toml_path(&guest("echo")),
        looping = toml_path(&guest("infinite-loop")),
    )
}

/// Sends raw bytes and returns the status code of the answer (0 if the connection closed
/// without one).
fn raw_status(gw: &Gateway, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(gw.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn malformed_hosts_and_ambiguous_paths_are_400_and_never_reach_a_route() {
    let gw = Gateway::start(&routes());
    for host in [
        "[",
        "[::1",
        "evil/.example.com",
        "a b.example.com",
        "x:99999",
    ] {
        let request = format!("GET /tenant HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&gw, request.as_bytes()), 400, "Host: {host}");
    }
    let two_hosts =
        b"GET /hello/x HTTP/1.1\r\nHost: a.example.com\r\nHost: b\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&gw, two_hosts), 400, "two Host headers");
    for path in [
        "/hello/%2e%2e",
        "/hello/..%2fx",
        "/hello/a%2Fb",
        "/hello/a%5cb",
        "/hello/a\\b",
        "/hello/%00",
        "/hello/%zz",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&gw, request.as_bytes()), 400, "{path}");
    }
    // Encoded characters that cannot change the route are passed through unchanged.
    let (status, _, body) = get(&http1(), &gw.url("/hello/a%20b")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello, a%20b!\n"));
    // The process survived all of it.
    let (status, _, _) = get(&http1(), &gw.url("/hello/still-here")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_private_route_is_404_to_a_wrong_method_from_outside() {
    let gw = Gateway::start(&routes());
    let request = Request::post(gw.url("/internal")).body(empty()).unwrap();
    let (status, headers, _) = read(send(&http1(), request).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        headers.get("allow").is_none(),
        "no Allow header leaks the route"
    );
}

#[tokio::test]
async fn routes_that_differ_by_host_have_their_own_metric_label() {
    let gw = Gateway::start(&routes());
    for host in ["a.example.com", "b.example.com", "b.example.com"] {
        let request = Request::get(gw.url("/tenant"))
            .header("host", host)
            .body(empty())
            .unwrap();
        let (status, _, _) = read(send(&http1(), request).await).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    let metrics = gw.metrics().await;
    let count = |route: &str| {
        metric_value(
            &metrics,
            "http_server_request_duration_seconds_count",
            &[("http_route", route), ("http_response_status_code", "200")],
        )
    };
    assert_eq!(count("a.example.com/tenant"), Some(1.0), "{metrics}");
    assert_eq!(count("*.example.com/tenant"), Some(2.0), "{metrics}");
    let (_, _, routes) = get(&http1(), &gw.admin_url("/routes")).await;
    assert!(
        routes.contains("a.example.com/tenant hello.wasm"),
        "{routes}"
    );
}

/// The route's in-flight gauge, read from the admin port.
async fn active(gw: &Gateway, route: &str) -> f64 {
    metric_value(
        &gw.metrics().await,
        "http_server_active_requests",
        &[("http_route", route)],
    )
    .unwrap_or(0.0)
}

async fn wait_for_active(gw: &Gateway, route: &str, want: f64) {
    let started = Instant::now();
    loop {
        let now = active(gw, route).await;
        if now == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{route}: {now} requests in flight, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_active_requests_gauge_drops_when_a_client_goes_away() {
    let gw = Gateway::start(&routes());

    // HTTP/1.1: the client closes its TCP connection while the guest runs.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for_active(&gw, "/slow", 1.0).await;
    drop(stream);
    wait_for_active(&gw, "/slow", 0.0).await;

    // HTTP/2: the client resets the stream (dropping the response future sends RST_STREAM).
    let client = http2();
    let request = Request::get(gw.url("/slow")).body(empty()).unwrap();
    let pending = tokio::spawn(async move { client.request(request).await });
    wait_for_active(&gw, "/slow", 1.0).await;
    pending.abort();
    wait_for_active(&gw, "/slow", 0.0).await;

    // Queued: /slow-one takes one request at a time; a second waits in its queue and goes away.
    let mut running = TcpStream::connect(gw.addr).unwrap();
    running
        .write_all(b"GET /slow-one HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for_active(&gw, "/slow-one", 1.0).await;
    let mut queued = TcpStream::connect(gw.addr).unwrap();
    queued
        .write_all(b"GET /slow-one HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for_active(&gw, "/slow-one", 2.0).await;
    drop(queued);
    wait_for_active(&gw, "/slow-one", 1.0).await;
    drop(running);
    wait_for_active(&gw, "/slow-one", 0.0).await;
}

#[tokio::test]
async fn silent_and_half_open_connections_cannot_lock_clients_out() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "max_connections = 4\nheader_read_timeout = \"3s\"\n".into(),
            ..Sections::default()
        },
    );
    let mut abusers = Vec::new();
    for i in 0..8 {
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        if i % 2 == 1 {
            stream.write_all(b"PRI").unwrap();
        }
        abusers.push(stream);
    }
    // A full HTTP/2 preface, then silence.
    let mut preface = TcpStream::connect(gw.addr).unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    abusers.push(preface);
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(4),
        get(&http1(), &gw.url("/hello/patient")),
    )
    .await
    .expect("served within header_read_timeout + 1 s");
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello, patient!\n")
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The evictions are counted, and the listener never held more than max_connections.
    let metrics = gw.metrics().await;
    let listener = gw.listeners[0].0.as_str();
    let evicted = metric_value(
        &metrics,
        "wasmgate_connections_closed_total",
        &[("listener", listener), ("reason", "room")],
    );
    assert!(evicted >= Some(5.0), "{metrics}");
    let open = metric_value(
        &metrics,
        "wasmgate_connections_open",
        &[("listener", listener)],
    );
    assert!(open.is_some_and(|open| open <= 4.0), "{metrics}");
    drop(abusers);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "idle_timeout = \"1s\"\nheader_read_timeout = \"20s\"\n".into(),
            ..Sections::default()
        },
    );
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .write_all(b"GET /hello/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("Hello, idle!") {
        let n = stream.read(&mut buf).expect("the response");
        assert!(n > 0, "closed before the response");
        seen.extend_from_slice(&buf[..n]);
    }
    // Kept alive, then closed once idle for idle_timeout (not header_read_timeout, 20s).
    let idle_since = Instant::now();
    match stream.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected the gateway to close the connection, got {other:?}"),
    }
    let idled = idle_since.elapsed();
    assert!(
        idled >= Duration::from_millis(900) && idled < Duration::from_secs(5),
        "closed after {idled:?}"
    );
    let listener = gw.listeners[0].0.as_str();
    let started = Instant::now();
    loop {
        let metrics = gw.metrics().await;
        let idle = metric_value(
            &metrics,
            "wasmgate_connections_closed_total",
            &[("listener", listener), ("reason", "idle")],
        );
        let open = metric_value(
            &metrics,
            "wasmgate_connections_open",
            &[("listener", listener)],
        );
        if idle == Some(1.0) && open == Some(0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_request_bodies_get_408_and_free_the_route() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "body_read_timeout = \"1s\"\n".into(),
            ..Sections::default()
        },
    );
    // 100 POSTs (the route's max_concurrency) that trickle their bodies.
    let mut tricklers = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            .unwrap();
        tricklers.push(stream);
    }
    std::thread::sleep(Duration::from_millis(1500));
    // They all got 408 (or had their connection closed) and gave their slots back.
    let started = Instant::now();
    let request = Request::post(gw.url("/echo")).body(body("hello")).unwrap();
    let (status, _, echoed) = read(send(&http1(), request).await).await;
    assert_eq!((status, echoed.as_str()), (StatusCode::OK, "hello"));
    assert!(started.elapsed() < Duration::from_millis(500));
    // echo answers before it reads the body, so its responses cannot become 408: they were
    // aborted (the connection closed without the chunked body's last chunk).
    for mut stream in tricklers {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut seen = Vec::new();
        stream
            .read_to_end(&mut seen)
            .expect("the connection was closed");
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.starts_with("HTTP/1.1 408") || !text.ends_with("0\r\n\r\n"),
            "a trickled request looked complete: {text}"
        );
    }

    // kv-crud reads the whole body before it answers: a slow body gets 408.
    let started = Instant::now();
    let request = b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab";
    assert_eq!(raw_status(&gw, request), 408);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_send_timeout() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "send_timeout = \"1s\"\n".into(),
            ..Sections::default()
        },
    );
    // About 130 MB of response that the client never reads: far more than the socket buffers.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .write_all(b"GET /stream?chunks=10000000&delay_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let instances = |metrics: &str| {
        metric_value(
            metrics,
            "wasmgate_instances_active",
            &[("route", "/stream")],
        )
        .unwrap_or(0.0)
    };
    let started = Instant::now();
    loop {
        if instances(&gw.metrics().await) == 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The buffers fill, the write waits for the client, and after send_timeout the connection
    // is dropped and the instance with it: long before the route's 60 s timeout.
    loop {
        if instances(&gw.metrics().await) == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the instance still streams to a client that does not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stream);
}

#[tokio::test]
async fn sighup_does_not_end_the_process_and_sigterm_fails_readiness_before_closing() {
    let mut gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "shutdown_delay = \"2s\"\n".into(),
            ..Sections::default()
        },
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, _) = get(&http1(), &gw.url("/hello/after-hup")).await;
    assert_eq!(status, StatusCode::OK, "SIGHUP must not end the process");

    gw.signal_terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = get(&http1(), &gw.admin_url("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready at once");
    // Still serving new connections during shutdown_delay.
    let (status, _, _) = get(&http1(), &gw.url("/hello/draining")).await;
    assert_eq!(status, StatusCode::OK);
    let exit = gw.wait_exit(Duration::from_secs(10));
    assert!(exit.success());
}

/// An HTTP/2 client connection on `addr` (the h2 crate), driven in a task that reports how the
/// connection ended and when.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<(Result<(), h2::Error>, Instant)>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let ended = connection.await;
        (ended, Instant::now())
    });
    (send, driver)
}

/// Sends a GET on an h2 connection and reads the whole body.
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> (StatusCode, String) {
    let request = Request::get(format!("http://x{path}")).body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_idle_timeout() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "idle_timeout = \"1s\"\nheader_read_timeout = \"20s\"\nkeepalive_interval = \"300ms\"\n"
                .into(),
            ..Sections::default()
        },
    );
    let (mut send, driver) = h2_connection(gw.addr).await;
    let (status, body) = h2_get(&mut send, "/hello/idle").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello, idle!\n"));
    // The gateway pings every 300 ms (the h2 client answers them), and still closes the
    // connection once it has had no request for idle_timeout: with GOAWAY, so it ends cleanly.
    let idle_since = Instant::now();
    let (ended, at) = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("closed within 10 s")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let idled = at - idle_since;
    assert!(
        idled >= Duration::from_millis(900) && idled < Duration::from_secs(5),
        "closed after {idled:?}"
    );
}

#[tokio::test]
async fn sigterm_sends_goaway_to_http2_connections_and_finishes_their_streams() {
    let mut gw = Gateway::start(&routes());
    let (mut send, driver) = h2_connection(gw.addr).await;
    let (status, _) = h2_get(&mut send, "/hello/before").await;
    assert_eq!(status, StatusCode::OK);
    // A stream in flight across the shutdown: 5 chunks, 200 ms apart.
    let mut streaming = send.clone();
    let in_flight =
        tokio::spawn(async move { h2_get(&mut streaming, "/stream?chunks=5&delay_ms=200").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.signal_terminate();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.matches("chunk").count(), 5, "{body}");
    // GOAWAY ended the connection cleanly, and it takes no new stream.
    let (ended, _) = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("closed within 10 s")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let refused = send
        .send_request(Request::get("http://x/hello/after").body(()).unwrap(), true)
        .map(|(response, _)| response);
    match refused {
        Err(_) => {}
        Ok(response) => assert!(response.await.is_err(), "a stream after GOAWAY was served"),
    }
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
}
