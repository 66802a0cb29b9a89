//! The gateway: the process's state, the generation it serves, and the path every request takes.
//!
//! A [`Gateway`] owns the [`Process`] (engine, stores, metrics) and the live [`Generation`]
//! behind an `ArcSwap`; [`Gateway::load`] builds a generation from a config
//! (`runtime::loader`) and swaps it in. Each request takes one snapshot of the generation and
//! keeps it to its end.
//!
//! [`Gateway::handle`] is the request path, in stages:
//! guards (431, 400: `guards`) ─► route (404, 405) ─► body size (413) ─► target (a component:
//! 503, 504, 500, 408) ─► observe (metrics, the access log, the request id). Components'
//! requests to `http://self` take the same path in process ([`SelfDispatch`]), and only they may
//! reach routes marked `private`.

use crate::access_log::{self, LoggedBody};
use crate::body::{ActiveRequest, BodyCut, CutFlag, LimitedBody, Observation, ResponseBody, full};
use crate::capabilities::outbound_http::{SelfCalls, SelfDispatch, SelfHandle};
use crate::client_identity::new_request_id;
use crate::config::Config;
use crate::connection_info::ConnectionInfo;
use crate::generation::{Backend, Generation, Route, Target};
use crate::guards;
use crate::metrics::UNMATCHED_ROUTE;
use crate::middleware::{self, RouteBody, RouteService};
use crate::otel::{CallTarget, PendingSpan, RequestTrace};
use crate::proxy::UpstreamFailure;
use crate::router::Lookup;
use crate::runtime::instance::Failure;
use crate::runtime::loader::{self, Process};
use arc_swap::ArcSwap;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::{Arc, Weak};
use std::time::Instant;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Headers the gateway sets for components; a client's own copies are removed.
const GATEWAY_HEADER_PREFIX: &str = "x-wasmgate-";
const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-wasmgate-route");
const PATH_INFO_HEADER: HeaderName = HeaderName::from_static("x-wasmgate-path-info");
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The gateway: the process's state and the generation it serves; see the module docs.
pub struct Gateway {
    process: Process,
    /// The live generation; each request takes one snapshot and keeps it to the end.
    generation: ArcSwap<Generation>,
    /// This gateway, for components' requests to `http://self`.
    me: Weak<Gateway>,
}

impl Gateway {
    /// A gateway on `process`, serving an empty generation (every request 404) until
    /// [`Gateway::load`] installs one.
    pub fn new(process: Process) -> Arc<Gateway> {
        Arc::new_cyclic(|me| Gateway {
            process,
            generation: ArcSwap::from_pointee(Generation::empty()),
            me: me.clone(),
        })
    }

    /// Builds the generation `config` describes and makes it the live one. On an error the
    /// current generation keeps serving.
    pub fn load(&self, config: &Config) -> anyhow::Result<Arc<Generation>> {
        let me: Weak<dyn SelfDispatch> = self.me.clone();
        let self_handle: SelfHandle = Arc::new(std::sync::OnceLock::from(me));
        let previous = self.generation.load_full();
        // Components named `oci://...` become files in the registry cache first.
        let config = crate::runtime::oci::localize(config)?;
        let generation = Arc::new(loader::load(
            &self.process,
            &config,
            &self_handle,
            &previous,
        )?);
        self.generation.store(generation.clone());
        Ok(generation)
    }

