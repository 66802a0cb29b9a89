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

use crate::body::{BodyCut, CutFlag, LimitedBody, ResponseBody, full};
use crate::capabilities::outbound_http::{SelfDispatch, SelfHandle};
use crate::config::Config;
use crate::generation::{Generation, Route, Target};
use crate::guards;
use crate::metrics::{GaugeGuard, UNMATCHED_ROUTE};
use crate::router::Lookup;
use crate::runtime::instance::Failure;
use crate::runtime::loader::{self, Process};
use arc_swap::ArcSwap;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use std::sync::{Arc, Weak};
use std::time::Instant;

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
        let generation = Arc::new(loader::load(&self.process, config, &self_handle)?);
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
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.dispatch_at(request, 0).await
    }

    /// Serves a request `depth` self-calls deep (0: from a client, which cannot reach private
    /// routes). The stages: guards (431, 400) ─► route (404, 405) ─► body size (413) ─► target
    /// (503, 504, 500, 408) ─► observe (metrics, access log, request id).
    async fn dispatch_at<B>(&self, mut request: Request<B>, depth: u32) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let generation = self.generation.load_full();
        let limits = generation.limits;
        let request_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let method = request.method().clone();
        let http1 = request.version() < http::Version::HTTP_2;

        // Guards.
        let host = match guards::check(request.uri(), request.headers(), limits.max_header_bytes) {
            Ok(host) => host,
            Err(rejection) => {
                let page = error_page(rejection.status(), &request_id, &rejection.to_string());
                return self.finish(UNMATCHED_ROUTE, &method, started, &request_id, page);
            }
        };

        // Route. A private route is as absent as no route to a client: 404, never 405.
        let path = request.uri().path().to_string();
        let visible = |route: &Arc<Route>| depth > 0 || !route.private;
        let (route, extra_headers) =
            match generation
                .routes
                .lookup(host.as_deref(), &method, &path, visible)
            {
                Lookup::Found(found) => {
                    let mut extra = Vec::with_capacity(found.params.len() + 2);
                    extra.push((ROUTE_HEADER, header_value(found.template)));
                    extra.push((PATH_INFO_HEADER, header_value(found.path_info)));
                    for (name, value) in &found.params {
                        if let Ok(name) =
                            HeaderName::try_from(format!("{GATEWAY_HEADER_PREFIX}param-{name}"))
                        {
                            extra.push((name, header_value(value)));
                        }
                    }
                    (found.target.clone(), extra)
                }
                Lookup::MethodNotAllowed { allow } => {
                    let mut response = error_page(
                        StatusCode::METHOD_NOT_ALLOWED,
                        &request_id,
                        "this path does not take that method",
                    );
                    let allow = allow
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    response.headers_mut().insert(ALLOW, header_value(&allow));
                    return self.finish(UNMATCHED_ROUTE, &method, started, &request_id, response);
                }
                Lookup::NotFound => {
                    let page = error_page(
                        StatusCode::NOT_FOUND,
                        &request_id,
                        "no route matches this request",
                    );
                    return self.finish(UNMATCHED_ROUTE, &method, started, &request_id, page);
                }
            };
        let metrics = route.metrics.clone();
        // Decremented when this future ends or is dropped (a client that resets or disconnects).
        let active = GaugeGuard::inc(&metrics.active_requests);

        // Body size, by its declared length.
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|len| len > limits.max_request_body) {
            drop(active);
            tokio::spawn(drain(request.into_body()));
            let page = cut_page(BodyCut::TooLarge, &request_id, http1);
            return self.finish(&metrics.route, &method, started, &request_id, page);
        }

        // Target.
        let headers = request.headers_mut();
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(GATEWAY_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
        for (name, value) in extra_headers {
            headers.insert(name, value);
        }
        headers.insert(REQUEST_ID_HEADER, header_value(&request_id));

        let cut = CutFlag::default();
        let request = request.map(|body| {
            LimitedBody::new(
                body,
                limits.max_request_body,
                limits.body_read_timeout,
                cut.clone(),
            )
        });
        let result = match &route.target {
            Target::Component(component) => {
                component
                    .handle(request, &request_id, cut.clone(), depth)
                    .await
            }
        };
        drop(active);

        // Observe.
        let response = match (cut.get(), result) {
            (Some(why), _) => cut_page(why, &request_id, http1),
            (None, Ok(response)) => response,
            (None, Err(failure)) => failure_page(failure, &request_id),
        };
        let status = response.status().as_u16();
        metrics.observe_request(&method, status, started.elapsed().as_secs_f64());
        log_access(&metrics.route, &method, &path, status, started, &request_id);
        with_request_id(response, &request_id)
    }

    /// Records and logs a response the gateway made itself, and adds the request id.
    fn finish(
        &self,
        route: &str,
        method: &http::Method,
        started: Instant,
        request_id: &str,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let status = response.status().as_u16();
        self.process.metrics().observe_request(
            route,
            method,
            status,
            started.elapsed().as_secs_f64(),
        );
        log_access(route, method, "", status, started, request_id);
        with_request_id(response, request_id)
    }
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
    }
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

fn with_request_id(
    mut response: Response<ResponseBody>,
    request_id: &str,
) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, header_value(request_id));
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One access-log line per request, at debug level under the `wasmgate::access` target: enable it
/// with `RUST_LOG=info,wasmgate::access=debug`.
fn log_access(
    route: &str,
    method: &http::Method,
    path: &str,
    status: u16,
    started: Instant,
    request_id: &str,
) {
    tracing::debug!(
        target: "wasmgate::access",
        route, method = %method, path, status,
        micros = started.elapsed().as_micros() as u64,
        request_id,
    );
}

impl SelfDispatch for Gateway {
    fn dispatch(
        &self,
        request: Request<wasmtime_wasi_http::WasiBody>,
        depth: u32,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Response<wasmtime_wasi_http::WasiBody>> + Send + 'static>,
    > {
        // The future must not borrow `self`: hold the gateway through its own handle.
        let gateway = self.me.upgrade();
        Box::pin(async move {
            let response = match gateway {
                Some(gateway) => gateway.dispatch_at(request, depth).await,
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
