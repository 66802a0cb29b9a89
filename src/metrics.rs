//! Every Prometheus metric the gateway exports, in one place.
//!
//! Names follow the OpenTelemetry HTTP semantic conventions in their Prometheus form
//! (`http_server_*`), and the gateway's own carry the `wasmgate_` prefix. The `route` label is
//! always the route's path template, never the raw request path, so cardinality is bounded by
//! the config. Per-route handles are resolved once when the route is built ([`RouteMetrics`]) so
//! the request path does not hash label values for them.

use crate::capabilities::logging::Admit;
use crate::capabilities::outbound_http::OutboundOutcome;
use crate::reload::Outcome as ReloadOutcome;
use crate::runtime::admission::RejectReason;
use crate::runtime::instance::TrapKind;
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

/// The route label for requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 30.0, 60.0,
];
const INSTANTIATION_BUCKETS: &[f64] = &[
    0.000_002, 0.000_005, 0.000_01, 0.000_015, 0.000_02, 0.000_03, 0.000_05, 0.000_1, 0.000_25,
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1,
];

const KEYVALUE_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.5,
];

/// The registry and every metric family.
pub struct Metrics {
    registry: Registry,
    request_duration: HistogramVec,
    active_requests: IntGaugeVec,
    instantiation_duration: HistogramVec,
    instances_active: IntGaugeVec,
    instances_idle: IntGaugeVec,
    instance_reuses: IntCounterVec,
    admission_rejected: IntCounterVec,
    guest_traps: IntCounterVec,
    outbound_requests: IntCounterVec,
    keyvalue_operations: IntCounterVec,
    keyvalue_duration: HistogramVec,
    blobstore: BlobStoreMetrics,
    guest_log_messages: IntCounterVec,
    config_reloads: IntCounterVec,
    tls_certificate_reloads: IntCounterVec,
    tls_certificate_expiry: IntGaugeVec,
    tls_handshake_failures: IntCounterVec,
    connections_open: IntGaugeVec,
    worker_connections: IntGaugeVec,
    connections_closed: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_healthy: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    upstream_tunnels: IntGaugeVec,
    upstream_connections_opened: IntCounterVec,
    split_requests: IntCounterVec,
    rate_limited: IntCounterVec,
    /// The live generation's number: 1 for the config loaded at start, +1 per applied reload.
    pub config_generation: IntGauge,
    /// When the last reload (or the first load) was applied, in seconds since the epoch.
    pub config_last_success: prometheus::Gauge,
    /// Instance pools the process has: `[engine]`'s and one per distinct route `pool` tuning.
    pub instance_pools: IntGauge,
    /// Sockets lingering after the gateway closed their connection (`crate::server::linger`).
    pub connections_lingering: IntGauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("metric definitions are static and valid");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let metrics = Metrics {
            request_duration: histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, until the whole response body is sent (or the client went away).",
                REQUEST_BUCKETS,
                &[
                    "http_route",
                    "http_request_method",
                    "http_response_status_code",
                ],
            ),
            active_requests: gauge(
                "http_server_active_requests",
                "HTTP server requests in flight, until their response body is sent.",
                &["http_route"],
            ),
            instantiation_duration: histogram(
                "wasmgate_instantiation_duration_seconds",
                "Time to create a component instance for a request.",
                INSTANTIATION_BUCKETS,
                &["route"],
            ),
            instances_active: gauge(
                "wasmgate_instances_active",
                "Component instances alive now.",
                &["route"],
            ),
            instances_idle: gauge(
                "wasmgate_instances_idle",
                "Component instances kept for reuse (a route's `reuse`), waiting for a request.",
                &["route"],
            ),
            instance_reuses: counter(
                "wasmgate_instance_reuses_total",
                "Requests served by an instance that had served an earlier request (a route's `reuse`).",
                &["route"],
            ),
            admission_rejected: counter(
                "wasmgate_admission_rejected_total",
                "Requests turned away by admission control.",
                &["route", "reason"],
            ),
            guest_traps: counter(
                "wasmgate_guest_traps_total",
                "Guest failures: traps, timeouts and memory exhaustion.",
                &["route", "kind"],
            ),
            outbound_requests: counter(
                "wasmgate_outbound_requests_total",
                "Outgoing HTTP requests from components, by allow-list outcome.",
                &["route", "outcome"],
            ),
            keyvalue_operations: counter(
                "wasmgate_keyvalue_operations_total",
                "Keyvalue operations by store, backend, operation and outcome (ok, invalid, error, denied).",
                &["store", "backend", "op", "outcome"],
            ),
            keyvalue_duration: histogram(
                "wasmgate_keyvalue_operation_duration_seconds",
                "Time keyvalue backends take per operation.",
                KEYVALUE_BUCKETS,
                &["backend", "op"],
            ),
            blobstore: BlobStoreMetrics {
                operations: counter(
                    "wasmgate_blobstore_operations_total",
                    "Blobstore operations by store, backend, operation and outcome (ok, not_found, invalid, error, denied).",
                    &["store", "backend", "op", "outcome"],
                ),
                bytes: counter(
                    "wasmgate_blobstore_bytes_total",
                    "Object bytes components wrote to (direction=write) and read from (direction=read) blob stores.",
                    &["store", "direction"],
                ),
                duration: histogram(
                    "wasmgate_blobstore_operation_duration_seconds",
                    "Time blobstore backends take per operation (a write: until the object is stored after finish; a read: until its data starts to flow).",
                    KEYVALUE_BUCKETS,
                    &["backend", "op"],
                ),
            },
            guest_log_messages: counter(
                "wasmgate_guest_log_messages_total",
                "Lines components logged through wasi:logging, stdout (level info) and stderr (level warn), by level and outcome (logged, dropped).",
                &["route", "level", "outcome"],
            ),
            config_reloads: counter(
                "wasmgate_config_reloads_total",
                "Config reloads by outcome (success, failure).",
                &["outcome"],
            ),
            tls_certificate_reloads: counter(
                "wasmgate_tls_certificate_reloads_total",
                "TLS listeners' certificates built again (config reload or changed files), by outcome (success, failure: the old certificates stay).",
                &["outcome"],
            ),
            tls_certificate_expiry: gauge(
                "wasmgate_tls_certificate_expiry_timestamp_seconds",
                "When each certificate in use expires (its notAfter), in seconds since the Unix epoch; name is the listener, and `listener:first SNI name` for SNI certificates.",
                &["name"],
            ),
            tls_handshake_failures: counter(
                "wasmgate_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason.",
                &["reason"],
            ),
            connections_open: gauge(
                "wasmgate_connections_open",
                "Client connections open, by listener, those still being established (PROXY header, TLS handshake) included.",
                &["listener"],
            ),
            worker_connections: gauge(
                "wasmgate_worker_connections",
                "Client connections each worker thread serves now, with [server] scheduler = \"per_core\" (absent with work_stealing).",
                &["worker"],
            ),
            connections_closed: counter(
                "wasmgate_connections_closed_total",
                "Client connections closed, by listener and reason: finished (the client closed, or HTTP ended it), error (a protocol or socket error, send_timeout included), not_established (the PROXY header or TLS handshake failed or timed out), idle, room (evicted for a new client at max_connections), stalled (a response the client stopped taking), shutdown.",
                &["listener", "reason"],
            ),
            upstream_requests: counter(
                "wasmgate_upstream_requests_total",
                "Requests sent to upstream targets, by upstream, target and status (the response's, or timeout, error).",
                &["upstream", "target", "status"],
            ),
            upstream_duration: histogram(
                "wasmgate_upstream_request_duration_seconds",
                "Time upstream targets took to send their response headers.",
                REQUEST_BUCKETS,
                &["upstream", "target"],
            ),
            upstream_healthy: gauge(
                "wasmgate_upstream_target_healthy",
                "1 while an upstream target takes requests, 0 while it is ejected.",
                &["upstream", "target"],
            ),
            upstream_connections: gauge(
                "wasmgate_upstream_connections",
                "Connections open to an upstream target (in use or idle in the pool).",
                &["upstream", "target"],
            ),
            upstream_tunnels: gauge(
                "wasmgate_upstream_tunnels",
                "Protocol switches (WebSockets) open through an upstream.",
                &["upstream"],
            ),
            upstream_connections_opened: counter(
                "wasmgate_upstream_connections_opened_total",
                "Connections made to an upstream target; against its requests, how well keep-alive works.",
                &["upstream", "target"],
            ),
            split_requests: counter(
                "wasmgate_split_requests_total",
                "Requests a split route sent to each of its targets.",
                &["route", "target"],
            ),
            rate_limited: counter(
                "wasmgate_rate_limited_total",
                "Requests a route's rate limit answered with 429.",
                &["route"],
            ),
            config_generation: registered(
                &registry,
                IntGauge::new(
                    "wasmgate_config_generation",
                    "The live config generation: 1 at start, one more per applied reload.",
                )
                .expect("static metric definition"),
            ),
            config_last_success: registered(
                &registry,
                prometheus::Gauge::new(
                    "wasmgate_config_last_reload_success_timestamp_seconds",
                    "When the live config was applied, in seconds since the Unix epoch.",
                )
                .expect("static metric definition"),
            ),
            instance_pools: registered(
                &registry,
                IntGauge::new(
                    "wasmgate_instance_pools",
                    "Instance pools: [engine]'s and one per distinct route `pool` setting.",
                )
                .expect("static metric definition"),
            ),
            connections_lingering: registered(
                &registry,
                IntGauge::new(
                    "wasmgate_connections_lingering",
                    "Sockets draining after the gateway closed their connection, so the client reads the whole answer (lingering close); at most max_connections.",
                )
                .expect("static metric definition"),
            ),
            registry: registry.clone(),
        };
        let build_info = gauge(
            "wasmgate_build_info",
            "The running gateway's version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(
                crate::capabilities::logging::DroppedLogLines::new(),
            ))
            .expect("metric names are unique");
        Arc::new(metrics)
    }

    /// Counts a reload by its outcome.
    pub fn reloaded(&self, outcome: &ReloadOutcome) {
        let outcome = match outcome {
            ReloadOutcome::Applied { .. } => "success",
            ReloadOutcome::Failed(_) => "failure",
        };
        self.config_reloads.with_label_values(&[outcome]).inc();
    }

    /// Counts a TLS listener's certificates built again.
    pub fn tls_certificates_reloaded(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.tls_certificate_reloads
            .with_label_values(&[outcome])
            .inc();
    }

    /// Exports the expiry of every certificate in use (and only those).
    pub fn tls_certificate_expiry(&self, certificates: &[(String, i64)]) {
        self.tls_certificate_expiry.reset();
        for (name, not_after) in certificates {
            self.tls_certificate_expiry
                .with_label_values(&[name.as_str()])
                .set(*not_after);
        }
    }

    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failed(&self, reason: crate::tls::HandshakeFailure) {
        self.tls_handshake_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The open-connections gauge of one listener.
    pub fn connections_open(&self, listener: &str) -> IntGauge {
        self.connections_open.with_label_values(&[listener])
    }

    /// The gauge of the connections worker `index` serves (`crate::server::workers`).
    pub fn worker_connections(&self, index: usize) -> IntGauge {
        self.worker_connections
            .with_label_values(&[index.to_string().as_str()])
    }

    /// Counts a client connection of `listener` closed, and why (see
    /// `wasmgate_connections_closed_total`).
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.connections_closed
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// The health gauge of one upstream target.
    pub fn upstream_target_healthy(&self, upstream: &str, target: &str) -> IntGauge {
        self.upstream_healthy.with_label_values(&[upstream, target])
    }

    /// The header-time histogram of one upstream target.
    pub fn upstream_duration(&self, upstream: &str, target: &str) -> Histogram {
        self.upstream_duration
            .with_label_values(&[upstream, target])
    }

    /// Counts a request sent to an upstream target and how long its headers took
    /// (`duration`: the target's [`Metrics::upstream_duration`]).
    pub fn upstream_request(
        &self,
        upstream: &str,
        target: &str,
        status: &str,
        duration: &Histogram,
        seconds: f64,
    ) {
        self.upstream_requests
            .with_label_values(&[upstream, target, status])
            .inc();
        duration.observe(seconds);
    }

    /// The open-connections gauge of one upstream target.
    pub fn upstream_connections_open(&self, upstream: &str, target: &str) -> IntGauge {
        self.upstream_connections
            .with_label_values(&[upstream, target])
    }

    /// The open-tunnels gauge of one upstream.
    pub fn upstream_tunnels(&self, upstream: &str) -> IntGauge {
        self.upstream_tunnels.with_label_values(&[upstream])
    }

    /// The connections-opened counter of one upstream target.
    pub fn upstream_connections_opened(&self, upstream: &str, target: &str) -> IntCounter {
        self.upstream_connections_opened
            .with_label_values(&[upstream, target])
    }

    /// The request counter of one target of a split route.
    pub fn split_requests(&self, route: &str, target: &str) -> IntCounter {
        self.split_requests.with_label_values(&[route, target])
    }

    /// The counter of one route's requests refused by its rate limit.
    pub fn rate_limited(&self, route: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[route])
    }

    /// Handles for one route's metrics.
    pub fn route(self: &Arc<Self>, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            route: route.into(),
            active_requests: self.active_requests.with_label_values(&[route]),
            instantiation: self.instantiation_duration.with_label_values(&[route]),
            instances_active: self.instances_active.with_label_values(&[route]),
            instances_idle: self.instances_idle.with_label_values(&[route]),
            instance_reuses: self.instance_reuses.with_label_values(&[route]),
            traps: [TrapKind::Trap, TrapKind::Timeout, TrapKind::Memory]
                .map(|k| self.guest_traps.with_label_values(&[route, k.as_str()])),
            rejected: [
                RejectReason::QueueFull,
                RejectReason::QueueTimeout,
                RejectReason::PoolExhausted,
            ]
            .map(|r| {
                self.admission_rejected
                    .with_label_values(&[route, r.as_str()])
            }),
            outbound_allowed: self
                .outbound_requests
                .with_label_values(&[route, "allowed"]),
            outbound_denied: self.outbound_requests.with_label_values(&[route, "denied"]),
            guest_logs: GUEST_LOG_LEVELS.map(|level| {
                ["logged", "dropped"]
                    .map(|outcome| Lazy::new(&self.guest_log_messages, &[route, level, outcome]))
            }),
            all: self.clone(),
        })
    }

    /// Handles for one operation on one keyvalue store.
    pub fn keyvalue_op(&self, store: &str, backend: &str, op: &str) -> KeyValueOpMetrics {
        let outcome =
            |outcome: &str| Lazy::new(&self.keyvalue_operations, &[store, backend, op, outcome]);
        KeyValueOpMetrics {
            ok: outcome("ok"),
            invalid: outcome("invalid"),
            error: outcome("error"),
            duration: Lazy::new(&self.keyvalue_duration, &[backend, op]),
        }
    }

    /// Records a finished request (headers sent).
    pub fn observe_request(&self, route: &str, method: &http::Method, status: u16, seconds: f64) {
        let mut buf = itoa_buf();
        let status = format_status(status, &mut buf);
        self.request_duration
            .with_label_values(&[route, method_label(method), status])
            .observe(seconds);
    }

    /// The active-requests gauge of requests no route matched.
    pub fn unmatched_active(&self) -> IntGauge {
        self.active_requests.with_label_values(&[UNMATCHED_ROUTE])
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    /// Counts a keyvalue operation outside any store's handles (a refused `open`).
    pub fn keyvalue_operation(&self, store: &str, backend: &str, op: &str, outcome: &str) {
        self.keyvalue_operations
            .with_label_values(&[store, backend, op, outcome])
            .inc();
    }
}