    /// The generation serving now.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// The process's state.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Serves one request from a client; never fails: every problem becomes a status code.
    /// The request is recorded in the metrics when the response's body ends.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (response, observation) = self.dispatch_at(request, SelfCalls::default()).await;
        Observation::attach(observation, response)
    }

    /// [`Gateway::handle`] for a caller that wraps the response body itself (the listener):
    /// the observation to record when that body ends, if the body is not complete already.
    pub async fn handle_observed<B>(
        &self,
        request: Request<B>,
    ) -> (Response<ResponseBody>, Option<Observation>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.dispatch_at(request, SelfCalls::default()).await
    }

    /// Serves a request `calls.depth` self-calls deep (0: from a client, which cannot reach
    /// private routes), on the generation the outermost request started on, through the
    /// stages: guards (431, 400) ─► identity (forwarded headers, request id, traceparent) ─►
    /// route (404, 405, 308) ─► body size (413) ─► target (503, 504, 500, 408) ─► observe
    /// (metrics, the access log, the request id on the response). A stage that answers early
    /// hands its response straight to observe.
    async fn dispatch_at<B>(
        &self,
        mut request: Request<B>,
        calls: SelfCalls,
    ) -> (Response<ResponseBody>, Option<Observation>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let SelfCalls { depth, pinned } = calls;
        let generation = pinned
            .and_then(|pinned| pinned.downcast::<Generation>().ok())
            .unwrap_or_else(|| self.generation.load_full());
        let mut seen = Seen::start(&request, &generation);

        let host = match guards::check(
            request.uri(),
            request.headers(),
            generation.limits.max_header_bytes,
        ) {
            Ok(host) => host,
            Err(rejection) => {
                seen.request_id = new_request_id();
                let page = error_page(rejection.status(), &seen.request_id, &rejection.to_string());
                return self.finish(&mut seen, UNMATCHED_ROUTE.into(), None, page);
            }
        };
        seen.host = host;

        // The trace context is taken before identify, which makes up a `traceparent` for a
        // request that has none; the server span then starts with the request id known.
        let tracing = self.process.tracing();
        let arriving = tracing.map(|tracing| tracing.arriving(request.headers()));
        identify(&mut request, &generation, &mut seen, depth);
        if let (Some(tracing), Some(parent)) = (tracing, arriving) {
            seen.trace = PendingSpan::new(tracing.server_span(
                parent,
                request.headers_mut(),
                &seen.method,
                &seen.path,
                &seen.request_id,
            ));
        }

        let (route, route_headers) = match choose_route(&generation, &request, &seen, depth) {
            Routed::To(route, headers) => (route, headers),
            Routed::Answered(page) => {
                return self.finish(&mut seen, UNMATCHED_ROUTE.into(), None, page);
            }
        };
        let metrics = route.metrics.clone();
        // Decremented when the response's body ends, or when this future or that body is
        // dropped (a client that resets or disconnects).
        let active = ActiveRequest::start(&metrics.active_requests);
        let limits = generation.limits;
        let http1 = seen.version < http::Version::HTTP_2;

        // The rate limit (clients only: self-calls are the gateway's own).
        if depth == 0
            && let Some(limit) = &route.rate_limit
            && let Err(wait) = limit.admit(request.headers(), seen.client)
        {
            drop(active);
            let page = refuse(request, rate_limited_page(wait, &seen.request_id));
            return self.finish(&mut seen, metrics.route.clone(), None, page);
        }

        // Body size, by its declared length.
        if content_length(request.headers()).is_some_and(|len| len > limits.max_request_body) {
            drop(active);
            let page = refuse(
                request,
                cut_page(BodyCut::TooLarge, &seen.request_id, http1),
            );
            return self.finish(&mut seen, metrics.route.clone(), None, page);
        }

        let headers = request.headers_mut();
        for (name, value) in route_headers {
            headers.insert(name, value);
        }
        let cut = CutFlag::default();
        let request = request.map(|body| {
            LimitedBody::new(
                body,
                limits.max_request_body,
                limits.body_read_timeout,
                cut.clone(),
            )
        });
        let calls = SelfCalls {
            depth,
            pinned: Some(generation.clone()),
        };
        let call = TargetCall {
            scheme: match seen.connection.as_deref().map(|c| c.scheme) {
                Some(crate::connection_info::Scheme::Https) => Scheme::Https,
                _ => Scheme::Http,
            },
            request_id: seen.request_id.clone(),
            client: seen.client,
            cut: cut.clone(),
            calls,
            trace: seen.trace.get().cloned(),
        };
        let response = match &route.layers {
            None => match call_target(&route.target, request, call).await {
                Ok(response) => response,
                Err(failure) => failure_page(failure, &seen.request_id),
            },
            Some(layers) => {
                let mut request = request.map(|body| body.boxed_unsync());
                request.extensions_mut().insert(call);
                middleware::call(layers, request).await
            }
        };
        let response = match cut.get() {
            Some(why) => cut_page(why, &seen.request_id, http1),
            None => response,
        };
        self.finish(&mut seen, metrics.route.clone(), Some(active), response)
    }

    /// The observe stage: adds the request id, makes the observation that records the request
    /// in the metrics when the body ends (recorded now if the body is complete), and (when the
    /// access log is on) wraps the body so the log line is written once it is sent.
    fn finish(
        &self,
        seen: &mut Seen,
        route: Arc<str>,
        active: Option<ActiveRequest>,
        mut response: Response<ResponseBody>,
    ) -> (Response<ResponseBody>, Option<Observation>) {
        let status = response.status().as_u16();
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, header_value(&seen.request_id));
        let observation = Observation {
            metrics: self.process.metrics().clone(),
            route: route.clone(),
            method: seen.method.clone(),
            status,
            started: seen.started,
            active,
            trace: seen.trace.take(),
        };
        let observation = observation.unless_complete(&response);
        if !seen.logged {
            return (response, observation);
        }
        let entry = access_log::Entry {
            started: seen.started,
            request_id: seen.request_id.clone(),
            client: seen.client,
            listener: seen.connection.as_ref().map(|c| c.listener.clone()),
            tls_version: seen
                .connection
                .as_ref()
                .and_then(|c| c.tls.as_ref())
                .map(|tls| tls.version),
            protocol: seen.version,
            method: seen.method.clone(),
            host: seen.host.clone(),
            path: seen.path.clone(),
            route,
            status,
            request_body_size: seen.request_body_size,
            user_agent: seen.user_agent.clone(),
        };
        (
            response.map(|body| LoggedBody::new(body, entry).boxed_unsync()),
            observation,
        )
    }
}

