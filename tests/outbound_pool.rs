//! Components' outgoing requests on the route's pooled client: connections are reused across
//! requests and instances (the target counts them), `https` hosts speak HTTP/2 by ALPN, and
//! `[server] outbound_ca` adds a CA that the public roots do not have.

mod common;

use common::tls::{Pki, https_test_server};
use common::*;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A plain HTTP target that counts the connections it accepts and answers `pong`.
async fn counting_target() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(server_text("pong")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

fn outbound_route(allowed: &str) -> String {
    format!(
        "[[route]]\npath = \"/out\"\ncomponent = {}\nallowed_outbound_hosts = [\"{allowed}\"]\n",
        toml_path(&guest("outbound"))
    )
}

async fn fetch(gw: &Gateway, target: &str) -> (StatusCode, String) {
    let (status, _, body) = get(
        &http1(),
        &gw.url(&format!("/out?url={}", percent_encode(target))),
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn instances_share_kept_alive_connections() {
    let (addr, connections) = counting_target().await;
    let gw = Gateway::start(&outbound_route(&format!("http://{addr}")));
    for _ in 0..30 {
        let (status, body) = fetch(&gw, &format!("http://{addr}/ping")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "pong"));
    }
    // Thirty instances, one after another: a connection each without the pool; with it, one,
    // and another now and then when a connection is still on its way back to the pool.
    let made = connections.load(Ordering::Relaxed);
    assert!(made <= 6, "{made} connections for 30 requests");
}

#[tokio::test]
async fn https_trusts_outbound_ca_and_speaks_http2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "outbound");
    let addr = https_test_server(&pki, "127.0.0.1").await;
    let target = format!("https://127.0.0.1:{}/version", addr.port());
    let allowed = format!("https://127.0.0.1:{}", addr.port());

    // A CA the public and system roots do not have: the certificate is refused.
    let gw = Gateway::start(&outbound_route(&allowed));
    let (status, body) = fetch(&gw, &target).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "outbound error: TlsCertificateError\n");
    drop(gw);

    let gw = Gateway::start_with(
        &outbound_route(&allowed),
        Sections {
            server: format!("outbound_ca = {}", toml_path(pki.ca_path())),
            ..Sections::default()
        },
    );
    for _ in 0..3 {
        let (status, body) = fetch(&gw, &target).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "HTTP/2.0"));
    }
}

#[test]
fn an_unreadable_outbound_ca_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\noutbound_ca = \"missing-ca.pem\"\n{}",
        outbound_route("http://127.0.0.1:1")
    );
    let (ok, output) = check_config(dir.path(), &config);
    assert!(!ok, "{output}");
    assert!(output.contains("outbound_ca"), "{output}");
}
