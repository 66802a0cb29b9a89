//! OpenTelemetry traces: a server span per request, child spans for what the gateway does on
//! its behalf (instantiating the component, the component's outgoing HTTP calls, the upstream
//! request), W3C Trace Context in and out, exported over OTLP/HTTP.
//!
//! Tracing is off unless `[tracing] otlp_endpoint` is set; then the process holds one
//! [`Tracing`] for its life (a change to `[tracing]` needs a restart). Off, nothing here runs on
//! the request path: requests carry `None` where they would carry a [`RequestTrace`].
//!
//! **Context.** A request's server span continues the `traceparent` the request came with (a
//! client's, or the gateway's own when a component calls `http://self`), and the request's
//! `traceparent` is then rewritten to name the server span, so the component sees its real
//! parent. A request without one starts a trace. Outgoing calls get a client span whose context
//! replaces the `traceparent` they carry when it belongs to the same trace (a component that
//! copies its request's headers) or is missing; a component that sends a trace of its own keeps
//! it.
//!
//! **Sampling.** A parent's decision (the `traceparent` flags) is followed; a trace that starts
//! here is sampled with `[tracing] sampling_ratio`. Unsampled spans are not recorded, but their
//! context still propagates, so the decision holds downstream.
//!
//! **Export.** The SDK's batch processor exports from a thread of its own (queue of 2,048 spans,
//! every 5 s or 512 spans; the `OTEL_BSP_*` variables tune it); when the queue is full, spans
//! are dropped rather than slowing requests. Export failures are logged. Shutdown flushes what is
//! queued, within `export_timeout`.

use crate::config::TracingConfig;
use anyhow::Context as _;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::sync::Arc;
use std::time::SystemTime;

/// The process's tracer and exporter; see the module docs.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    export_timeout: std::time::Duration,
}

impl Tracing {
    /// The tracer `config` asks for, or `None` when tracing is off. Builds the OTLP exporter
    /// (which makes its own blocking HTTP client): call it off the async workers.
    pub fn start(config: &TracingConfig) -> anyhow::Result<Option<Arc<Tracing>>> {
        let Some(url) = config.traces_url()? else {
            return Ok(None);
        };
        // The exporter's HTTPS uses the process's default rustls provider: ring, as elsewhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(config.export_timeout)
            .build()
            .with_context(|| format!("[tracing] cannot make the OTLP exporter for {url}"))?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio)));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("wasmgate");
        tracing::info!(endpoint = %url, sampling_ratio = config.sampling_ratio, "exporting traces over OTLP");
        Ok(Some(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            export_timeout: config.export_timeout,
        })))
    }

    /// The trace context a request arrives with: its `traceparent` (and `tracestate`), or none.
    /// Taken before the identity stage, which makes up a `traceparent` for a request that has
    /// none.
    pub fn arriving(&self, headers: &HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Starts a request's server span as a child of `parent` (see [`Tracing::arriving`]), and
    /// sets the request's `traceparent` to name the new span (see the module docs).
    pub fn server_span(
        self: &Arc<Self>,
        parent: Context,
        headers: &mut HeaderMap,
        method: &http::Method,
        path: &str,
        request_id: &str,
    ) -> RequestTrace {
        // Attributes are made only for a span that is recorded: an unsampled request pays for
        // its ids and its traceparent, nothing more.
        let mut span = self
            .tracer
            .span_builder(span_name(method))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.method", span_name(method)),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("wasmgate.request_id", request_id.to_string()),
            ]);
        }
        let context = parent.with_span(span);
        self.propagator
            .inject_context(&context, &mut HeaderInjector(headers));
        RequestTrace {
            tracing: self.clone(),
            context,
            method: method.clone(),
        }
    }

    /// Exports what is queued and stops the exporter, within `[tracing] export_timeout`.
    /// Blocks: call it off the async workers.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.export_timeout) {
            tracing::warn!(error = %e, "could not export every span before exiting");
        }
    }
}

/// One request's trace: its server span, and the way to start its children.
#[derive(Clone)]
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    context: Context,
    method: http::Method,
}

impl RequestTrace {
    /// Ends the server span: named `METHOD ROUTE` as OpenTelemetry's HTTP conventions name
    /// server spans, with the status (an error for 5xx).
    pub fn finish(&self, route: &str, status: u16) {
        let span = self.context.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        span.update_name(format!("{} {route}", self.method));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
        end_with_status(span, status);
    }

    /// Records the component's instantiation, from `started` to `ended`, as a child span.
    pub fn instantiated(&self, component: &str, started: SystemTime, ended: SystemTime) {
        if !self.context.span().is_recording() {
            // Its child would not be sampled either.
            return;
        }
        let tracer = &self.tracing.tracer;
        let mut span = tracer
            .span_builder("instantiate")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes([KeyValue::new("wasmgate.component", component.to_string())])
            .start_with_context(tracer, &self.context);
        span.end_with_timestamp(ended);
    }