/// What the request stages learned about a request, for the observe stage.
struct Seen {
    started: Instant,
    request_id: Arc<str>,
    method: http::Method,
    version: http::Version,
    path: String,
    host: Option<String>,
    client: Option<std::net::IpAddr>,
    connection: Option<Arc<ConnectionInfo>>,
    request_body_size: Option<u64>,
    user_agent: Option<String>,
    /// The request's server span, when tracing is on, until the observe stage takes it.
    trace: PendingSpan,
    /// Whether the access log takes this request: on in the config and let through by the log
    /// filter.
    logged: bool,
}

impl Seen {
    /// What the observe stage will need, taken as the request arrives.
    fn start<B>(request: &Request<B>, generation: &Generation) -> Seen {
        let mut seen = Seen {
            started: Instant::now(),
            request_id: Arc::from(""),
            method: request.method().clone(),
            version: request.version(),
            path: request.uri().path().to_string(),
            host: None,
            client: None,
            connection: request.extensions().get::<Arc<ConnectionInfo>>().cloned(),
            request_body_size: None,
            user_agent: None,
            trace: PendingSpan::default(),
            logged: generation.access_log && access_log::enabled(),
        };
        if seen.logged {
            seen.request_body_size = content_length(request.headers());
            seen.user_agent = request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        seen
    }
}

/// The identity stage: headers the client's `Connection` names are dropped (they were for this
/// hop), only the gateway sets `x-wasmgate-*` headers; a client's request gets
/// the client's identity headers and its request id (`client_identity`), a component's request
/// to `http://self` keeps its own headers and gets a new request id.
fn identify<B>(request: &mut Request<B>, generation: &Generation, seen: &mut Seen, depth: u32) {
    let headers = request.headers_mut();
    crate::proxy::headers::remove_connection_named(headers);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(GATEWAY_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    match seen.connection.as_deref() {
        Some(connection) if depth == 0 => {
            let client = generation
                .client
                .apply(headers, connection, seen.host.as_deref());
            seen.request_id = client.request_id;
            seen.client = Some(client.address);
        }
        _ => {
            seen.request_id = new_request_id();
            headers.insert(REQUEST_ID_HEADER, header_value(&seen.request_id));
        }
    }
}

/// Headers the route stage adds for the target: the route template, the wildcard's match and
/// each `:param`.
type RouteHeaders = Vec<(HeaderName, HeaderValue)>;

/// What the route stage settled.
enum Routed {
    /// The route, and the headers it adds for the target.
    To(Arc<Route>, RouteHeaders),
    /// No route: the answer (404, 405 with `Allow`, or 308 on a listener with `http_redirect`).
    Answered(Response<ResponseBody>),
}

/// The route stage; see [`Routed`]. A private route is as absent as no route to a client (404,
/// never 405), and so is a route that does not serve the request's listener.
fn choose_route<B>(
    generation: &Generation,
    request: &Request<B>,
    seen: &Seen,
    depth: u32,
) -> Routed {
    let connection = seen.connection.as_deref();
    let listener = connection.map(|c| &*c.listener);
    let visible = |route: &Arc<Route>| depth > 0 || (!route.private && route.serves(listener));
    let lookup = generation
        .routes
        .lookup(seen.host.as_deref(), &seen.method, &seen.path, visible);
    if !matches!(lookup, Lookup::Found(_))
        && depth == 0
        && let Some(redirect) = connection.and_then(|c| c.redirect.as_deref())
        && let Some(host) = seen.host.as_deref()
    {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        return Routed::Answered(redirect_page(
            &redirect.location(host, target),
            &seen.request_id,
        ));
    }
    match lookup {
        Lookup::Found(found) => {
            let mut headers = Vec::with_capacity(found.params.len() + 2);
            headers.push((ROUTE_HEADER, header_value(found.template)));
            headers.push((PATH_INFO_HEADER, header_value(found.path_info)));
            for (name, value) in &found.params {
                if let Ok(name) =
                    HeaderName::try_from(format!("{GATEWAY_HEADER_PREFIX}param-{name}"))
                {
                    headers.push((name, header_value(value)));
                }
            }
            Routed::To(found.target.clone(), headers)
        }
        Lookup::MethodNotAllowed { allow } => {
            let mut response = error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                &seen.request_id,
                "this path does not take that method",
            );
            let allow = allow
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            response.headers_mut().insert(ALLOW, header_value(&allow));
            Routed::Answered(response)
        }
        Lookup::NotFound => Routed::Answered(error_page(
            StatusCode::NOT_FOUND,
            &seen.request_id,
            "no route matches this request",
        )),
    }
}

/// What the target stage needs besides the request (carried in the request's extensions
/// through a route's middleware).
#[derive(Clone)]
struct TargetCall {
    scheme: Scheme,
    request_id: Arc<str>,
    /// The client's address, after `trusted_proxies` (none for self-calls).
    client: Option<std::net::IpAddr>,
    cut: CutFlag,
    calls: SelfCalls,
    /// The request's server span, when tracing is on: the parent of the target's spans.
    trace: Option<RequestTrace>,
}

/// The target stage as a service, for a route's middleware to wrap: failures become error
/// pages here, so the middleware sees (and decorates) them like any response.
pub(crate) fn target_service(target: Arc<Target>) -> RouteService {
    RouteService::new(tower::service_fn(move |mut request: Request<RouteBody>| {
        let target = target.clone();
        async move {
            let Some(call) = request.extensions_mut().remove::<TargetCall>() else {
                return Ok(error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "-",
                    "the request lost its context",
                ));
            };
            let request_id = call.request_id.clone();
            Ok(match call_target(&target, request, call).await {
                Ok(response) => response,
                Err(failure) => failure_page(failure, &request_id),
            })
        }
    }))
}

