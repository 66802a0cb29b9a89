//! What an upstream route carries besides plain requests: a WebSocket tunnelled both ways
//! (real tungstenite server and client), `Expect: 100-continue` answered by the gateway before
//! the body is sent, and trailers from an HTTP/1.1 target reaching an HTTP/2 client.

mod common;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that answers each text message with `echo: TEXT` and each binary one
/// with the same bytes.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(text) => Message::text(format!("echo: {text}")),
                        Message::Binary(bytes) => Message::Binary(bytes),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_websocket_is_tunnelled_both_ways() {
    let server = websocket_echo().await;
    let gw = Gateway::start(&format!(
        "[upstream.chat]\ntargets = [\"http://{server}\"]\n\
         [[route]]\npath = \"/chat/...\"\nupstream = \"chat\"\nstrip_prefix = \"/chat\"\n"
    ));
    let url = format!("ws://{}/chat/room-1", gw.addr);
    let (mut socket, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the WebSocket handshake through the gateway");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().get("x-request-id").is_some());

    for i in 0..20 {
        socket
            .send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo: message {i}")));
    }
    // A large binary message crosses whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(big.clone())).await.unwrap();
    match socket.next().await.unwrap().unwrap() {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), big.as_slice()),
        other => panic!("{other:?}"),
    }
    // While it is open, the tunnel is counted.
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_upstream_tunnels",
            &[("upstream", "chat")]
        ),
        Some(1.0),
        "{metrics}"
    );
    socket.close(None).await.unwrap();
    drop(socket);
    // Closed on both sides: the tunnel ends and is no longer counted.
    let started = std::time::Instant::now();
    while metric_value(
        &gw.metrics().await,
        "wasmgate_upstream_tunnels",
        &[("upstream", "chat")],
    ) != Some(0.0)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the tunnel stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_upstream_requests_total",
            &[("upstream", "chat"), ("status", "101")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let server = websocket_echo().await;
    let gw = Gateway::start(&format!(
        "[upstream.chat]\ntargets = [\"http://{server}\"]\ntunnel_idle_timeout = \"1s\"\n\
         [[route]]\npath = \"/chat\"\nupstream = \"chat\"\n"
    ));
    let url = format!("ws://{}/chat", gw.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // Traffic keeps it open past the timeout...
    for i in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        socket.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text(format!("echo: {i}"))
        );
    }
    // ...silence ends it.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
        .await
        .expect("the gateway closes an idle tunnel");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}

#[tokio::test]
async fn a_websocket_reaches_an_https_target_that_offers_http2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::Pki::new(dir.path(), "ws");
    let (cert, key) = pki.server_cert("ws", &["ws.internal"], common::tls::CertOptions::default());
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(common::tls::load_certs(&cert), common::tls::load_key(&key))
    .unwrap();
    // A server that would take HTTP/2, where no WebSocket handshake can happen.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = socket.next().await {
                    let _ = socket.send(Message::text(format!("tls: {text}"))).await;
                }
            });
        }
    });
    let gw = Gateway::start(&format!(
        "[upstream.chat]\ntargets = [\"https://127.0.0.1:{}\"]\ntls = {{ ca = {}, server_name = \"ws.internal\" }}\n\
         [[route]]\npath = \"/chat\"\nupstream = \"chat\"\n",
        addr.port(),
        toml_path(pki.ca_path()),
    ));
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr).as_str())
            .await
            .expect("the handshake through the gateway to an h2-capable target");
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("tls: hi")
    );
}

/// An upstream that reads the whole request body, then answers with it and says whether it saw
/// `expect` (answering before the body arrives would let the gateway answer the client before
/// it sends `100 Continue`, which hyper then no longer sends).
async fn echo_upstream() -> std::net::SocketAddr {
    serve_http(|request: Request<Incoming>| async move {
        let saw_expect = request.headers().contains_key("expect");
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let mut response = Response::new(server_text(body));
        response
            .headers_mut()
            .insert("x-saw-expect", saw_expect.to_string().parse().unwrap());
        response
    })
    .await
}

