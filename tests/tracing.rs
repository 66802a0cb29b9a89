//! OpenTelemetry tracing (`[tracing]`), against a real OTLP/HTTP receiver run by the test: the
//! protobuf `ExportTraceServiceRequest` the OpenTelemetry protocol defines, decoded with the
//! project's own generated types (`opentelemetry-proto`), on a hyper server.
//!
//! What is asserted is the shape a tracing backend would show: one trace from the client's
//! `traceparent` through the gateway's server span, the component's instantiation, its outgoing
//! call (to a second route over the network, and to `http://self`) and that route's server
//! span; and the `traceparent` each hop saw naming its real parent.

mod common;

use common::{Gateway, guest, http1, percent_encode, server_text, toml_path};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The spans an OTLP receiver got, and the `service.name` they came under.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Received {
    /// Starts a receiver on an ephemeral port.
    async fn start() -> (Received, SocketAddr) {
        let received = Received::default();
        let sink = received.clone();
        let addr = common::serve_http(move |request: http::Request<hyper::body::Incoming>| {
            let sink = sink.clone();
            async move {
                assert_eq!(request.uri().path(), "/v1/traces");
                assert_eq!(
                    request.headers().get("content-type").unwrap(),
                    "application/x-protobuf"
                );
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in export.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.spans.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(server_text(""))
                    .unwrap()
            }
        })
        .await;
        (received, addr)
    }

    /// The spans of trace `trace_id`, once `count` have arrived (at most 20 s).
    async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<Span> {
        let started = Instant::now();
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, span)| span.trace_id == trace_id)
                .map(|(_, span)| span.clone())
                .collect();
            if spans.len() >= count || started.elapsed() > Duration::from_secs(20) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The one span named `name` of `kind`.
fn one<'a>(spans: &'a [Span], name: &str, kind: SpanKind) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && s.kind == kind as i32)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span `{name}` expected, among: {:?}",
        spans.iter().map(|s| (&s.name, s.kind)).collect::<Vec<_>>()
    );
    found[0]
}

fn tracing_section(receiver: SocketAddr, extra: &str) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"http://{receiver}\"\nservice_name = \"edge-test\"\n{extra}\n"
    )
}

