//! The client's identity at the edge: forwarded headers, request ids, trace context and the
//! access log, as a guest and an operator see them (issue 10).

mod common;

use common::*;
use http::{Request, StatusCode};
use std::time::Duration;

fn routes() -> String {
    format!(
        "[[route]]\npath = \"/echo\"\ncomponent = {}\n",
        toml_path(&guest("echo"))
    )
}

/// What the echo guest saw of a request header.
fn seen<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(format!("x-echo-header-{name}"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn echo(gw: &Gateway, headers: &[(&str, &str)]) -> http::HeaderMap {
    let mut request = Request::get(gw.url("/echo"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (status, headers, _) = read(send(&http1(), request.body(empty()).unwrap()).await).await;
    assert_eq!(status, StatusCode::OK);
    headers
}

#[tokio::test]
async fn an_untrusted_client_cannot_spoof_forwarded_headers_or_its_request_id() {
    let gw = Gateway::start(&routes());
    let headers = echo(
        &gw,
        &[
            ("x-forwarded-for", "203.0.113.5"),
            ("forwarded", "for=203.0.113.5"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "chosen-by-client"),
            ("x-wasmgate-client-cert-subject", "CN=admin"),
        ],
    )
    .await;
    assert_eq!(seen(&headers, "x-forwarded-for"), "127.0.0.1");
    assert!(seen(&headers, "forwarded").starts_with("for=127.0.0.1;proto=http"));
    assert_eq!(seen(&headers, "x-forwarded-proto"), "http");
    assert_eq!(seen(&headers, "x-wasmgate-client-cert-subject"), "");
    let id = headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_ne!(id, "chosen-by-client");
    assert_eq!(
        seen(&headers, "x-request-id"),
        id,
        "the guest and the client see one id"
    );
    // A traceparent is made for a request that has none, and a valid one is kept.
    assert!(seen(&headers, "traceparent").starts_with("00-"));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = echo(&gw, &[("traceparent", trace)]).await;
    assert_eq!(seen(&headers, "traceparent"), trace);
}

#[tokio::test]
async fn a_trusted_proxy_keeps_the_chain_and_its_request_id() {
    let gw = Gateway::start_with(
        &routes(),
        Sections {
            server: "trusted_proxies = [\"127.0.0.0/8\"]\ntrust_request_id = true\n".into(),
            ..Sections::default()
        },
    );
    let headers = echo(
        &gw,
        &[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "from-the-proxy-1"),
        ],
    )
    .await;
    assert_eq!(seen(&headers, "x-forwarded-for"), "203.0.113.5, 127.0.0.1");
    assert_eq!(seen(&headers, "x-forwarded-proto"), "https");
    assert_eq!(headers.get("x-request-id").unwrap(), "from-the-proxy-1");
    // The access log names the client from the chain, with OpenTelemetry's field names.
    let line = gw.wait_for_output(Duration::from_secs(5), |line| {
        line.contains("wasmgate::access") && line.contains("from-the-proxy-1")
    });
    for field in [
        "client.address=203.0.113.5",
        "http.request.method=GET",
        "url.path=/echo",
        "http.route=/echo",
        "http.response.status_code=200",
        "network.protocol.version=\"1.1\"",
        "listener=\"default\"",
        "outcome=\"complete\"",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}