    /// Starts a client span for an outgoing request (a component's, or to an upstream) and
    /// sets the request's `traceparent` to it, unless the request carries a trace of its own.
    pub fn client_call(
        &self,
        method: &http::Method,
        target: CallTarget<'_>,
        headers: &mut HeaderMap,
    ) -> ClientSpan {
        let tracer = &self.tracing.tracer;
        let mut span = tracer
            .span_builder(span_name(method))
            .with_kind(SpanKind::Client)
            .start_with_context(tracer, &self.context);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", span_name(method)));
            match target {
                CallTarget::Url(uri) => {
                    span.set_attribute(KeyValue::new("url.full", without_secrets(uri)));
                    if let Some(host) = uri.host() {
                        span.set_attribute(KeyValue::new("server.address", host.to_string()));
                    }
                }
                CallTarget::Upstream(name, path) => {
                    span.set_attribute(KeyValue::new("wasmgate.upstream", name.to_string()));
                    span.set_attribute(KeyValue::new("url.path", path.to_string()));
                }
            }
        }
        let context = self.context.with_span(span);
        let carried = self.tracing.propagator.extract(&HeaderExtractor(headers));
        let carried = carried.span().span_context().clone();
        let own_trace = self.context.span().span_context().trace_id();
        if !carried.is_valid() || carried.trace_id() == own_trace {
            self.tracing
                .propagator
                .inject_context(&context, &mut HeaderInjector(headers));
        }
        ClientSpan { context }
    }
}

/// A request's server span while the request stages run. The observe stage takes it (and the
/// response's end ends it); a request dropped before that (the client went away) ends it here,
/// as cancelled, rather than whenever the last copy of its context goes.
#[derive(Default)]
pub struct PendingSpan(Option<RequestTrace>);

impl PendingSpan {
    pub fn new(trace: RequestTrace) -> PendingSpan {
        PendingSpan(Some(trace))
    }

    /// The span, for the target's child spans.
    pub fn get(&self) -> Option<&RequestTrace> {
        self.0.as_ref()
    }

    /// The span, for the observe stage to end.
    pub fn take(&mut self) -> Option<RequestTrace> {
        self.0.take()
    }
}

impl Drop for PendingSpan {
    fn drop(&mut self) {
        if let Some(trace) = self.0.take() {
            let span = trace.context.span();
            span.set_status(Status::error(
                "cancelled: the client went away before the response",
            ));
            span.end();
        }
    }
}

/// Where an outgoing call goes, for its span's attributes.
pub enum CallTarget<'a> {
    /// A component's request, to this URL (`http://self/...` included).
    Url(&'a http::Uri),
    /// An upstream route's request: the upstream's name and the path.
    Upstream(&'a str, &'a str),
}

/// An outgoing call's span; ends when the response's headers arrive or the call fails.
pub struct ClientSpan {
    context: Context,
}

impl ClientSpan {
    /// Ends the span with the response's status.
    pub fn responded(self, status: u16) {
        end_with_status(self.context.span(), status);
    }

    /// Ends the span as failed, with what went wrong.
    pub fn failed(self, error: &dyn std::fmt::Display) {
        let span = self.context.span();
        span.set_status(Status::error(error.to_string()));
        span.end();
    }
}

/// Ends `span` with an HTTP status: an attribute, and the error status for a 5xx (a 4xx is the
/// client's doing, not the span's error, by OpenTelemetry's HTTP conventions).
fn end_with_status(span: opentelemetry::trace::SpanRef<'_>, status: u16) {
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(format!("{status}")));
    }
    span.end();
}

/// A method as a span name or attribute, without an allocation for the standard ones.
fn span_name(method: &http::Method) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow;
    match method.as_str() {
        "GET" => Cow::Borrowed("GET"),
        "POST" => Cow::Borrowed("POST"),
        "PUT" => Cow::Borrowed("PUT"),
        "DELETE" => Cow::Borrowed("DELETE"),
        "HEAD" => Cow::Borrowed("HEAD"),
        "OPTIONS" => Cow::Borrowed("OPTIONS"),
        "PATCH" => Cow::Borrowed("PATCH"),
        other => Cow::Owned(other.to_string()),
    }
}

/// `uri` for a span: scheme, host, port and path, without the query (which may carry tokens) or
/// any user information.
fn without_secrets(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}{}", uri.path()),
        None => format!("{scheme}://{host}{}", uri.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_on_spans_carry_no_query_or_credentials() {
        let uri: http::Uri = "https://user:secret@api.example.com:8443/v1/items?token=abc"
            .parse()
            .unwrap();
        assert_eq!(
            without_secrets(&uri),
            "https://api.example.com:8443/v1/items"
        );
        let uri: http::Uri = "http://self/back".parse().unwrap();
        assert_eq!(without_secrets(&uri), "http://self/back");
    }
}
