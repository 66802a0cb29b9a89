//! Everything that goes wrong gets a clear answer: guest traps, timeouts, memory, admission,
//! request limits, malformed requests, and outgoing requests the route does not allow.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/hello/:name"
component = {hello}

[[route]]
path = "/trap"
component = {trap}

[[route]]
path = "/silent"
component = {never}

[[route]]
path = "/loop"
component = {looping}
timeout = "400ms"

[[route]]
path = "/memory"
component = {memory}
max_memory = "32MiB"

[[route]]
path = "/echo"
component = {echo}

[[route]]
path = "/one-at-a-time"
component = {streaming}
max_concurrency = 1
queue_size = 0

[[route]]
path = "/short-queue"
component = {streaming}
max_concurrency = 1
queue_size = 1
queue_timeout = "100ms"
"#,
        hello = toml_path(&guest("hello")),
        trap = toml_path(&guest("trap")),
        never = toml_path(&guest("never-responds")),
        looping = toml_path(&guest("infinite-loop")),
        memory = toml_path(&guest("memory-hog")),
        echo = toml_path(&guest("echo")),
        streaming = toml_path(&guest("streaming")),
    )
}

fn limits() -> Sections {
    Sections {
        server: "max_request_body = \"1KiB\"\nmax_header_bytes = \"8KiB\"\nheader_read_timeout = \"500ms\"\n".into(),
        ..Sections::default()
    }
}

#[tokio::test]
async fn a_trap_gives_500_with_the_request_id_and_nothing_of_the_guest() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let (status, headers, body) = get(&client, &gw.url("/trap")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let request_id = headers["x-request-id"].to_str().unwrap();
        assert!(body.contains(request_id), "{body}");
        assert!(
            !body.contains("panicked"),
            "guest internals stay in the log: {body}"
        );
        // The trap is in the log, with the request id.
        gw.wait_for_output(Duration::from_secs(5), |l| {
            l.contains("component trapped") && l.contains(request_id)
        });
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_guest_traps_total",
            &[("route", "/trap"), ("kind", "trap")]
        ),
        Some(2.0)
    );
    // The gateway keeps serving.
    let (status, _, _) = get(&http1(), &gw.url("/hello/after")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_trap_after_the_headers_aborts_the_response() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        // The guest sends headers and a chunk, pauses so they reach the client, then traps.
        let request = Request::get(gw.url("/trap?after_headers=1&delay_ms=200"))
            .body(empty())
            .unwrap();
        let response = send(&client, request).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the headers were already sent"
        );
        let mut body = response.into_body();
        let mut received = Vec::new();
        let outcome = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received.extend_from_slice(frame.data_ref().map(|d| &d[..]).unwrap_or(&[]))
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        assert_eq!(received, b"partial\n");
        assert!(
            outcome.is_err(),
            "the body must end in an error, not look complete"
        );
    }
}

#[tokio::test]
async fn a_trap_right_after_setting_the_response_is_never_a_complete_body() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        for _ in 0..5 {
            let request = Request::get(gw.url("/trap?after_headers=1"))
                .body(empty())
                .unwrap();
            // Either the gateway saw the trap before anything went out (500), or the response
            // was aborted; a clean 200 would be a lie.
            match client.request(request).await {
                Ok(response) if response.status() == StatusCode::INTERNAL_SERVER_ERROR => {}
                Ok(response) => {
                    assert_eq!(response.status(), StatusCode::OK);
                    assert!(
                        response.into_body().collect().await.is_err(),
                        "a complete-looking body"
                    );
                }
                Err(e) => assert!(
                    e.is_connect()
                        || format!("{e:?}").contains("Incomplete")
                        || format!("{e:?}").contains("Reset")
                        || format!("{e:?}").contains("reset"),
                    "{e:?}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn a_guest_that_never_responds_gets_500() {
    let gw = Gateway::start(&routes());
    let (status, headers, body) = get(&http1(), &gw.url("/silent")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains(headers["x-request-id"].to_str().unwrap()));
    gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("returned without sending a response")
    });
}