/// The batch exporter sends every 100 ms instead of every 5 s.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn start(config: String) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[engine]\ncache_dir = {}\nmax_instances = 32\n{config}",
        toml_path(&common::shared_cache_dir())
    );
    Gateway::start_in_with(dir, &config, &[], &FAST_EXPORT)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_client_through_a_components_outgoing_calls_to_a_second_route() {
    let (received, receiver) = Received::start().await;
    // The second route is reached twice: over the network (the gateway's own port, through
    // the pooled client) and in process (`http://self`).
    let gateway = start(format!(
        "{}
[[route]]
path = \"/front\"
component = {}
allowed_outbound_hosts = [\"http://127.0.0.1:*\", \"http://self\"]

[[route]]
path = \"/back\"
component = {}
",
        tracing_section(receiver, ""),
        toml_path(&guest("outbound")),
        toml_path(&guest("echo")),
    ));
    let client = http1();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    for back in [
        format!("http://{}/back", gateway.addr),
        "http://self/back".to_string(),
    ] {
        let response = common::send(
            &client,
            http::Request::get(gateway.url(&format!("/front?url={}", percent_encode(&back))))
                .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
                .body(common::empty())
                .unwrap(),
        )
        .await;
        let (status, _, body) = common::read(response).await;
        assert_eq!(status, 200, "{back}: {body}");

        // front (server) ─► instantiate, GET (client) ─► /back (server) ─► instantiate
        let spans = received.trace(&unhex(trace_id), 5).await;
        received.spans.lock().unwrap().clear();
        let front = one(&spans, "GET /front", SpanKind::Server);
        let call = one(&spans, "GET", SpanKind::Client);
        let back_span = one(&spans, "GET /back", SpanKind::Server);
        assert_eq!(hex(&front.parent_span_id), client_span, "{back}");
        assert_eq!(call.parent_span_id, front.span_id, "{back}");
        assert_eq!(back_span.parent_span_id, call.span_id, "{back}");
        let instantiations: Vec<&Span> = spans.iter().filter(|s| s.name == "instantiate").collect();
        assert_eq!(instantiations.len(), 2, "{back}");
        assert!(
            instantiations
                .iter()
                .any(|s| s.parent_span_id == front.span_id)
        );
        assert!(
            instantiations
                .iter()
                .any(|s| s.parent_span_id == back_span.span_id)
        );
        for span in [front, back_span] {
            assert_eq!(
                attribute(span, "http.response.status_code").as_deref(),
                Some("200")
            );
            assert_eq!(
                attribute(span, "http.request.method").as_deref(),
                Some("GET")
            );
        }
        assert_eq!(attribute(front, "http.route").as_deref(), Some("/front"));
        assert_eq!(attribute(call, "url.full").as_deref(), Some(back.as_str()));
        assert_eq!(
            attribute(call, "http.response.status_code").as_deref(),
            Some("200")
        );
    }
    let services: Vec<String> = received
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|(service, _)| service.clone())
        .collect();
    assert!(services.iter().all(|s| s == "edge-test"), "{services:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_component_and_an_upstream_see_a_traceparent_naming_the_gateways_span() {
    let (received, receiver) = Received::start().await;
    let upstream_saw: Arc<Mutex<Vec<String>>> = Arc::default();
    let saw = upstream_saw.clone();
    let upstream = common::serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let saw = saw.clone();
        async move {
            if let Some(value) = request.headers().get("traceparent") {
                saw.lock()
                    .unwrap()
                    .push(value.to_str().unwrap().to_string());
            }
            http::Response::new(server_text("from upstream"))
        }
    })
    .await;
    let gateway = start(format!(
        "{}
[upstream.api]
targets = [\"http://{upstream}\"]

[[route]]
path = \"/api/...\"
upstream = \"api\"

[[route]]
path = \"/echo\"
component = {}
",
        tracing_section(receiver, ""),
        toml_path(&guest("echo")),
    ));
    let client = http1();

    // No traceparent from the client: the gateway starts the trace.
    let (status, headers, _) = common::get(&client, &gateway.url("/echo")).await;
    assert_eq!(status, 200);
    let seen = headers
        .get("x-echo-header-traceparent")
        .expect("the component sees a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    let spans = received.trace(&unhex(parts[1]), 2).await;
    let server = one(&spans, "GET /echo", SpanKind::Server);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        parts[2],
        hex(&server.span_id),
        "the component's parent is the server span"
    );
    assert_eq!(parts[3], "01");

    // An upstream route: a client span, whose id the upstream gets as its parent.
    let (status, _, body) = common::get(&client, &gateway.url("/api/items")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "from upstream"));
    let sent = upstream_saw
        .lock()
        .unwrap()
        .pop()
        .expect("a traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    let spans = received.trace(&unhex(parts[1]), 2).await;
    let server = one(&spans, "GET /api/...", SpanKind::Server);
    let call = one(&spans, "GET", SpanKind::Client);
    assert_eq!(call.parent_span_id, server.span_id);
    assert_eq!(parts[2], hex(&call.span_id));
    assert_eq!(attribute(call, "wasmgate.upstream").as_deref(), Some("api"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unsampled_traces_are_not_exported_but_their_context_still_propagates() {
    let (received, receiver) = Received::start().await;
    let gateway = start(format!(
        "{}
[[route]]
path = \"/echo\"
component = {}
",
        tracing_section(receiver, "sampling_ratio = 0.0"),
        toml_path(&guest("echo")),
    ));
    let client = http1();
    let (status, headers, _) = common::get(&client, &gateway.url("/echo")).await;
    assert_eq!(status, 200);
    let seen = headers["x-echo-header-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        seen.ends_with("-00"),
        "not sampled, and says so downstream: {seen}"
    );

    // A client's sampled trace is followed whatever the ratio.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = common::send(
        &client,
        http::Request::get(gateway.url("/echo"))
            .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
            .body(common::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let spans = received.trace(&unhex(trace_id), 2).await;
    one(&spans, "GET /echo", SpanKind::Server);
    let unsampled = unhex(seen.split('-').nth(1).unwrap());
    assert!(
        received
            .spans
            .lock()
            .unwrap()
            .iter()
            .all(|(_, span)| span.trace_id != unsampled),
        "the unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_client_abandons_ends_its_span_as_cancelled() {
    let (received, receiver) = Received::start().await;
    let gateway = start(format!(
        "{}
[[route]]
path = \"/slow\"
component = {}
allowed_outbound_hosts = [\"http://self\"]
",
        tracing_section(receiver, ""),
        toml_path(&guest("outbound")),
    ));
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    // The component waits 10 s before it calls out; the client (HTTP/2, so the stream is reset
    // at once) gives up after half a second.
    let request = http::Request::get(gateway.url(&format!(
        "/slow?delay_ms=10000&url={}",
        percent_encode("http://self/x")
    )))
    .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
    .body(common::empty())
    .unwrap();
    let client = common::http2();
    let pending = tokio::spawn(async move { client.request(request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    pending.abort();

    let spans = received.trace(&unhex(trace_id), 2).await;
    let server = one(&spans, "GET", SpanKind::Server);
    let status = server.status.as_ref().expect("a status");
    assert_eq!(status.code, 2, "an error: {status:?}");
    assert!(status.message.contains("cancelled"), "{status:?}");
    // Ended when the client left, not when the component would have finished.
    let lasted = Duration::from_nanos(server.end_time_unix_nano - server.start_time_unix_nano);
    assert!(lasted < Duration::from_secs(5), "{lasted:?}");
}

#[test]
fn a_bad_tracing_section_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (section, expected) in [
        ("otlp_endpoint = \"collector:4318\"", "otlp_endpoint"),
        (
            "otlp_endpoint = \"grpc://collector:4317\"",
            "http:// or https://",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\nsampling_ratio = 1.5",
            "sampling_ratio",
        ),
    ] {
        let (ok, output) = common::check_config(dir.path(), &format!("[tracing]\n{section}\n"));
        assert!(!ok, "{section}: {output}");
        assert!(
            output.contains(expected),
            "{section}: expected `{expected}` in {output}"
        );
    }
}