/// A gateway whose `/upload` forwards to [`echo_upstream`], and a raw connection to it on which
/// a POST's head has been sent, declaring `length` bytes of body and `Expect: 100-continue`.
async fn upload_waiting_for_continue(length: u64) -> (Gateway, tokio::net::TcpStream) {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "[upstream.api]\ntargets = [\"http://{upstream}\"]\n[[route]]\npath = \"/upload\"\nupstream = \"api\"\n"
    ));
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: example\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    (gw, stream)
}

/// The next `n` bytes the gateway sends, within 10 s.
async fn read_exactly(stream: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_exact(&mut bytes),
    )
    .await
    .expect("an answer within 10s")
    .unwrap();
    bytes
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (_gw, mut stream) = upload_waiting_for_continue(11).await;
    // Nothing of the body is sent until the gateway says to go on.
    let interim = read_exactly(&mut stream, 25).await;
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello world").await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).ends_with("hello world") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the response within 10s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-saw-expect: false"), "{text}");
}

#[tokio::test]
async fn a_refused_request_that_expects_100_continue_is_refused_without_inviting_the_body() {
    // 1 GB declared: over max_request_body (16 MiB by default).
    let (_gw, mut stream) = upload_waiting_for_continue(1_000_000_000).await;
    let head = read_exactly(&mut stream, 12).await;
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    // The rest of the answer, then the end of the connection at once: the gateway does not
    // wait for a body that the client holds back until it hears `100 Continue`.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the connection stayed open: {}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        String::from_utf8_lossy(&rest)
            .to_lowercase()
            .contains("connection: close")
    );
}

#[tokio::test]
async fn trailers_from_an_http1_target_reach_an_http2_client() {
    let upstream = serve_http(|request: Request<Incoming>| async move {
        let asked = request.headers().get("te").cloned();
        let frames = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers({
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers
            })),
        ]);
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        // HTTP/1.1 senders send only the trailers `trailer` names.
        response
            .headers_mut()
            .insert("trailer", "grpc-status".parse().unwrap());
        if let Some(te) = asked {
            response.headers_mut().insert("x-te", te);
        }
        response
    })
    .await;
    let gw = Gateway::start(&format!(
        "[upstream.grpc]\ntargets = [\"http://{upstream}\"]\n[[route]]\npath = \"/svc/...\"\nupstream = \"grpc\"\n"
    ));
    let request = Request::post(gw.url("/svc/Method"))
        .header("te", "trailers")
        .body(body("request"))
        .unwrap();
    let response = send(&http2(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-te"], "trailers");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));

    // An HTTP/1.1 client names `te` in `Connection`, as it must: `te: trailers` still crosses.
    let request = Request::post(gw.url("/svc/Method"))
        .header("te", "trailers")
        .header("connection", "te")
        .body(body("request"))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(response.headers()["x-te"], "trailers");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
}

#[tokio::test]
async fn h2c_targets_get_http2_without_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    let frames = futures::stream::iter(vec![
                        Ok::<_, std::io::Error>(Frame::data(Bytes::from(version))),
                        Ok(Frame::trailers({
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers
                        })),
                    ]);
                    Ok::<_, std::convert::Infallible>(Response::new(BodyExt::boxed(
                        StreamBody::new(frames),
                    )))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        "[upstream.grpc]\ntargets = [\"http://{addr}\"]\nh2c = true\n[[route]]\npath = \"/...\"\nupstream = \"grpc\"\n"
    ));
    for (client, h2) in [(http1(), false), (http2(), true)] {
        let response = send(
            &client,
            Request::post(gw.url("/svc/Call")).body(body("x")).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"HTTP/2.0"));
        // HTTP/2 clients get the target's trailers (an HTTP/1.1 client that did not send
        // `te: trailers` gets none).
        if h2 {
            assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        }
    }
}
