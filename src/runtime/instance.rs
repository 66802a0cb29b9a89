//! One request, one instance: the per-request store, and running a guest's handler in it.
//!
//! For every request a [`ComponentRoute`]:
//!
//! 1. takes an admission permit ([`super::admission`]) and one of the process's
//!    `max_instances` slots ([`super::engine::InstanceSlots`]), or rejects the request;
//! 2. creates a `Store` with fresh [`HostState`]: WASI, `wasi:http` with the route's outbound
//!    policy, and a memory limiter;
//! 3. instantiates the pre-instantiated component (`ProxyPre`) from the pooling allocator;
//!    on a route with `reuse`, steps 2 and 3 are skipped when an idle instance of the route is
//!    waiting ([`super::reuse`]): its store is readied for the request instead;
//! 4. calls `wasi:http/incoming-handler.handle`, on the request's own task until the guest sets
//!    its response, then (if it is not finished) in a task of its own, so the guest can keep
//!    writing the response body after the headers went out.
//!
//! The store asks to be interrupted at every epoch tick and then yields to the executor, so a
//! guest that computes without pause cannot hold a worker thread; the route's timeout is a
//! deadline over the whole call (instantiation, handler, body), after which the call is dropped
//! and the instance with it. An instance goes back to the route's idle ones only when its
//! handler returned cleanly.
//!
//! The handler's task publishes how the guest ended ([`GuestEnd`]) *before* it drops the store.
//! That ordering is what lets the request side tell a guest that never answered (500), one that
//! ran out of time (504) and one whose body was cut off (the response is aborted).

use super::admission::Admission;
use super::admission::Permit;
use super::admission::RejectReason;
use super::engine::{InstanceSlot, InstanceSlots};
use super::p3::{self, P3Handler, P3Instances};
use super::response::{GuestBody, GuestEnd, Leftover};
use super::reuse::{IdleInstances, Kept, Warm};
use crate::body::{CutFlag, ResponseBody};
use crate::capabilities::blobstore::{self, host::BlobStoreView};
use crate::capabilities::config_store::{self, ConfigValues, ConfigView};
use crate::capabilities::keyvalue::{self, Grants, draft::KeyValueView};
use crate::capabilities::logging::{self, Backtrace, LogBudget, LoggingView, RequestLog};
use crate::capabilities::outbound_client::OutboundClient;
use crate::capabilities::outbound_http::{OutboundPolicy, SelfCalls, SelfHandle};
use crate::capabilities::wasi::guest_context;
use crate::config::pool::PoolKey;
use crate::config::reuse::ReuseConfig;
use crate::metrics::{GaugeGuard, RouteMetrics};
use crate::otel::RequestTrace;
use crate::runtime::loader::Pool;
use bytes::Bytes;
use futures::future::Either;
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Table elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The host side of one request's store.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    limiter: MemoryLimiter,
    keyvalue: keyvalue::RequestState,
    blobstore: blobstore::host::RequestState,
    /// The route's metric handles (and its name).
    metrics: Arc<RouteMetrics>,
    /// The request's log budget, shared with its stdout and stderr.
    log: RequestLog,
    config: ConfigValues,
}

impl HostState {
    fn logging(&mut self) -> LoggingView<'_> {
        LoggingView { log: &self.log }
    }

    fn config(&mut self) -> ConfigView<'_> {
        ConfigView {
            values: &self.config,
        }
    }

    fn keyvalue(&mut self) -> KeyValueView<'_> {
        KeyValueView {
            table: &mut self.table,
            state: &mut self.keyvalue,
            metrics: self.metrics.all(),
        }
    }
}

impl HostState {
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Lets go of what only the finished request needed: its trace, and the generation its
    /// self-calls keep (an idle instance holding it would keep a replaced generation alive, and
    /// with it the route holding the instance).
    fn end_request(&mut self) {
        self.outbound.self_calls = SelfCalls::default();
        self.outbound.trace = None;
    }

