//! Components that export `wasi:http/handler@0.3.0` (WASI 0.3, "p3"), served through
//! wasmtime-wasi-http's [`ProxyHandler`], when `[engine] wasi_p3` is on (it turns on the
//! component model's concurrency in the engine, which costs every WASI 0.2 host call too).
//!
//! A p3 handler is an `async` export: one instance can run several requests at once, each a
//! task of the component model, while the others wait on I/O. `ProxyHandler` runs each instance
//! as a worker task that drives the store's event loop, hands it requests while it may take
//! more, and drops it when it is done. This module is the gateway's policy for those workers
//! ([`HandlerState`], [`WorkerState`], [`WorkerExpiration`]):
//!
//! - an instance takes requests while it has served fewer than the route's
//!   `reuse.max_requests` (1 without `reuse`: a fresh instance per request, as for p2) and runs
//!   fewer than `max_concurrent_per_instance` at once (1 unless the route says more);
//! - each instance holds one slot of `[engine] max_instances` from its creation until its
//!   store is dropped; with no slot free, the request gets the pool-exhaustion 503;
//! - a request that has no response within the route's `timeout` expires (504), and so does an
//!   instance still busy (or still writing a body) that long after its latest request started;
//!   an idle instance goes after `reuse.idle_timeout`;
//! - the store is the same one p2 requests get ([`super::instance::new_store`]): WASI, the
//!   outbound policy, the memory limiter, the capabilities; each request sets its id, trace
//!   and self-call depth in it as it starts, so with several requests at once in one instance,
//!   log lines and outgoing calls carry the id of the latest one.
//!
//! wasmtime marks its p3 support experimental; so is this path. The admission permit is taken
//! by the caller ([`super::instance::ComponentRoute::handle`]) and held until the response body
//! ends.

use super::engine::InstanceSlot;
use super::instance::{HostState, RouteSettings, TrapKind, new_store};
use super::response::GuestEnd;
use crate::capabilities::logging::{self, Backtrace};
use crate::capabilities::outbound_http::SelfCalls;
use crate::metrics::RouteMetrics;
use crate::otel::RequestTrace;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    self, HandlerState, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

/// What each request brings to the instance that takes it.
pub struct RequestData {
    pub request_id: Arc<str>,
    pub self_calls: SelfCalls,
    pub trace: Option<RequestTrace>,
    /// Where the instance says how it ended, before its store (and the request's response body
    /// with it) is dropped: wasmtime ends a p3 body cleanly when the store goes, so the
    /// response's [`super::response::GuestBody`] reads this to cut off a body whose guest
    /// trapped or ran out of time.
    pub end: watch::Sender<GuestEnd>,
}

/// Every slot of `[engine] max_instances` was taken when a request needed a new instance.
#[derive(Debug, thiserror::Error)]
#[error("no free instance slot (`[engine] max_instances`)")]
pub struct NoInstanceSlot;

/// One p3 route's instances: how they are made and how long they live.
pub struct P3Instances {
    pre: ServicePre<HostState>,
    settings: Arc<RouteSettings>,
    metrics: Arc<RouteMetrics>,
}

/// The route's workers, each an instance with its store.
pub type P3Handler = handler::ProxyHandler<P3Instances>;

