//! The gateway: a route table built from the config, and the path every request takes.
//!
//! [`Gateway::build`] turns a [`Config`] into something that can serve: it creates the engine,
//! loads every component once (through the compile cache), pre-instantiates each against the
//! linker, and validates the route table. Any error names the route and the file.
//!
//! [`Gateway::handle`] is the request path, top to bottom:
//! request id ─► header size (431) ─► path sanity (400) ─► route lookup (404, 405) ─►
//! body size (413) ─► the gateway's `x-wasmgate-*` headers ─► the component route
//! (503, 504, 500) ─► metrics and the access log. Components' requests to `http://self` take the
//! same path in process ([`SelfDispatch`]), and only they may reach routes marked `private`.

use crate::body::{LimitedBody, ResponseBody, full};
use crate::capabilities::config_store;
use crate::capabilities::keyvalue::{Grants, Stores};
use crate::capabilities::logging::LogBudget;
use crate::capabilities::outbound_http::{
    Allowlist, OutboundRule, PrivateAddresses, SelfDispatch, SelfHandle,
};
use crate::config::{Config, RouteConfig};
use crate::metrics::{Metrics, UNMATCHED_ROUTE};
use crate::router::{Lookup, RouteSpec, RouteTable};
use crate::runtime::admission::Admission;
use crate::runtime::component::{self, Origin};
use crate::runtime::engine::{Allocator, EpochTicker, build_engine};
use crate::runtime::instance::{ComponentRoute, Failure, HostState, RouteSettings, linker};
use crate::runtime::linking;
use anyhow::Context;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Headers the gateway sets for components; a client's own copies are removed.
const GATEWAY_HEADER_PREFIX: &str = "x-wasmgate-";
const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-wasmgate-route");
const PATH_INFO_HEADER: HeaderName = HeaderName::from_static("x-wasmgate-path-info");
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A built, ready-to-serve gateway.
pub struct Gateway {
    /// This gateway, for components' requests to `http://self`; set by [`Gateway::attach_self`].
    self_handle: SelfHandle,
    /// The same, typed, for the futures [`SelfDispatch`] returns.
    me: std::sync::OnceLock<Weak<Gateway>>,
    routes: RouteTable<Arc<ComponentRoute>>,
    metrics: Arc<Metrics>,
    max_request_body: u64,
    max_header_bytes: u64,
    /// What each component was loaded from, for `check` and tests.
    pub components: Vec<(PathBuf, Origin)>,
    pub allocator: Allocator,
    _ticker: EpochTicker,
}

impl Gateway {
    /// Builds everything the config describes; see the module docs.
    pub fn build(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Gateway> {
        let (engine, allocator) = build_engine(&config.engine)?;
        let linker = linker(&engine)?;
        let stores = Stores::build(&config.keyvalue, |p| config.resolve(p), &metrics)?;
        let self_handle: SelfHandle = Arc::new(std::sync::OnceLock::new());
        for name in config.unused_components() {
            tracing::warn!(
                component = name,
                "[component.{name}] is declared but no route links to it, directly or through \
                 other components; it is not loaded"
            );
        }

        // Each distinct component file (with the same links) is loaded once, however many routes
        // use it.
        let mut loaded: HashMap<(PathBuf, &BTreeMap<String, String>), ProxyPre<HostState>> =
            HashMap::new();
        let mut components = Vec::new();
        let mut specs = Vec::with_capacity(config.routes.len());
        for (index, route) in config.routes.iter().enumerate() {
            let name = route.describe(index);
            let path = config.resolve(&route.component);
            let key = (path.clone(), &route.links);
            let pre = match loaded.get(&key) {
                Some(pre) => pre.clone(),
                None => {
                    let (pre, origin) = load_route_component(config, route, &engine, &linker)
                        .map_err(|e| with_build_hint(e, &path))
                        .with_context(|| name.clone())?;
                    components.push((path.clone(), origin));
                    loaded.insert(key, pre.clone());
                    pre
                }
            };
            let grants = stores
                .grants(&route.keyvalue)
                .with_context(|| name.clone())?;
            let target = component_route(config, route, pre, grants, self_handle.clone(), &metrics)
                .with_context(|| name.clone())?;
            specs.push(RouteSpec {
                host: route.host.clone(),
                path: route.path.clone(),
                methods: route.methods.clone(),
                target: Arc::new(target),
            });
        }
        let routes = RouteTable::new(specs).map_err(|(index, e)| {
            anyhow::anyhow!("{}: {e}", config.routes[index].describe(index))
        })?;
        let ticker = EpochTicker::start(engine, config.engine.epoch_tick);
        Ok(Gateway {
            routes,
            metrics,
            max_request_body: config.server.max_request_body,
            max_header_bytes: config.server.max_header_bytes,
            components,
            allocator,
            _ticker: ticker,
            self_handle,
            me: std::sync::OnceLock::new(),
        })
    }

    /// One line per route, in config order: the template, the component (with `+NAME` for each
    /// component it links to) and, for private routes, `private`.
    pub fn route_lines(&self) -> Vec<String> {
        self.routes
            .targets()
            .map(|(template, route)| {
                let private = if route.is_private() { " private" } else { "" };
                format!("{template} {}{private}", route.component())
            })
            .collect()
    }

    /// Serves one request from a client; never fails: every problem becomes a status code.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        self.dispatch_at(request, 0).await
    }