    /// Whether the memory limiter refused a growth: a trap that follows ran out of memory.
    pub(super) fn memory_refused(&self) -> bool {
        self.limiter.refused
    }

    /// Readies a reused instance's state for the next request: the request's id, trace and
    /// self-call depth for outgoing calls and log lines, a fresh log budget, and the memory
    /// limiter's memory of refusing cleared (the grants stay: the memory is still there).
    pub(super) fn begin_request(
        &mut self,
        request_id: &Arc<str>,
        self_calls: SelfCalls,
        trace: Option<RequestTrace>,
    ) {
        self.outbound.request_id = request_id.clone();
        self.outbound.self_calls = self_calls;
        self.outbound.trace = trace;
        self.log.renew(request_id.clone());
        self.limiter.refused = false;
    }

    fn blobstore(&mut self) -> BlobStoreView<'_> {
        BlobStoreView {
            table: &mut self.table,
            state: &mut self.blobstore,
            metrics: self.metrics.all(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps the linear memory of one request's instance at the route's `max_memory`: all of its
/// memories together, so linked components share the limit. Remembers refusing, so a trap that
/// follows is counted as running out of memory.
struct MemoryLimiter {
    max_memory: usize,
    /// Bytes of linear memory granted so far, over every memory of the store.
    granted: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    /// Called when a memory is created (from 0 to its initial size) and on every `memory.grow`.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Growth past the memory's own maximum (declared, or its pool slot) fails after this
        // returns, with no further call to undo a grant: refuse it here, uncounted, so that
        // failed attempts do not use up the route's budget.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let after = self.granted.saturating_add(desired.saturating_sub(current));
        let allowed = after <= self.max_memory;
        if allowed {
            self.granted = after;
        }
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The linker every component is instantiated against: WASI 0.2 and `wasi:http` 0.2 (and their
/// 0.3 versions with `[engine] wasi_p3`), both versions of `wasi:keyvalue`, `wasi:blobstore`, `wasi:logging` and `wasi:config`.
pub fn linker(engine: &Engine, wasi_p3: bool) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    if wasi_p3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    }
    keyvalue::draft::add_to_linker(&mut linker, HostState::keyvalue)?;
    keyvalue::draft2::add_to_linker(&mut linker, HostState::keyvalue)?;
    blobstore::host::add_to_linker(&mut linker, HostState::blobstore)?;
    logging::add_to_linker(&mut linker, HostState::logging)?;
    config_store::add_to_linker(&mut linker, HostState::config)?;
    Ok(linker)
}

/// How a guest failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    Trap,
    Timeout,
    Memory,
}

impl TrapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Trap => "trap",
            TrapKind::Timeout => "timeout",
            TrapKind::Memory => "memory",
        }
    }
}

/// Where in a request a guest's call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Creating the instance.
    Instantiate,
    /// Running its handler.
    Handle,
}

/// Why a request to a component route got no response from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Admission control turned it away (503).
    Rejected(RejectReason),
    /// The request could not be given to the guest (400).
    BadRequest(String),
    /// The guest ran out of time before it sent headers (504).
    TimedOut,
    /// The guest trapped, returned without a response, or sent an error (500).
    GuestFailed,
    /// An upstream route's targets did not answer (502, 503, 504).
    Upstream(crate::proxy::UpstreamFailure),
}