/// The blobstore metric families; stores label them per call.
#[derive(Clone)]
pub struct BlobStoreMetrics {
    pub operations: IntCounterVec,
    pub bytes: IntCounterVec,
    pub duration: HistogramVec,
}

impl Metrics {
    /// The blobstore metric families.
    pub fn blobstore(&self) -> &BlobStoreMetrics {
        &self.blobstore
    }
}

/// The `level` label values of `wasmgate_guest_log_messages_total`, in `wasi:logging`'s order.
pub const GUEST_LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "critical"];

/// One keyvalue operation's handles on one store.
pub struct KeyValueOpMetrics {
    pub ok: Lazy<IntCounter>,
    pub invalid: Lazy<IntCounter>,
    pub error: Lazy<IntCounter>,
    pub duration: Lazy<Histogram>,
}

/// One labelled series, looked up in its vector on first use and kept: later uses skip the
/// lookup (hashing the labels under a lock), and a series nobody used stays out of `/metrics`.
pub struct Lazy<M> {
    series: OnceLock<M>,
    resolve: Box<dyn Fn() -> M + Send + Sync>,
}

impl<M> Lazy<M> {
    fn new<V>(vec: &MetricVec<V>, labels: &[&str]) -> Lazy<M>
    where
        V: MetricVecBuilder<M = M> + 'static,
        M: Send + Sync + 'static,
    {
        let vec = vec.clone();
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        Lazy {
            series: OnceLock::new(),
            resolve: Box::new(move || {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                vec.with_label_values(&labels)
            }),
        }
    }