    /// Lets components reach this gateway at `http://self` (see `capabilities::outbound_http`).
    pub fn attach_self(self: &Arc<Self>) {
        let weak: Weak<dyn SelfDispatch> = Arc::downgrade(self) as Weak<dyn SelfDispatch>;
        let _ = self.self_handle.set(weak);
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Serves a request `depth` self-calls deep (0: from a client, which cannot reach private
    /// routes).
    async fn dispatch_at<B>(&self, mut request: Request<B>, depth: u32) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let request_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let method = request.method().clone();
        let http1 = request.version() < http::Version::HTTP_2;

        if header_bytes(&request) > self.max_header_bytes {
            return self.finish(
                UNMATCHED_ROUTE,
                &method,
                started,
                &request_id,
                error_page(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &request_id,
                    "the request's headers are too large",
                ),
            );
        }
        if has_dot_segments(request.uri().path()) {
            return self.finish(
                UNMATCHED_ROUTE,
                &method,
                started,
                &request_id,
                error_page(
                    StatusCode::BAD_REQUEST,
                    &request_id,
                    "the path must not contain `.` or `..` segments",
                ),
            );
        }

        let host = request.uri().host().map(str::to_string).or_else(|| {
            request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        let path = request.uri().path().to_string();
        let (route, template, extra_headers) =
            match self.routes.lookup(host.as_deref(), &method, &path) {
                Lookup::Found(found) if depth > 0 || !found.target.is_private() => {
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
                    (found.target.clone(), found.template, extra)
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
                // A private route is as absent as no route, to a client.
                Lookup::NotFound | Lookup::Found(_) => {
                    return self.finish(
                        UNMATCHED_ROUTE,
                        &method,
                        started,
                        &request_id,
                        error_page(
                            StatusCode::NOT_FOUND,
                            &request_id,
                            "no route matches this request",
                        ),
                    );
                }
            };
        let metrics = route.metrics().clone();
        metrics.active_requests.inc();

        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|len| len > self.max_request_body) {
            metrics.active_requests.dec();
            tokio::spawn(drain(request.into_body()));
            return self.finish(
                template,
                &method,
                started,
                &request_id,
                too_large_page(&request_id, http1),
            );
        }

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

        let too_large = Arc::new(AtomicBool::new(false));
        let request =
            request.map(|body| LimitedBody::new(body, self.max_request_body, too_large.clone()));
        let result = route
            .handle(request, &request_id, too_large.clone(), depth)
            .await;
        metrics.active_requests.dec();

        let response = if too_large.load(Ordering::Acquire) {
            too_large_page(&request_id, http1)
        } else {
            match result {
                Ok(response) => response,
                Err(failure) => failure_page(failure, &request_id),
            }
        };
        let status = response.status().as_u16();
        metrics.observe_request(&method, status, started.elapsed().as_secs_f64());
        log_access(template, &method, &path, status, started, &request_id);
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
        self.metrics
            .observe_request(route, method, status, started.elapsed().as_secs_f64());
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

/// The route's component, composed with the components it links to if it has `links`, compiled
/// and pre-instantiated.
fn load_route_component(
    config: &Config,
    route: &RouteConfig,
    engine: &wasmtime::Engine,
    linker: &Linker<HostState>,
) -> anyhow::Result<(ProxyPre<HostState>, Origin)> {
    let path = config.resolve(&route.component);
    let cache_dir = config.cache_dir();
    let in_context = |e: anyhow::Error| e.context(format!("component {}", path.display()));
    if route.links.is_empty() {
        let (component, origin) = component::load(engine, &path, cache_dir.as_deref())?;
        let pre = pre_instantiate(linker, &component, None).map_err(in_context)?;
        return Ok((pre, origin));
    }
    let composition = linking::compose(&path, &route.links, &config.components, &|p| {
        config.resolve(p)
    })?;
    let providers: Vec<&str> = route.links.values().map(String::as_str).collect();
    let label = format!("{} linked to {}", path.display(), providers.join(", "));
    let (component, origin) =
        component::compile_cached(engine, &composition.bytes, &label, cache_dir.as_deref())?;
    let pre = pre_instantiate(linker, &component, Some(&composition)).map_err(in_context)?;
    Ok((pre, origin))
}

/// Pre-instantiates a component; the errors say which import or export is the problem.
fn pre_instantiate(
    linker: &Linker<HostState>,
    component: &Component,
    composition: Option<&linking::Composition>,
) -> anyhow::Result<ProxyPre<HostState>> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| unsupplied_import(component, linker.engine(), composition, &e))?;
    ProxyPre::new(pre).map_err(|e| {
        anyhow::anyhow!("it does not export `wasi:http/incoming-handler` (WASI 0.2), so it cannot serve HTTP: {e:#}")
    })
}

/// Names the import that neither the host nor a link supplies, which component imports it, and
/// how to supply it.
fn unsupplied_import(
    component: &Component,
    engine: &wasmtime::Engine,
    composition: Option<&linking::Composition>,
    error: &wasmtime::Error,
) -> anyhow::Error {
    let text = format!("{error:#}");
    let import = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .find(|name| text.contains(&format!("`{name}`")));
    let provided = "wasmgate provides WASI 0.2, wasi:http, wasi:keyvalue 0.2.0-draft and \
                    -draft2, wasi:logging 0.1.0-draft and wasi:config 0.2.0-draft";
    let Some(import) = import.filter(|_| text.contains("matching implementation was not found"))
    else {
        return anyhow::anyhow!(
            "it cannot be linked against what the gateway provides: {text} ({provided})"
        );
    };
    let importers = composition.map_or(&[][..], |c| c.importers_of(&import));
    let (who, add_to) = match importers {
        [] => ("it imports".to_string(), "the route".to_string()),
        [one] if one == linking::ROUTE_COMPONENT => {
            ("it imports".to_string(), "the route".to_string())
        }
        [one, ..] => (
            format!("{} imports", importers.join(" and ")),
            one.replace(linking::ROUTE_COMPONENT, "the route"),
        ),
    };
    anyhow::anyhow!(
        "{who} `{import}`, which neither the gateway nor a link supplies ({provided}; to link an \
         interface that another component exports, declare that one as [component.NAME] and \
         add `links = {{ \"{import}\" = \"NAME\" }}` to {add_to})"
    )
}

fn component_route(
    config: &Config,
    route: &RouteConfig,
    pre: ProxyPre<HostState>,
    keyvalue: Grants,
    self_handle: SelfHandle,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<ComponentRoute> {
    let outbound = Allowlist {
        rules: route
            .allowed_outbound_hosts
            .iter()
            .map(|rule| OutboundRule::parse(rule).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?,
        admin: config.admin.listen,
        private: if config.server.outbound_deny_private {
            PrivateAddresses::Deny
        } else {
            PrivateAddresses::Allow
        },
    };
    let max_memory = route
        .max_memory
        .unwrap_or(config.engine.max_instance_memory);
    let file = route.component.file_name().map_or_else(
        || route.component.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let providers: std::collections::BTreeSet<&String> = route.links.values().collect();
    let linked: String = providers.iter().map(|name| format!("+{name}")).collect();
    let settings = RouteSettings {
        name: route.path.as_str().into(),
        component: format!("{file}{linked}").into(),
        env: route
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        outbound: outbound.into(),
        timeout: route.timeout.unwrap_or(config.server.request_timeout),
        max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
        admission: Admission::new(
            route.max_concurrency,
            route.queue_size.unwrap_or(route.max_concurrency),
            route.queue_timeout,
        ),
        keyvalue,
        config: config_store::resolve(&route.config, |name| std::env::var(name).ok())?,
        private: route.private,
        self_handle,
        log_budget: LogBudget::new(
            config.logging.max_guest_messages,
            config.logging.max_guest_bytes,
        ),
    };
    let metrics = metrics.route(&route.path);
    Ok(ComponentRoute::new(settings, pre, metrics))
}

/// Adds how to build the example guests to a "file not found" for one of them.
fn with_build_hint(error: anyhow::Error, path: &std::path::Path) -> anyhow::Error {
    let missing = error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    });
    if missing && path.components().any(|c| c.as_os_str() == "wasm32-wasip2") {
        error.context(
            "the example guests are not built: run `rustup target add wasm32-wasip2` and then \
             `cargo build --release` in the guests/ directory (building wasmgate does this for you \
             once the target is installed)",
        )
    } else {
        error
    }
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

/// 413, closing an HTTP/1.x connection: the rest of the body was not read, so the connection
/// cannot carry another request, and a client must not pool it.
fn too_large_page(request_id: &str, http1: bool) -> Response<ResponseBody> {
    let mut response = error_page(
        StatusCode::PAYLOAD_TOO_LARGE,
        request_id,
        "the request body is too large",
    );
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

/// The size of the request's header section as HTTP/1.1 would send it.
fn header_bytes<B>(request: &Request<B>) -> u64 {
    request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

/// Whether a path has `.` or `..` segments, literally or percent-encoded.
fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
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
        let gateway = self.me.get().and_then(Weak::upgrade);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_any_spelling() {
        assert!(has_dot_segments("/static/../admin"));
        assert!(has_dot_segments("/a/%2E%2e/b"));
        assert!(has_dot_segments("/./x"));
        assert!(!has_dot_segments("/a.b/..c/x"));
    }
}