impl P3Instances {
    pub fn handler(
        pre: ServicePre<HostState>,
        settings: Arc<RouteSettings>,
        metrics: Arc<RouteMetrics>,
    ) -> P3Handler {
        handler::ProxyHandler::new(P3Instances {
            pre,
            settings,
            metrics,
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        self.pre.engine()
    }

    fn limits(&self) -> Limits {
        let reuse = self.settings.reuse;
        Limits {
            max_requests: reuse.map_or(1, |reuse| reuse.max_requests as usize),
            max_concurrent: self.settings.max_concurrent_per_instance,
            max_age: reuse.map_or(Duration::MAX, |reuse| reuse.max_age),
            timeout: self.settings.timeout,
            idle_timeout: reuse.map_or(Duration::ZERO, |reuse| reuse.idle_timeout),
        }
    }

    /// Creates the instance; when the pool's own slots ran out while instances idle for reuse
    /// hold some, one of those is dropped and creating it is tried once more.
    async fn create(&self, store: &mut Store<HostState>) -> wasmtime::Result<Service> {
        match self.pre.instantiate_async(&mut *store).await {
            Err(error)
                if self
                    .settings
                    .instances
                    .reclaimed_after(&error, self.pre.engine()) =>
            {
                self.pre.instantiate_async(store).await
            }
            created => created,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_requests: usize,
    max_concurrent: usize,
    /// How long after its creation an instance stops taking requests.
    max_age: Duration,
    timeout: Duration,
    idle_timeout: Duration,
}

impl HandlerState for P3Instances {
    type StoreData = HostState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<handler::Instance<HostState, Expiry, Worker>> {
        let Some(slot) = self.settings.instances.try_take() else {
            return Err(NoInstanceSlot.into());
        };
        let mut store = new_store(
            self.pre.engine(),
            &self.settings,
            &self.metrics,
            &Arc::from(""),
            SelfCalls::default(),
            None,
        );
        let started = Instant::now();
        let instantiated =
            tokio::time::timeout(self.settings.timeout, self.create(&mut store)).await;
        let proxy = match instantiated {
            Ok(Ok(service)) => service,
            // The caller answers 503 and counts the rejection.
            Ok(Err(error))
                if error
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                return Err(error);
            }
            Ok(Err(error)) => {
                self.metrics.trap(TrapKind::Trap);
                tracing::error!(
                    route = %self.settings.name, error = %logging::error_summary(&error),
                    "component could not be instantiated"
                );
                return Err(error);
            }
            // The request waiting for it times out at the same moment, and is the one counted.
            Err(_) => {
                return Err(wasmtime::format_err!(
                    "instantiation ran past the route's timeout"
                ));
            }
        };
        self.metrics
            .instantiation
            .observe(started.elapsed().as_secs_f64());
        self.metrics.instances_active.inc();
        let limits = self.limits();
        let expired = Arc::new(AtomicBool::new(false));
        Ok(handler::Instance {
            store,
            proxy: handler::Proxy::P3(proxy),
            view: <HostState as WasiHttpView>::http,
            expiration: Expiry::new(limits, expired.clone()),
            state: Worker {
                limits,
                settings: self.settings.clone(),
                metrics: self.metrics.clone(),
                born: Instant::now(),
                started: AtomicUsize::new(0),
                ends: Mutex::new(Vec::new()),
                expired,
                _slot: slot,
            },
        })
    }
}

/// One instance's state, as its worker sees it.
pub struct Worker {
    limits: Limits,
    settings: Arc<RouteSettings>,
    metrics: Arc<RouteMetrics>,
    born: Instant,
    /// Requests started in this instance so far.
    started: AtomicUsize,
    /// The ends of the requests whose responses may still be streaming.
    ends: Mutex<Vec<watch::Sender<GuestEnd>>>,
    /// Set by [`Expiry`] when it ends the worker: a trap that follows is a timeout.
    expired: Arc<AtomicBool>,
    /// Given back when the worker goes, after its store was dropped (in [`WorkerState::drop`]).
    _slot: InstanceSlot,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = RequestData;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.limits.max_requests || self.born.elapsed() >= self.limits.max_age {
            ShouldAccept::Never
        } else if concurrent >= self.limits.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, HostState>,
        data: RequestData,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let RequestData {
            request_id,
            self_calls,
            trace,
            end,
        } = data;
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        ends.retain(|end| !end.is_closed());
        ends.push(end);
        drop(ends);
        store
            .data_mut()
            .begin_request(&request_id, self_calls, trace);
        if self.started.fetch_add(1, Ordering::Relaxed) > 0 {
            self.metrics.instance_reuses.inc();
        }
        Box::pin(tokio::time::sleep(self.limits.timeout))
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        let refused = store.data().memory_refused();
        let kind = match &result {
            Ok(()) => None,
            Err(_) if self.expired.load(Ordering::Relaxed) => Some(TrapKind::Timeout),
            Err(_) if refused => Some(TrapKind::Memory),
            Err(_) => Some(TrapKind::Trap),
        };
        // Said before the store (and the bodies it feeds) goes; see `RequestData::end`.
        let end = match kind {
            None => GuestEnd::Returned,
            Some(TrapKind::Timeout) => GuestEnd::TimedOut,
            Some(_) => GuestEnd::Trapped,
        };
        for sender in self
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = sender.send(end);
        }
        drop(store);
        self.metrics.instances_active.dec();
        let (Err(error), Some(kind)) = (result, kind) else {
            return;
        };
        // Timeouts are counted per request, by the request that got the 504.
        if kind != TrapKind::Timeout {
            self.metrics.trap(kind);
        }
        let route = &self.settings.name;
        match (kind, self.settings.log_budget.backtrace()) {
            (TrapKind::Timeout, _) => tracing::warn!(
                route = %route,
                "component instance ran past the route's timeout and was stopped"
            ),
            (_, Backtrace::Log) => tracing::error!(
                route = %route, kind = kind.as_str(), error = ?error, "component trapped"
            ),
            (_, Backtrace::Omit) => tracing::error!(
                route = %route, kind = kind.as_str(), error = %logging::error_summary(&error),
                "component trapped (backtrace omitted: logged once a minute per route)"
            ),
        }
    }
}

/// When a worker's instance is dropped: [`WorkerExpiration`] over the route's limits.
pub struct Expiry {
    limits: Limits,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Shared with the worker's [`Worker`].
    expired: Arc<AtomicBool>,
}

impl Expiry {
    fn new(limits: Limits, expired: Arc<AtomicBool>) -> Expiry {
        Expiry {
            limits,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            expired,
        }
    }
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => self.limits.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.limits.timeout,
        };
        let deadline = tokio::time::Instant::from_std(start + limit);
        if tokio::time::Instant::now() < deadline {
            self.timer.as_mut().reset(deadline);
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        if status != WorkerStatus::Idle {
            self.expired.store(true, Ordering::Relaxed);
        }
        Poll::Ready(())
    }
}