    pub fn get(&self) -> &M {
        self.series.get_or_init(|| (self.resolve)())
    }
}

/// Registers a metric that has no labels and returns it.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// Increments a gauge now and decrements it when dropped, however the holder ends.
pub struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl<'a> GaugeGuard<'a> {
    pub fn inc(gauge: &'a prometheus::IntGauge) -> GaugeGuard<'a> {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One route's metric handles.
pub struct RouteMetrics {
    pub route: Arc<str>,
    pub active_requests: IntGauge,
    pub instantiation: Histogram,
    pub instances_active: IntGauge,
    /// Instances of a route with `reuse` waiting for their next request.
    pub instances_idle: IntGauge,
    /// Requests served by a reused instance.
    pub instance_reuses: IntCounter,
    traps: [IntCounter; 3],
    rejected: [IntCounter; 3],
    outbound_allowed: IntCounter,
    outbound_denied: IntCounter,
    /// By level (as [`GUEST_LOG_LEVELS`]), then logged / dropped.
    guest_logs: [[Lazy<IntCounter>; 2]; 6],
    all: Arc<Metrics>,
}

impl RouteMetrics {
    pub fn trap(&self, kind: TrapKind) {
        self.traps[kind as usize].inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }

    pub fn outbound(&self, outcome: OutboundOutcome) {
        match outcome {
            OutboundOutcome::Denied => self.outbound_denied.inc(),
            OutboundOutcome::Allowed => self.outbound_allowed.inc(),
        }
    }

    /// Counts a guest's log line; `level` indexes [`GUEST_LOG_LEVELS`].
    pub fn guest_log(&self, level: usize, admit: Admit) {
        if let Some(level) = self.guest_logs.get(level) {
            let outcome = match admit {
                Admit::Log => 0,
                Admit::Drop => 1,
            };
            level[outcome].get().inc();
        }
    }

    pub fn observe_request(&self, method: &http::Method, status: u16, seconds: f64) {
        self.all
            .observe_request(&self.route, method, status, seconds);
    }

    /// The process's metrics, for capabilities that label by something other than the route.
    pub fn all(&self) -> &Arc<Metrics> {
        &self.all
    }
}

/// The method label: the standard methods by name, anything else as `_OTHER` (bounded
/// cardinality, as the OpenTelemetry conventions ask).
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

fn format_status(status: u16, buf: &mut [u8; 3]) -> &str {
    let status = status.min(999);
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}