/// The settings of a component route that shape each request.
pub struct RouteSettings {
    pub name: Arc<str>,
    /// The component in log lines: its file name, and `+NAME` for each component the route's
    /// `links` name.
    pub component: Arc<str>,
    pub env: Vec<(String, String)>,
    pub outbound: Arc<OutboundClient>,
    pub timeout: Duration,
    pub max_memory: usize,
    /// Shared with the same route of the previous generation when its limits did not change.
    pub admission: Arc<Admission>,
    /// `[engine] max_instances`, shared by every route.
    pub instances: InstanceSlots,
    pub keyvalue: Grants,
    /// The blob store the route's guests keep their containers in.
    pub blobstore: Option<Arc<blobstore::Store>>,
    pub config: ConfigValues,
    /// A fresh copy for each request.
    pub log_budget: LogBudget,
    pub self_handle: SelfHandle,
    /// Serve more than one request per instance (off: a fresh instance per request).
    pub reuse: Option<ReuseConfig>,
    /// Requests one instance of a p3 component runs at once (1 for p2 components).
    pub max_concurrent_per_instance: usize,
    /// The route's pool of its own (`pool`), if it has one: kept alive by the routes using it.
    pub own_pool: Option<Arc<Pool>>,
}

/// A route's component, pre-instantiated, by the `wasi:http` world it exports.
#[derive(Clone)]
pub enum ComponentPre {
    /// `wasi:http/incoming-handler@0.2.x`: served here.
    P2(ProxyPre<HostState>),
    /// `wasi:http/handler@0.3.0`: served by [`super::p3`].
    P3(ServicePre<HostState>),
}

/// How a route's requests reach its instances.
enum Serve {
    P2(Arc<P2Instances>),
    P3(P3Handler),
}

/// A p2 route's instances: how they are made, and those kept between requests. Shared with
/// each request's guest task.
struct P2Instances {
    pre: ProxyPre<HostState>,
    /// For a route with `reuse`.
    idle: Option<Arc<IdleInstances>>,
}

/// A route served by a component.
pub struct ComponentRoute {
    settings: Arc<RouteSettings>,
    serve: Serve,
    metrics: Arc<RouteMetrics>,
}

/// A request's store and its slot of `max_instances`; the store is dropped first.
struct Lease {
    store: Store<HostState>,
    /// The instance, when a reused one serves the request; a fresh one is created in `store`.
    kept: Option<Kept>,
    slot: InstanceSlot,
}

impl ComponentRoute {
    pub fn new(
        settings: RouteSettings,
        pre: ComponentPre,
        metrics: Arc<RouteMetrics>,
    ) -> ComponentRoute {
        let settings = Arc::new(settings);
        let serve = match pre {
            ComponentPre::P2(pre) => {
                let idle = settings.reuse.map(|reuse| {
                    let idle = IdleInstances::new(pre.engine().clone(), reuse, metrics.clone());
                    settings.instances.idle().register(&idle);
                    idle.start_sweeper();
                    idle
                });
                Serve::P2(Arc::new(P2Instances { pre, idle }))
            }
            ComponentPre::P3(pre) => {
                Serve::P3(P3Instances::handler(pre, settings.clone(), metrics.clone()))
            }
        };
        ComponentRoute {
            settings,
            serve,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.metrics
    }

    /// The route's admission state.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.settings.admission
    }

    /// The component, as log lines name it.
    pub fn component(&self) -> &str {
        &self.settings.component
    }

    /// The settings of the route's pool of its own, if it has one (`config::pool`) and its
    /// component was loaded into that pool's engine: what `/routes` shows is what serves.
    pub fn own_pool(&self) -> Option<PoolKey> {
        self.settings
            .own_pool
            .as_deref()
            .filter(|pool| Engine::same(pool.engine(), self.pre_engine()))
            .map(Pool::key)
    }