#[tokio::test]
async fn a_busy_guest_is_stopped_at_its_timeout_while_others_keep_being_served() {
    let gw = Gateway::start(&routes());
    // More spinning guests than the machine has cores: each must yield, or hello would starve.
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let url = gw.url("/loop");
            tokio::spawn(async move { get(&http1(), &url).await.0 })
        })
        .collect();
    let (status, _, body) = get(&http1(), &gw.url("/hello/meanwhile")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello, meanwhile!\n")
    );
    for task in spinning {
        assert_eq!(task.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_guest_traps_total",
            &[("route", "/loop"), ("kind", "timeout")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(&metrics, "wasmgate_instances_active", &[("route", "/loop")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_busy_guest_leaves_its_worker_free_for_other_connections_at_every_tick() {
    // One worker thread serves every connection, and the looping guest yields at every 50 ms
    // tick. If a yield did not let the worker look at its sockets and timers, it would look only
    // every 61 polls (3 s here): hello would wait about as long as the loop's timeout.
    let routes = format!(
        "[[route]]\npath = \"/hello/:name\"\ncomponent = {hello}\n\n\
         [[route]]\npath = \"/loop\"\ncomponent = {looping}\ntimeout = \"3s\"\n",
        hello = toml_path(&guest("hello")),
        looping = toml_path(&guest("infinite-loop")),
    );
    let defaults = Sections::default();
    let gw = Gateway::start_with(
        &routes,
        Sections {
            server: "scheduler = \"per_core\"\nworkers = 1\n".into(),
            engine: format!("{}epoch_tick = \"50ms\"\n", defaults.engine),
            ..defaults
        },
    );
    let url = gw.url("/loop");
    let looping = tokio::spawn(async move { get(&http1(), &url).await.0 });
    // The guest is running once the route counts an instance.
    gw.wait_for_metric(
        "wasmgate_instances_active",
        &[("route", "/loop")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let asked = std::time::Instant::now();
    let (status, _, body) = get(&http1(), &gw.url("/hello/beside")).await;
    let waited = asked.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello, beside!\n")
    );
    assert!(
        !looping.is_finished(),
        "hello must be answered while the guest still computes"
    );
    // 1.5 s: thirty ticks of slack, half of what a worker blind to its sockets would take.
    assert!(
        waited < Duration::from_millis(1500),
        "hello waited {waited:?} behind a computing guest on its worker"
    );
    assert_eq!(looping.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn a_timeout_after_the_headers_aborts_the_response() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let response = send(
            &client,
            Request::get(gw.url("/loop?after_headers=1"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let result = response.into_body().collect().await;
        assert!(
            result.is_err(),
            "a body cut off by the timeout must not look complete"
        );
    }
}

#[tokio::test]
async fn memory_growth_past_max_memory_fails_inside_the_guest() {
    let gw = Gateway::start(&routes());
    let (status, _, body) = get(&http1(), &gw.url("/memory?mb=8")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "allocated 8 MiB\n")
    );
    let (status, _, body) = get(&http1(), &gw.url("/memory?mb=64")).await;
    assert_eq!(
        status.as_u16(),
        507,
        "the guest saw its allocation fail: {body}"
    );
    assert_eq!(body, "allocation of 64 MiB failed\n");
    // The next request gets a fresh instance with all its memory back.
    let (status, _, _) = get(&http1(), &gw.url("/memory?mb=16")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_route_answers_503_with_retry_after() {
    let gw = Gateway::start(&routes());
    let client = http1();
    // Hold the only slot with a slow streaming response.
    let holder = send(
        &client,
        Request::get(gw.url("/one-at-a-time?chunks=3&delay_ms=400"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let (status, headers, _) = get(&client, &gw.url("/one-at-a-time")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");

    let holder2 = send(
        &client,
        Request::get(gw.url("/short-queue?chunks=3&delay_ms=400"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let (status, headers, _) = get(&client, &gw.url("/short-queue")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "waited past queue_timeout"
    );
    assert_eq!(headers["retry-after"], "1");

    // The held responses complete normally; then the route admits again.
    assert_eq!(read(holder).await.2, "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(read(holder2).await.2, "chunk 0\nchunk 1\nchunk 2\n");
    let (status, _, _) = get(&client, &gw.url("/one-at-a-time?chunks=1&delay_ms=0")).await;
    assert_eq!(status, StatusCode::OK);

    let metrics = gw.metrics().await;
    let rejected = |route, reason| {
        metric_value(
            &metrics,
            "wasmgate_admission_rejected_total",
            &[("route", route), ("reason", reason)],
        )
    };
    assert_eq!(rejected("/one-at-a-time", "queue_full"), Some(1.0));
    assert_eq!(rejected("/short-queue", "queue_timeout"), Some(1.0));
}

#[tokio::test]
async fn a_queued_request_is_served_when_a_slot_frees_up() {
    let gw = Gateway::start(&routes());
    let client = http1();
    let holder = send(
        &client,
        Request::get(gw.url("/short-queue?chunks=1&delay_ms=0"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let (status, _, body) = get(&client, &gw.url("/short-queue?chunks=2&delay_ms=10")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "chunk 0\nchunk 1\n")
    );
    read(holder).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gw = Gateway::start_with(&routes(), limits());
    for client in [http1(), http2()] {
        // Declared too large: refused before the guest runs.
        let request = Request::post(gw.url("/echo?buffer=1"))
            .body(body(vec![b'x'; 2048]))
            .unwrap();
        let (status, _, _) = read(send(&client, request).await).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Streamed without a length: cut off while the guest reads it.
        let stream = futures::stream::iter((0..4).map(|_| {
            Ok::<_, BoxError>(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b'y';
                700
            ])))
        }));
        let request = Request::post(gw.url("/echo?buffer=1"))
            .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
            .unwrap();
        // The connection closes after the 413, lingering, so the client still sending reads it.
        let response = client.request(request).await.expect("the 413, not a reset");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Within the limit it works.
        let request = Request::post(gw.url("/echo?buffer=1"))
            .body(body(vec![b'z'; 1000]))
            .unwrap();
        let (status, _, text) = read(send(&client, request).await).await;
        assert_eq!((status, text.len()), (StatusCode::OK, 1000));
    }
}

/// A guest answers without reading the upload, so hyper ends the connection with the
/// upload's bytes unread. The client reads slowly (a small receive buffer) and still gets the
/// whole answer and an orderly end: the gateway closes its sending side and drains what still
/// comes (a lingering close). Closing at once would reset the connection and throw away the
/// part of the answer still waiting in the gateway's send buffer.
#[test]
fn a_client_still_uploading_reads_the_whole_answer_that_ignored_its_upload() {
    let gw = Gateway::start(&routes());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&gw.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            b"POST /short-queue?chunks=20000&delay_ms=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
        )
        .unwrap();
    // The upload goes on as long as the gateway takes it, then trickles until told to stop.
    let mut upload = stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploading = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..10_000_000 / chunk.len() {
                if upload.write_all(&chunk).is_err() {
                    return;
                }
            }
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && upload.write_all(b"x").is_ok()
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    // The answer fills the buffers before the client starts reading.
    std::thread::sleep(Duration::from_millis(500));
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let tail = &text[text.len().saturating_sub(40)..];
    assert!(
        read.is_ok(),
        "{read:?} after {} bytes: {tail:?}",
        reply.len()
    );
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("chunk 19999\n") && text.ends_with("0\r\n\r\n"),
        "the whole answer: {tail:?}"
    );
    // The socket lingers, counted, while the client still sends; then it is gone.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lingering = |metrics: &str| metric_value(metrics, "wasmgate_connections_lingering", &[]);
    let metrics = runtime.block_on(gw.metrics());
    assert_eq!(lingering(&metrics), Some(1.0), "{metrics}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    uploading.join().unwrap();
    let listener = gw.listeners[0].0.as_str();
    let mut waited = Duration::ZERO;
    loop {
        let metrics = runtime.block_on(gw.metrics());
        let closed = metric_value(
            &metrics,
            "wasmgate_connections_closed_total",
            &[("listener", listener), ("reason", "finished")],
        );
        if lingering(&metrics) == Some(0.0) && closed == Some(1.0) {
            break;
        }
        assert!(waited < Duration::from_secs(10), "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
    }
}

#[tokio::test]
async fn headers_over_the_limit_get_431() {
    let gw = Gateway::start_with(&routes(), limits());
    for client in [http1(), http2()] {
        let request = Request::get(gw.url("/hello/big"))
            .header("x-big", "b".repeat(9000))
            .body(empty())
            .unwrap();
        let response = client.request(request).await;
        match response {
            Ok(response) => assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(e) => panic!("expected a 431 response, got {e:?}"),
        }
        let (status, _, _) = get(&client, &gw.url("/hello/small")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[test]
fn malformed_requests_get_400_and_slow_headers_are_cut_off() {
    let gw = Gateway::start_with(&routes(), limits());
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // A client that starts a request and stalls is disconnected after header_read_timeout.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /hello/slow HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    assert!(
        read.is_ok(),
        "the server closed the connection (no read timeout on our side): {read:?}"
    );
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
}

#[tokio::test]
async fn outgoing_requests_go_only_where_the_route_allows() {
    // The gateway fetches from itself: one route allows its own address, one allows nothing.
    let dir = tempfile::tempdir().unwrap();
    let _ = dir;
    let routes = format!(
        r#"
[[route]]
path = "/hello/:name"
component = {hello}

[[route]]
path = "/fetch-allowed"
component = {outbound}
allowed_outbound_hosts = ["http://127.0.0.1:*"]

[[route]]
path = "/fetch-denied"
component = {outbound}
allowed_outbound_hosts = ["https://api.example.com"]
"#,
        hello = toml_path(&guest("hello")),
        outbound = toml_path(&guest("outbound")),
    );
    let gw = Gateway::start(&routes);
    let target = format!("http%3A%2F%2F{}%2Fhello%2Fupstream", gw.addr);

    let (status, headers, body) =
        get(&http1(), &gw.url(&format!("/fetch-allowed?url={target}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-upstream-status"], "200");
    assert_eq!(body, "Hello, upstream!\n");

    let (status, _, body) = get(&http1(), &gw.url(&format!("/fetch-denied?url={target}"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "outbound error: HttpRequestDenied\n");
    gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("outgoing request denied") && l.contains("/fetch-denied")
    });

    let metrics = gw.metrics().await;
    let outbound = |route, outcome| {
        metric_value(
            &metrics,
            "wasmgate_outbound_requests_total",
            &[("route", route), ("outcome", outcome)],
        )
    };
    assert_eq!(outbound("/fetch-allowed", "allowed"), Some(1.0));
    assert_eq!(outbound("/fetch-denied", "denied"), Some(1.0));
}
