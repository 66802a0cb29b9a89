//! Per-route middleware end to end, on upstream and component routes: compression (each
//! encoding decodes to the original; small, already encoded and unasked-for bodies are left
//! alone), CORS (preflights and simple requests, allowed and refused origins), headers set and
//! removed (error pages included), and the rate limit (429 with `Retry-After`, per key).

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use std::io::Read;

/// 4 KiB of text that compresses well.
fn big_text() -> String {
    (0..128)
        .map(|i| format!("line {i:04} of the original text\n"))
        .collect::<String>()
}

/// An upstream: `/text` the big text, `/small` a few bytes, `/encoded` a body that says it is
/// already brotli, anything else the request's headers as `name: value` lines.
async fn upstream() -> String {
    let addr = serve_http(|request: Request<hyper::body::Incoming>| async move {
        let mut response = match request.uri().path() {
            "/text" => Response::new(server_text(big_text())),
            "/small" => Response::new(server_text("tiny")),
            "/encoded" => {
                let mut response = Response::new(server_text(big_text()));
                response
                    .headers_mut()
                    .insert("content-encoding", "br".parse().unwrap());
                response
            }
            _ => {
                let text: String = request
                    .headers()
                    .iter()
                    .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap_or("?")))
                    .collect();
                Response::new(server_text(text))
            }
        };
        response
            .headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        response
            .headers_mut()
            .insert("x-powered-by", "test-server".parse().unwrap());
        response
    })
    .await;
    format!("[upstream.api]\ntargets = [\"http://{addr}\"]\n")
}

async fn get_with(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut request = Request::get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = send(&http1(), request.body(empty()).unwrap()).await;
    let (parts, body) = response.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, bytes.to_vec())
}