    /// Runs the request through a fresh instance; see the module docs. `request_cut` is set by
    /// the request body if the gateway cut it off; the response is then aborted, not completed.
    /// `self_calls` says how deep in self-calls the request is (0 from outside) and which
    /// generation the component's own self-calls keep.
    pub async fn handle<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        scheme: Scheme,
        request_id: &Arc<str>,
        request_cut: CutFlag,
        self_calls: SelfCalls,
        trace: Option<RequestTrace>,
    ) -> Result<http::Response<ResponseBody>, Failure>
    where
        B: Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    {
        let permit = self.settings.admission.acquire().await.map_err(|reason| {
            self.metrics.rejected(reason);
            Failure::Rejected(reason)
        })?;
        let p2 = match &self.serve {
            Serve::P2(p2) => p2.clone(),
            Serve::P3(handler) => {
                let (end, end_rx) = watch::channel(GuestEnd::Running);
                let data = p3::RequestData {
                    request_id: request_id.clone(),
                    self_calls,
                    trace,
                    end,
                };
                return self
                    .handle_p3(handler, permit, request, scheme, data, end_rx, request_cut)
                    .await;
            }
        };
        let mut lease = self.lease(p2.idle.as_deref(), request_id, self_calls, trace.clone())?;
        let deadline = Instant::now() + self.settings.timeout;
        let (response_tx, response_rx) = oneshot::channel();
        let incoming = lease
            .store
            .data_mut()
            .http()
            .new_incoming_request(scheme, request);
        let incoming = match incoming {
            Ok(incoming) => incoming,
            Err(error) => {
                // Nothing reached the guest: a reused instance goes back as it came.
                p2.release(lease);
                return Err(Failure::BadRequest(format!("{error:#}")));
            }
        };
        let outparam = {
            let mut http = lease.store.data_mut().http();
            http.new_response_outparam(response_tx).map_err(|e| {
                tracing::error!(request_id = %request_id, error = %e, "cannot create the response resource");
                Failure::GuestFailed
            })?
        };

        let (end_tx, mut end_rx) = watch::channel(GuestEnd::Running);
        let route = self.clone();
        let task_request_id = request_id.clone();
        let guest = Box::pin(async move {
            let request_id = task_request_id;
            let _permit = permit;
            let run = async {
                let kept = match lease.kept.take() {
                    Some(kept) => kept,
                    None => {
                        route
                            .instantiate(&p2.pre, &mut lease.store, trace.as_ref())
                            .await?
                    }
                };
                let _alive = GaugeGuard::inc(&route.metrics.instances_active);
                kept.proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut lease.store, incoming, outparam)
                    .await
                    .map_err(|e| (e, Stage::Handle))?;
                Ok(kept)
            };
            let (end, kept) = match tokio::time::timeout_at(deadline, run).await {
                Ok(Ok(kept)) => match Leftover::find(lease.store.data_mut().table()) {
                    Leftover::Nothing => (GuestEnd::Returned, Some(kept)),
                    // Complete for the client, but the store keeps part of an exchange.
                    Leftover::HttpResourceHeld => (GuestEnd::Returned, None),
                    Leftover::ResponseUnfinished => {
                        tracing::warn!(
                            route = %route.settings.name, request_id = %request_id,
                            "component returned with its response unfinished; it is cut off"
                        );
                        (GuestEnd::ReturnedUnfinished, None)
                    }
                },
                Ok(Err((error, stage))) => {
                    let kind = if lease.store.data().limiter.refused {
                        TrapKind::Memory
                    } else {
                        TrapKind::Trap
                    };
                    (route.guest_failed(&request_id, &error, stage, kind), None)
                }
                Err(_) => {
                    route.metrics.trap(TrapKind::Timeout);
                    tracing::warn!(
                        route = %route.settings.name, request_id = %request_id,
                        timeout_ms = route.settings.timeout.as_millis() as u64,
                        "component ran past the route's timeout and was stopped"
                    );
                    (GuestEnd::TimedOut, None)
                }
            };
            // Publish the end before the store (and the guest's body sender with it) is dropped
            // or kept for the next request.
            let _ = end_tx.send(end);
            lease.kept = kept;
            p2.release(lease);
        });

        // Run the guest on this task until it sets its response: a guest that answers and
        // returns at once (most of them) costs no task spawn and no cross-thread wake-up. If it
        // still has work to do once the response is set (streaming its body), it goes on in a
        // task of its own while this one hands the response to hyper.
        let response = match futures::future::select(response_rx, guest).await {
            Either::Left((response, unfinished)) => {
                tokio::spawn(unfinished);
                response
            }
            Either::Right(((), response_rx)) => response_rx.await,
        };

        match response {
            // A guest that failed right after it set its response: nothing has reached the
            // client yet, so it can still get a proper 500 rather than an aborted response.
            Ok(Ok(_)) if end_rx.borrow().failed() => Err(Failure::GuestFailed),
            Ok(Ok(response)) => {
                Ok(response.map(|body| GuestBody::new(body, end_rx, request_cut).boxed_unsync()))
            }
            Ok(Err(code)) => {
                tracing::warn!(
                    route = %self.settings.name, request_id = %request_id, error = ?code,
                    "component answered with an error instead of a response"
                );
                Err(Failure::GuestFailed)
            }
            Err(_) => {
                // The guest let go of its response-outparam without setting it: wait for how it
                // ended (bounded by the deadline).
                let end = end_rx
                    .wait_for(|end| *end != GuestEnd::Running)
                    .await
                    .map(|end| *end)
                    .unwrap_or(GuestEnd::Trapped);
                match end {
                    GuestEnd::TimedOut => Err(Failure::TimedOut),
                    GuestEnd::PoolExhausted => {
                        self.metrics.rejected(RejectReason::PoolExhausted);
                        Err(Failure::Rejected(RejectReason::PoolExhausted))
                    }
                    GuestEnd::Returned => {
                        tracing::warn!(
                            route = %self.settings.name, request_id = %request_id,
                            "component returned without sending a response"
                        );
                        Err(Failure::GuestFailed)
                    }
                    _ => Err(Failure::GuestFailed),
                }
            }
        }
    }

    /// A store and slot for the request: a reused instance's, when the route keeps idle ones
    /// and has one, else a fresh store and a free slot (or the pool-exhaustion 503). Taken after
    /// the route's permit, so a request queued for the route holds no slot; the slot is given
    /// back after the store is dropped.
    fn lease(
        &self,
        idle: Option<&IdleInstances>,
        request_id: &Arc<str>,
        self_calls: SelfCalls,
        trace: Option<RequestTrace>,
    ) -> Result<Lease, Failure> {
        if let Some(Warm {
            mut store,
            kept,
            slot,
        }) = idle.and_then(IdleInstances::take)
        {
            store
                .data_mut()
                .begin_request(request_id, self_calls, trace);
            store.set_epoch_deadline(1);
            self.metrics.instance_reuses.inc();
            return Ok(Lease {
                store,
                kept: Some(kept),
                slot,
            });
        }
        let slot = self.settings.instances.try_take().ok_or_else(|| {
            self.metrics.rejected(RejectReason::PoolExhausted);
            Failure::Rejected(RejectReason::PoolExhausted)
        })?;
        Ok(Lease {
            store: new_store(
                self.pre_engine(),
                &self.settings,
                &self.metrics,
                request_id,
                self_calls,
                trace,
            ),
            kept: None,
            slot,
        })
    }

    /// Creates the request's instance in its fresh store.
    async fn instantiate(
        &self,
        pre: &ProxyPre<HostState>,
        store: &mut Store<HostState>,
        trace: Option<&RequestTrace>,
    ) -> Result<Kept, (wasmtime::Error, Stage)> {
        let started = std::time::Instant::now();
        let proxy = match pre.instantiate_async(&mut *store).await {
            Ok(proxy) => proxy,
            Err(error)
                if self
                    .settings
                    .instances
                    .reclaimed_after(&error, pre.engine()) =>
            {
                pre.instantiate_async(store)
                    .await
                    .map_err(|e| (e, Stage::Instantiate))?
            }
            Err(error) => return Err((error, Stage::Instantiate)),
        };
        let took = started.elapsed();
        self.metrics.instantiation.observe(took.as_secs_f64());
        if let Some(trace) = trace {
            let ended = std::time::SystemTime::now();
            let started = ended.checked_sub(took).unwrap_or(ended);
            trace.instantiated(&self.settings.component, started, ended);
        }
        Ok(Kept {
            proxy,
            served: 0,
            born: started,
        })
    }

    fn pre_engine(&self) -> &Engine {
        match &self.serve {
            Serve::P2(p2) => p2.pre.engine(),
            Serve::P3(handler) => handler.state().engine(),
        }
    }

    /// Serves a request with a p3 component's instances ([`super::p3`]); the permit is held
    /// until the response body ends.
    #[allow(clippy::too_many_arguments)]
    async fn handle_p3<B>(
        &self,
        handler: &P3Handler,
        permit: Permit,
        request: http::Request<B>,
        scheme: Scheme,
        data: p3::RequestData,
        end: watch::Receiver<GuestEnd>,
        request_cut: CutFlag,
    ) -> Result<http::Response<ResponseBody>, Failure>
    where
        B: Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    {
        let request_id = data.request_id.clone();
        let request = p3::with_absolute_uri(request, &scheme).map(BodyExt::boxed_unsync);
        let answer = tokio::time::timeout(self.settings.timeout, handler.handle(data, request));
        match answer.await {
            Ok(Ok(response)) => Ok(response.map(|body| {
                let body = body.map_frame(move |frame| {
                    let _held_until_the_body_ends = &permit;
                    frame
                });
                GuestBody::new(body, end, request_cut).boxed_unsync()
            })),
            Ok(Err(error)) => Err(self.p3_failure(&error, &request_id)),
            Err(_) => {
                self.metrics.trap(TrapKind::Timeout);
                Err(Failure::TimedOut)
            }
        }
    }

    /// What a failed p3 request gets, from the error `ProxyHandler` returned.
    fn p3_failure(&self, error: &wasmtime::Error, request_id: &str) -> Failure {
        if let Some(failed) = error.downcast_ref::<handler::InstantiationError<p3::RequestData>>() {
            if failed.error.downcast_ref::<p3::NoInstanceSlot>().is_some()
                || failed
                    .error
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
            {
                self.metrics.rejected(RejectReason::PoolExhausted);
                return Failure::Rejected(RejectReason::PoolExhausted);
            }
            return Failure::GuestFailed;
        }
        if error.downcast_ref::<handler::ExpirationError>().is_some() {
            self.metrics.trap(TrapKind::Timeout);
            return Failure::TimedOut;
        }
        if error.downcast_ref::<handler::TrapOrPanicError>().is_some() {
            // The worker logged and counted the trap as it dropped the instance.
            return Failure::GuestFailed;
        }
        tracing::warn!(
            route = %self.settings.name, request_id, error = %logging::error_summary(error),
            "component answered with an error instead of a response"
        );
        Failure::GuestFailed
    }

    /// Logs and counts a trap or a failed instantiation; returns how the guest ended.
    fn guest_failed(
        &self,
        request_id: &str,
        error: &wasmtime::Error,
        stage: Stage,
        kind: TrapKind,
    ) -> GuestEnd {
        let route = &self.settings.name;
        if stage == Stage::Instantiate
            && error
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
        {
            tracing::warn!(route = %route, request_id, error = %error, "no free instance slot in the pool");
            return GuestEnd::PoolExhausted;
        }
        self.metrics.trap(kind);
        let what = match stage {
            Stage::Instantiate => "component could not be instantiated",
            Stage::Handle => "component trapped",
        };
        // The backtrace at most once a minute per route: a guest that traps on every request
        // must not fill the log with it.
        match self.settings.log_budget.backtrace() {
            Backtrace::Log => tracing::error!(
                route = %route, request_id, kind = kind.as_str(), error = ?error, "{what}"
            ),
            Backtrace::Omit => tracing::error!(
                route = %route, request_id, kind = kind.as_str(),
                error = %logging::error_summary(error),
                "{what} (backtrace omitted: logged once a minute per route)"
            ),
        }
        match stage {
            Stage::Instantiate => GuestEnd::InstantiationFailed,
            Stage::Handle => GuestEnd::Trapped,
        }
    }
}