/// The request with an absolute URI (`scheme://host/path`), which is where a p3 guest reads
/// its scheme and authority from (a p2 guest is given the scheme, and reads the authority from
/// `Host`). Without a usable `Host` the URI stays as it came.
pub fn with_absolute_uri<B>(mut request: http::Request<B>, scheme: &Scheme) -> http::Request<B> {
    let scheme = match scheme {
        Scheme::Http => http::uri::Scheme::HTTP,
        Scheme::Https => http::uri::Scheme::HTTPS,
        Scheme::Other(other) => match other.parse() {
            Ok(scheme) => scheme,
            Err(_) => return request,
        },
    };
    let authority = request.uri().authority().cloned().or_else(|| {
        let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
        host.parse::<http::uri::Authority>().ok()
    });
    let Some(authority) = authority else {
        return request;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_of(uri: &str, host: Option<&str>, scheme: Scheme) -> String {
        let mut request = http::Request::get(uri);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        with_absolute_uri(request.body(()).unwrap(), &scheme)
            .uri()
            .to_string()
    }

    #[test]
    fn the_uri_gets_the_listener_s_scheme_and_the_host_header() {
        assert_eq!(
            uri_of("/a?b=1", Some("example.com:8080"), Scheme::Https),
            "https://example.com:8080/a?b=1"
        );
        assert_eq!(
            uri_of("/", Some("example.com"), Scheme::Http),
            "http://example.com/"
        );
        // HTTP/2 requests carry their authority in the URI already.
        assert_eq!(
            uri_of("http://h2.example/x", None, Scheme::Http),
            "http://h2.example/x"
        );
        // Nothing to build an authority from: left as it came.
        assert_eq!(uri_of("/x", None, Scheme::Http), "/x");
        assert_eq!(uri_of("/x", Some("bad host"), Scheme::Http), "/x");
    }
}