#[tokio::test]
async fn compressed_responses_decode_to_the_original() {
    let gw = Gateway::start(&format!(
        "{}[[route]]\npath = \"/...\"\nupstream = \"api\"\ncompression = true\n",
        upstream().await
    ));
    let original = big_text();
    for (encoding, decode) in [
        ("gzip", decode_gzip as fn(&[u8]) -> String),
        ("br", decode_br),
        ("zstd", decode_zstd),
    ] {
        let (status, headers, body) =
            get_with(&gw, "/text", &[("accept-encoding", encoding)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-encoding"], encoding);
        assert!(
            body.len() < original.len() / 4,
            "{encoding}: {} bytes",
            body.len()
        );
        assert_eq!(decode(&body), original, "{encoding}");
        assert!(
            headers["vary"]
                .to_str()
                .unwrap()
                .contains("accept-encoding")
        );
    }
    // Not asked for, too small to gain, or already encoded: passed as it is.
    let (_, headers, body) = get_with(&gw, "/text", &[]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, original.as_bytes());
    let (_, headers, body) = get_with(&gw, "/small", &[("accept-encoding", "gzip")]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, b"tiny");
    let (_, headers, body) = get_with(&gw, "/encoded", &[("accept-encoding", "gzip")]).await;
    assert_eq!(headers["content-encoding"], "br");
    assert_eq!(body, original.as_bytes());
}

fn decode_gzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn decode_br(bytes: &[u8]) -> String {
    let mut text = String::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn decode_zstd(bytes: &[u8]) -> String {
    String::from_utf8(zstd::stream::decode_all(bytes).unwrap()).unwrap()
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_responses_for_allowed_origins_only() {
    let gw = Gateway::start(&format!(
        "{}[[route]]\npath = \"/...\"\nupstream = \"api\"\nmethods = [\"GET\", \"PUT\"]\n\
         cors = {{ allow_origins = [\"https://app.example.com\"], allow_methods = [\"GET\", \"PUT\"], \
         allow_headers = [\"x-token\"], expose_headers = [\"x-powered-by\"], max_age = \"10m\" }}\n",
        upstream().await
    ));
    let preflight = |origin: &'static str| {
        Request::options(gw.url("/things"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-token")
            .body(empty())
            .unwrap()
    };
    let client = http1();
    let (status, headers, _) =
        read(send(&client, preflight("https://app.example.com")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PUT")
    );
    assert_eq!(headers["access-control-allow-headers"], "x-token");
    assert_eq!(headers["access-control-max-age"], "600");

    let (_, headers, _) = read(send(&client, preflight("https://evil.example")).await).await;
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "{headers:?}"
    );

    // A simple request from the allowed origin reaches the upstream and is marked.
    let (status, headers, body) =
        get_with(&gw, "/things", &[("origin", "https://app.example.com")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-expose-headers"], "x-powered-by");
    assert!(String::from_utf8_lossy(&body).contains("origin: https://app.example.com"));
}

#[tokio::test]
async fn headers_are_set_and_removed_on_every_response_of_the_route() {
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "{}[upstream.dead]\ntargets = [\"http://127.0.0.1:{dead}\"]\n\
         [[route]]\npath = \"/...\"\nupstream = \"api\"\n\
         headers = {{ request_set = {{ x-tenant = \"blue\" }}, response_set = {{ strict-transport-security = \"max-age=63072000\" }}, response_remove = [\"x-powered-by\"] }}\n\
         [[route]]\npath = \"/dead\"\nupstream = \"dead\"\n\
         headers = {{ response_set = {{ x-frame-options = \"DENY\" }} }}\n\
         [[route]]\npath = \"/hello\"\ncomponent = {}\n\
         headers = {{ response_set = {{ cache-control = \"no-store\" }} }}\n",
        upstream().await,
        toml_path(&guest("hello")),
    ));
    let (status, headers, body) = get_with(&gw, "/echo", &[("x-tenant", "red")]).await;
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("x-tenant: blue\n") && !body.contains("red"),
        "{body}"
    );
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    assert!(headers.get("x-powered-by").is_none());

    // The gateway's own error page (502) gets them too.
    let (status, headers, _) = get_with(&gw, "/dead", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-frame-options"], "DENY");

    // And a component route.
    let (status, headers, body) = get_with(&gw, "/hello", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"Hello from wasmgate!\n");
    assert_eq!(headers["cache-control"], "no-store");
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_retry_after_per_client_key() {
    let gw = Gateway::start(&format!(
        "[[route]]\npath = \"/hello\"\ncomponent = {hello}\nrate_limit = {{ per_second = 1, burst = 3 }}\n\
         [[route]]\npath = \"/keyed\"\ncomponent = {hello}\nrate_limit = {{ per_second = 1, burst = 2, key = \"header:x-api-key\" }}\n",
        hello = toml_path(&guest("hello")),
    ));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, headers, _) = get_with(&gw, "/hello", &[]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = headers.get("retry-after").cloned();
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let retry_after: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    // Each key has its own bucket.
    for key in ["a", "b"] {
        for expected in [200, 200, 429] {
            let (status, _, _) = get_with(&gw, "/keyed", &[("x-api-key", key)]).await;
            assert_eq!(status.as_u16(), expected, "key {key}");
        }
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_rate_limited_total",
            &[("route", "/hello")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "/hello"),
                ("http_response_status_code", "429")
            ]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );
}

#[test]
fn the_config_refuses_middleware_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let hello = toml_path(&guest("hello"));
    for (settings, expected) in [
        (
            "cors = { allow_origins = [\"*\"], allow_credentials = true }",
            "allow_credentials cannot go with",
        ),
        (
            "cors = { allow_origins = [\"app.example.com\"] }",
            "must be scheme://host",
        ),
        (
            "headers = { response_set = { \"bad name\" = \"x\" } }",
            "is not a header name",
        ),
        (
            "headers = { request_set = { x-wasmgate-route = \"x\" } }",
            "is set by the gateway",
        ),
        (
            "rate_limit = { per_second = 0 }",
            "per_second must be at least 1",
        ),
        (
            "rate_limit = { per_second = 5, key = \"cookie:x\" }",
            "key is `client_ip` or `header:NAME`",
        ),
    ] {
        let config = format!("[[route]]\npath = \"/\"\ncomponent = {hello}\n{settings}\n");
        let (ok, output) = check_config(dir.path(), &config);
        assert!(!ok, "accepted:\n{config}");
        assert!(output.contains(expected), "{config}\n---\n{output}");
    }
}

#[test]
fn routes_sharing_a_path_with_cors_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let hello = toml_path(&guest("hello"));
    let cors = "cors = { allow_origins = [\"https://app.example.com\"] }";
    let config = format!(
        "[[route]]\npath = \"/x\"\nmethods = [\"GET\"]\ncomponent = {hello}\n{cors}\n\
         [[route]]\npath = \"/x\"\nmethods = [\"POST\", \"OPTIONS\"]\ncomponent = {hello}\n{cors}\n"
    );
    let (ok, output) = check_config(dir.path(), &config);
    assert!(ok, "{output}");
}