/// A store with fresh [`HostState`] for the route's instance, interrupted at every epoch tick.
pub(super) fn new_store(
    engine: &Engine,
    settings: &RouteSettings,
    metrics: &Arc<RouteMetrics>,
    request_id: &Arc<str>,
    self_calls: SelfCalls,
    trace: Option<RequestTrace>,
) -> Store<HostState> {
    let log = settings.log_budget.for_request(
        metrics.clone(),
        settings.component.clone(),
        request_id.clone(),
    );
    let state = HostState {
        wasi: guest_context(&settings.env, &log),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        outbound: OutboundPolicy {
            client: settings.outbound.clone(),
            route: settings.name.clone(),
            request_id: request_id.clone(),
            response_timeout: settings.timeout,
            metrics: metrics.clone(),
            self_handle: settings.self_handle.clone(),
            self_calls,
            trace,
        },
        limiter: MemoryLimiter {
            max_memory: settings.max_memory,
            granted: 0,
            refused: false,
        },
        keyvalue: keyvalue::RequestState::new(settings.keyvalue.clone()),
        blobstore: blobstore::host::RequestState::new(
            settings.blobstore.clone(),
            settings.max_memory as u64,
        ),
        metrics: metrics.clone(),
        log,
        config: settings.config.clone(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    // Yield at every epoch tick: fairness for busy guests, and a chance for the deadline. A
    // plain `Yield` wakes the task at once, so a single-threaded worker (`per_core`) would poll
    // the guest again without looking at its sockets and timers (tokio does that only every 61
    // polls while tasks are ready): a computing guest would stall every other connection of
    // its worker, and its own timeout. tokio's `yield_now` runs the task again only after the
    // runtime has looked at both.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    store
}

impl P2Instances {
    /// Ends a request's hold on its store: on a route with `reuse`, an instance that served it
    /// cleanly (`kept` is given back only then) goes back to the idle ones; any other is
    /// dropped, then its slot.
    fn release(&self, mut lease: Lease) {
        let (Some(idle), Some(kept)) = (&self.idle, lease.kept.take()) else {
            return;
        };
        if lease.store.data().memory_refused() {
            return;
        }
        lease.store.data_mut().end_request();
        idle.put(Warm {
            store: lease.store,
            kept,
            slot: lease.slot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn limiter(max_memory: usize) -> MemoryLimiter {
        MemoryLimiter {
            max_memory,
            granted: 0,
            refused: false,
        }
    }

    #[test]
    fn the_limit_covers_every_memory_of_the_store_together() {
        let mut limiter = limiter(10 * MIB);
        // Two memories created (0 -> initial), then grown.
        assert!(limiter.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(limiter.memory_growing(4 * MIB, 6 * MIB, None).unwrap());
        assert_eq!(limiter.granted, 10 * MIB);
        assert!(!limiter.refused);
        // Either memory growing further would exceed the shared 10 MiB.
        assert!(!limiter.memory_growing(4 * MIB, 5 * MIB, None).unwrap());
        assert!(limiter.refused);
        assert_eq!(limiter.granted, 10 * MIB);
    }

    #[test]
    fn growth_past_a_memory_maximum_is_refused_without_using_the_budget() {
        let mut limiter = limiter(10 * MIB);
        assert!(limiter.memory_growing(0, MIB, Some(2 * MIB)).unwrap());
        for _ in 0..100 {
            assert!(!limiter.memory_growing(MIB, 3 * MIB, Some(2 * MIB)).unwrap());
        }
        assert_eq!(limiter.granted, MIB);
        assert!(!limiter.refused, "the route's limit was not what refused");
        assert!(limiter.memory_growing(0, 9 * MIB, None).unwrap());
    }
}