/// The target stage: whatever serves the route answers the request (for a split, the backend
/// it picks).
async fn call_target<B>(
    target: &Target,
    request: Request<B>,
    call: TargetCall,
) -> Result<Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = bytes::Bytes, Error = wasmtime_wasi_http::Error>
        + Send
        + Unpin
        + 'static,
{
    let TargetCall {
        scheme,
        request_id,
        client,
        cut,
        calls,
        trace,
    } = call;
    let (backend, set_cookie) = match target {
        Target::One(backend) => (backend, None),
        Target::Split { split, .. } => match split.choose(request.headers()) {
            Some(choice) => (choice.backend, choice.set_cookie),
            None => return Err(Failure::Upstream(UpstreamFailure::NoHealthyTarget)),
        },
    };
    let mut response = match backend {
        Backend::Component(component) => {
            component
                .handle(request, scheme, &request_id, cut, calls, trace)
                .await
        }
        Backend::Upstream(upstream) => {
            let mut request = request;
            let span = trace.map(|trace| {
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let target = CallTarget::Upstream(upstream.upstream.name(), &path);
                trace.client_call(&method, target, request.headers_mut())
            });
            let forwarded = upstream.forward(request, &request_id, client).await;
            if let Some(span) = span {
                match &forwarded {
                    Ok(response) => span.responded(response.status().as_u16()),
                    Err(failure) => span.failed(&format_args!("{failure:?}")),
                }
            }
            forwarded
        }
    }?;
    if let Some(cookie) = set_cookie {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    Ok(response)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Answers a request the gateway refused with `page`, and gets rid of its body: read and
/// discarded ([`drain`]), unless the client waits for `100 Continue` before sending it, which
/// reading would send; then the body stays unread, and the (HTTP/1.1) connection, which cannot
/// carry another request, is closed after `page`.
fn refuse<B>(request: Request<B>, mut page: Response<ResponseBody>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
{
    if !waits_for_continue(&request) {
        tokio::spawn(drain(request.into_body()));
    } else {
        // Only HTTP/1.1 waits for `100 Continue`.
        page.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    page
}

/// Whether the client holds its body back until `100 Continue`, as hyper judges it: HTTP/1.1,
/// the last `Expect` is `100-continue`, and there is a body.
fn waits_for_continue<B: http_body::Body>(request: &Request<B>) -> bool {
    request.version() == http::Version::HTTP_11
        && request
            .headers()
            .get_all(http::header::EXPECT)
            .iter()
            .next_back()
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && !request.body().is_end_stream()
}

/// Bytes and time a refused request body may take to be read and discarded.
const DRAIN_LIMIT: u64 = 4 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards a body the gateway refused, within bounds, so the client reads the refusal
/// (closing with unread data makes the kernel reset the connection, and the answer can be lost)
/// and an HTTP/1.1 connection stays usable.
async fn drain<B: http_body::Body<Data = bytes::Bytes> + Unpin>(mut body: B) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn failure_page(failure: Failure, request_id: &str) -> Response<ResponseBody> {
    match failure {
        Failure::Rejected(reason) => {
            let mut response = error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                request_id,
                &format!("the route is at capacity ({})", reason.as_str()),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Failure::BadRequest(why) => {
            tracing::debug!(
                request_id,
                why,
                "request rejected before reaching the component"
            );
            error_page(
                StatusCode::BAD_REQUEST,
                request_id,
                "the request is malformed",
            )
        }
        Failure::TimedOut => error_page(
            StatusCode::GATEWAY_TIMEOUT,
            request_id,
            "the component did not answer in time",
        ),
        Failure::GuestFailed => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            request_id,
            "the component failed to handle the request",
        ),
        Failure::Upstream(UpstreamFailure::Unreachable) => error_page(
            StatusCode::BAD_GATEWAY,
            request_id,
            "the upstream could not be reached",
        ),
        Failure::Upstream(UpstreamFailure::TimedOut) => error_page(
            StatusCode::GATEWAY_TIMEOUT,
            request_id,
            "the upstream did not answer in time",
        ),
        Failure::Upstream(UpstreamFailure::NoHealthyTarget) => {
            let mut response = error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                request_id,
                "no upstream target is healthy",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// 429 with `Retry-After` for a client over its route's rate limit.
fn rate_limited_page(wait: std::time::Duration, request_id: &str) -> Response<ResponseBody> {
    let mut response = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        request_id,
        "too many requests from this client; retry later",
    );
    response.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(middleware::retry_after_seconds(wait)),
    );
    response
}

/// 413 or 408 for a request body the gateway cut off, closing an HTTP/1.x connection: the rest
/// of the body was not read, so the connection cannot carry another request, and a client must
/// not pool it.
fn cut_page(why: BodyCut, request_id: &str, http1: bool) -> Response<ResponseBody> {
    let (status, what) = match why {
        BodyCut::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        ),
        BodyCut::TooSlow => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        ),
    };
    let mut response = error_page(status, request_id, what);
    if http1 {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A 308 to `location`: the same method and body, on the listener `http_redirect` names.
fn redirect_page(location: &str, request_id: &str) -> Response<ResponseBody> {
    let mut response = error_page(
        StatusCode::PERMANENT_REDIRECT,
        request_id,
        "this listener redirects to its TLS listener",
    );
    if let Ok(location) = HeaderValue::from_str(location) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
}

/// A short plain-text error page that names the request id and nothing of the guest's internals.
fn error_page(status: StatusCode, request_id: &str, what: &str) -> Response<ResponseBody> {
    let text = format!(
        "{} {}: {what}\nrequest id: {request_id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl SelfDispatch for Gateway {
    fn dispatch(
        &self,
        request: Request<wasmtime_wasi_http::WasiBody>,
        calls: SelfCalls,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Response<wasmtime_wasi_http::WasiBody>> + Send + 'static>,
    > {
        // The future must not borrow `self`: hold the gateway through its own handle.
        let gateway = self.me.upgrade();
        Box::pin(async move {
            let response = match gateway {
                Some(gateway) => {
                    let (response, observation) = gateway.dispatch_at(request, calls).await;
                    Observation::attach(observation, response)
                }
                None => error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "-",
                    "the gateway is not serving",
                ),
            };
            response.map(|body| {
                use http_body_util::BodyExt;
                body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                    .boxed_unsync()
            })
        })
    }
}
