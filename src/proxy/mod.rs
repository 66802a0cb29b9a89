//! Upstream routes: requests forwarded to HTTP services (`[upstream.NAME]`, a route's
//! `upstream = "NAME"`), so one gateway fronts components and existing services alike.
//!
//! Every upstream keeps its connections open between requests: HTTP/1.1 to `http://` targets on
//! the gateway's own pool (`pool`, no task per request), and on a pooled hyper-util client
//! HTTP/2 with `h2c`, HTTP/1.1 or h2 by ALPN to `https://` targets over rustls with the public
//! roots, the machine's and the upstream's own CA, and protocol switches; its connections
//! counted by `counted`. Bodies stream both ways; nothing is buffered. An upstream route
//! goes through the same stages as a component route (guards, the client's identity headers,
//! admission with the route's `max_concurrency` and queue, metrics, the access log); its
//! target stage ([`UpstreamRoute::forward`]):
//!
//! 1. picks a healthy target: round robin, the less busy of two (`least_request`), or by a
//!    hash of the client's address, a header or a cookie (`hash`, rendezvous hashing: while a
//!    target is healthy its keys stay on it, and a target that leaves moves only its own);
//! 2. rewrites the request: `strip_prefix` off the path, hop-by-hop headers removed
//!    (`headers`), `via` added, `Host` kept or set to the target's;
//! 3. sends it, with `connect_timeout` for the connection and `timeout` for the response
//!    headers: a connection that fails is 502, a target past its timeout 504, no healthy
//!    target 503 with `Retry-After`;
//! 4. on a `101 Switching Protocols` (WebSocket), carries bytes both ways between the two
//!    connections ([`tunnel`]);
//! 5. retries on another target when `retries` allows it (idempotent methods without a body
//!    only: a streamed body cannot be sent twice);
//! 6. counts the outcome per target: `eject_after` consecutive failures take a target out of
//!    rotation for `eject_for` (passive health checking).
//!
//! With `health`, each target is also checked actively ([`Upstream::watch_health`]): a GET to
//! its health path every `interval`; `unhealthy_after` failed checks in a row take it out of
//! rotation, `healthy_after` passed ones bring it back.
//!
//! A response cut off mid-body by the target ends the client's response with an error, so the
//! client sees an aborted response (HTTP/1.1 closes without the last chunk, HTTP/2 resets the
//! stream), never a complete-looking one.

mod counted;
pub mod headers;
mod pool;
mod tunnel;

use crate::body::{BoxError, ResponseBody};
use crate::config::upstream::{
    Balance, HashKey, HealthCheck, HostHeader, Retries, RetryOn, UpstreamConfig, target_uri,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::runtime::admission::Admission;
use crate::runtime::instance::Failure;
use crate::server::workers::PerWorker;
use anyhow::Context as _;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What an upstream route could not get from its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection to the target, or it broke before the response headers: 502.
    Unreachable,
    /// The target did not send its response headers within `timeout`: 504.
    TimedOut,
    /// Every target is ejected: 503 with `Retry-After`.
    NoHealthyTarget,
}

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The most retries a request gets (the config refuses more).
pub const MAX_RETRIES: u32 = 10;

/// One `[upstream.NAME]`, built: its targets, their health, and the pooled client.
pub struct Upstream {
    name: Arc<str>,
    /// The CA file's contents when the upstream was built: a reload that finds them changed
    /// builds the upstream again.
    ca_pem: Option<Vec<u8>>,
    targets: Vec<UpstreamTarget>,
    /// For `https://` and `h2c` targets: a pool for each worker thread, whose connections are on
    /// that worker's event loop (`crate::server::workers`).
    client: PerWorker<Client<HttpsConnector<counted::CountingConnector>, ProxyBody>>,
    /// Connects to `http://` targets for [`pool`], which serves them over HTTP/1.1 (none with
    /// `h2c`: those go through `client`).
    http1: Option<counted::CountingConnector>,
    /// HTTP/1.1 only: for requests that ask to switch protocols.
    upgrade_client: Client<HttpsConnector<counted::CountingConnector>, ProxyBody>,
    /// How long a tunnel may carry nothing either way before it is closed.
    tunnel_idle_timeout: Duration,
    balance: Balance,
    /// What `Balance::Hash` hashes by.
    hash_key: HashKey,
    timeout: Duration,
    host_header: HostHeader,
    retries: Retries,
    eject_after: u32,
    eject_for: Duration,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
    health: Option<HealthCheck>,
}

struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority`, where [`pool`] connects.
    address: Uri,
    /// Its idle keep-alive connections ([`pool`], `http://` targets).
    idle: Arc<pool::IdleConnections>,
    /// `http://10.0.0.5:8000`, the `target` label.
    label: Arc<str>,
    /// The target's own seed for rendezvous hashing (a hash of its label).
    seed: u64,
    /// Its `host:port` as a `Host` header (`host_header = "target"`).
    host: Option<HeaderValue>,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Whether `ejected_until` is set: requests look here, without the lock.
    ejected: AtomicBool,
    /// Out of rotation by the active health check.
    down: AtomicBool,
    /// Checks in a row that passed (while down) or failed (while up).
    streak: AtomicU32,
    healthy: prometheus::IntGauge,
    duration: prometheus::Histogram,
}

impl Upstream {
    /// The upstream's name (`[upstream.NAME]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds `config` (named `name`); `resolve` makes the CA path absolute.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        resolve: impl Fn(&Path) -> PathBuf,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Upstream> {
        let mut targets = Vec::with_capacity(config.targets.len());
        for text in &config.targets {
            let uri = target_uri(text)?;
            let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
            else {
                anyhow::bail!("target `{text}` needs a scheme and a host");
            };
            let label: Arc<str> = format!("{scheme}://{authority}").into();
            let healthy = metrics.upstream_target_healthy(name, &label);
            let duration = metrics.upstream_duration(name, &label);
            healthy.set(1);
            targets.push(UpstreamTarget {
                address: Uri::from_parts({
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(scheme.clone());
                    parts.authority = Some(authority.clone());
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                    parts
                })
                .with_context(|| format!("target `{text}`"))?,
                idle: Arc::default(),
                scheme,
                host: HeaderValue::from_str(authority.as_str()).ok(),
                authority,
                seed: crate::split::stable_hash(label.as_bytes()),
                label,
                in_flight: AtomicUsize::new(0),
                failures: AtomicU32::new(0),
                ejected_until: Mutex::new(None),
                ejected: AtomicBool::new(false),
                down: AtomicBool::new(false),
                streak: AtomicU32::new(0),
                duration,
                healthy,
            });
        }
        let tls = config.tls.as_ref();
        let ca_pem = Self::read_ca(config, &resolve);
        let ca = tls.and_then(|t| t.ca.as_ref()).map(|ca| resolve(ca));
        let roots = crate::tls::certs::client_roots(ca.as_deref(), "tls ca")?;
        let client_tls = crate::tls::certs::client_config(roots)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let counts = targets
            .iter()
            .map(|target| counted::TargetConnections {
                authority: target.authority.clone(),
                open: metrics.upstream_connections_open(name, &target.label),
                opened: metrics.upstream_connections_opened(name, &target.label),
            })
            .collect();
        let http = counted::CountingConnector::new(http, counts);
        let server_name = match tls.and_then(|t| t.server_name.clone()) {
            Some(server_name) => Some(
                rustls::pki_types::ServerName::try_from(server_name.clone())
                    .with_context(|| format!("tls server_name `{server_name}`"))?,
            ),
            None => None,
        };
        // Two connectors over the same TLS settings: one offering h2 and HTTP/1.1 by ALPN, one
        // HTTP/1.1 only, for requests that ask to switch protocols (WebSocket), which HTTP/2
        // cannot carry.
        let connector = |http1_only: bool| {
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client_tls.clone())
                .https_or_http();
            let builder = match &server_name {
                Some(name) => builder.with_server_name_resolver(
                    hyper_rustls::FixedServerNameResolver::new(name.clone()),
                ),
                None => builder,
            };
            if http1_only {
                builder.enable_http1().wrap_connector(http.clone())
            } else {
                builder.enable_all_versions().wrap_connector(http.clone())
            }
        };
        let client = PerWorker::new(|_| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .http2_only(config.h2c)
                .build(connector(false))
        });
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector(true));
        Ok(Upstream {
            name: name.into(),
            ca_pem,
            targets,
            client,
            http1: (!config.h2c).then_some(http),
            upgrade_client,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            balance: config.balance,
            hash_key: match &config.hash_key {
                Some(key) => HashKey::parse(key)?,
                None => HashKey::ClientIp,
            },
            timeout: config.timeout,
            host_header: config.host_header,
            retries: config.retries.clone(),
            eject_after: config.eject_after,
            eject_for: config.eject_for,
            next: AtomicUsize::new(0),
            metrics,
            health: config.health.clone(),
        })
    }

    /// The configured CA file's contents, if there is one and it can be read.
    fn read_ca(config: &UpstreamConfig, resolve: impl Fn(&Path) -> PathBuf) -> Option<Vec<u8>> {
        let ca = config.tls.as_ref()?.ca.as_ref()?;
        std::fs::read(resolve(ca)).ok()
    }

    /// Whether the files `config` names (its CA) hold what they held when this upstream was
    /// built, so a reload with the same `config` can keep it.
    pub fn same_files(&self, config: &UpstreamConfig, resolve: impl Fn(&Path) -> PathBuf) -> bool {
        Self::read_ca(config, resolve) == self.ca_pem
    }

    /// Starts the sweep of the upstream's idle connections ([`pool::IdleConnections::sweep`]):
    /// every [`pool::SWEEP_EVERY`], holding the upstream only while it sweeps, so it ends once
    /// the generation is gone.
    pub fn watch_idle(self: &Arc<Self>) {
        let (Some(_), Ok(runtime)) = (&self.http1, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let upstream = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(pool::SWEEP_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(upstream) = upstream.upgrade() else {
                    return;
                };
                for target in &upstream.targets {
                    target.idle.sweep();
                }
            }
        });
    }

    /// Starts the active health checks, if the upstream has them, on the current tokio
    /// runtime (none under `wasmgate check`, which serves nothing). The task holds the upstream
    /// only while it checks, so it ends once the generation is gone.
    pub fn watch_health(self: &Arc<Self>) {
        let (Some(health), Ok(runtime)) =
            (self.health.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let upstream = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(health.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(upstream) = upstream.upgrade() else {
                    return;
                };
                let checks = (0..upstream.targets.len()).map(|i| upstream.check(i, &health));
                futures::future::join_all(checks).await;
            }
        });
    }

    /// One health check of target `index`.
    async fn check(&self, index: usize, health: &HealthCheck) {
        let target = &self.targets[index];
        let uri = format!("{}://{}{}", target.scheme, target.authority, health.path);
        let Ok(request) = Request::get(uri).body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        ) else {
            return;
        };
        let passed = matches!(
            tokio::time::timeout(health.timeout, self.client.here().request(request)).await,
            Ok(Ok(response)) if response.status().is_success() || response.status().is_redirection()
        );
        let down = target.down.load(Ordering::Relaxed);
        if passed != down {
            // As it was: the streak of changes starts again.
            target.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = target.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if down {
            health.healthy_after
        } else {
            health.unhealthy_after
        };
        if streak >= needed {
            target.streak.store(0, Ordering::Relaxed);
            target.down.store(!down, Ordering::Relaxed);
            target.healthy.set(i64::from(down));
            if down {
                tracing::info!(upstream = %self.name, target = %target.label, "upstream target passes its health checks again");
            } else {
                tracing::warn!(upstream = %self.name, target = %target.label, failed = streak, "upstream target failed its health checks; out of rotation");
            }
        }
    }

    /// Whether target `index` may take requests now (an ejection that ran out counts as
    /// healthy: the next request tries it again).
    fn available(&self, index: usize) -> bool {
        let target = &self.targets[index];
        if target.down.load(Ordering::Relaxed) {
            return false;
        }
        if !target.ejected.load(Ordering::Acquire) {
            return true;
        }
        let mut ejected = target
            .ejected_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *ejected {
            Some(until) if Instant::now() < until => false,
            _ => {
                *ejected = None;
                target.ejected.store(false, Ordering::Release);
                target.healthy.set(1);
                true
            }
        }
    }

    /// What a request hashes to under `balance = "hash"` (`None`: not hashed, or no key: the
    /// request is balanced round robin).
    fn request_key(&self, headers: &http::HeaderMap, client: Option<IpAddr>) -> Option<u64> {
        if self.balance != Balance::Hash {
            return None;
        }
        match &self.hash_key {
            HashKey::ClientIp => {
                client.map(|ip| crate::split::stable_hash(ip.to_string().as_bytes()))
            }
            HashKey::Header(name) => headers
                .get(name)
                .map(|value| crate::split::stable_hash(value.as_bytes())),
            HashKey::Cookie(name) => crate::split::cookie(headers, name)
                .map(|value| crate::split::stable_hash(value.as_bytes())),
        }
    }

    /// A healthy target not in `tried`, by the upstream's balance (`key`: the request's hash).
    fn pick(&self, tried: &[usize], key: Option<u64>) -> Option<usize> {
        // Taken once: health can change while a request picks.
        let candidates: Vec<usize> = (0..self.targets.len())
            .filter(|i| !tried.contains(i) && self.available(*i))
            .collect();
        if let Some(key) = key {
            // Rendezvous hashing: the candidate that scores highest for this key.
            return candidates
                .into_iter()
                .max_by_key(|i| crate::split::scramble(key ^ self.targets[*i].seed));
        }
        let nth = |n: usize| candidates.get(n).copied();
        match (candidates.len(), self.balance) {
            (0, _) => None,
            (1, _) => nth(0),
            (n, Balance::RoundRobin | Balance::Hash) => {
                nth(self.next.fetch_add(1, Ordering::Relaxed) % n)
            }
            (n, Balance::LeastRequest) => {
                let (a, b) = (nth(fastrand_index(n))?, nth(fastrand_index(n))?);
                let load = |i: usize| self.targets[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// Records how a request to target `index` went, for passive health checking.
    fn record(&self, index: usize, failed: bool) {
        let target = &self.targets[index];
        if !failed {
            target.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = target.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.eject_after {
            target.failures.store(0, Ordering::Relaxed);
            *target
                .ejected_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.eject_for);
            target.ejected.store(true, Ordering::Release);
            target.healthy.set(0);
            tracing::warn!(
                upstream = %self.name,
                target = %target.label,
                failures,
                eject_for_seconds = self.eject_for.as_secs_f64(),
                "upstream target ejected after consecutive failures"
            );
        }
    }
}

/// One request in flight to a target, counted until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn count(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A uniformly random index below `n`, for the power of two choices.
fn fastrand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    (hasher.finish() % n as u64) as usize
}

/// A route that forwards to an upstream.
pub struct UpstreamRoute {
    pub upstream: Arc<Upstream>,
    pub strip_prefix: Option<String>,
    /// Shared with the same route of the previous generation when its limits did not change.
    pub admission: Arc<Admission>,
    pub metrics: Arc<RouteMetrics>,
}

/// How one try ended, before deciding on a retry.
enum Tried {
    Answered(Response<pool::PooledBody>),
    Failed(UpstreamFailure, Option<RetryOn>),
}

impl Tried {
    /// The `status` label of `wasmgate_upstream_requests_total`: the target's status, or
    /// `timeout` or `error` when there is none.
    fn status(&self) -> Result<StatusCode, &'static str> {
        match self {
            Tried::Answered(response) => Ok(response.status()),
            Tried::Failed(UpstreamFailure::TimedOut, _) => Err("timeout"),
            Tried::Failed(..) => Err("error"),
        }
    }

    /// The outcome as a reason `retries.on` may name (none for a success).
    fn retry_on(&self) -> Option<RetryOn> {
        match self {
            Tried::Answered(response) => match response.status() {
                StatusCode::BAD_GATEWAY => Some(RetryOn::BadGateway),
                StatusCode::SERVICE_UNAVAILABLE => Some(RetryOn::Unavailable),
                StatusCode::GATEWAY_TIMEOUT => Some(RetryOn::Timeout),
                _ => None,
            },
            Tried::Failed(_, retry) => *retry,
        }
    }

    /// Whether the try counts against the target (passive health checking): no answer, or a
    /// 502, 503 or 504.
    fn failed(&self) -> bool {
        matches!(self, Tried::Failed(..)) || self.retry_on().is_some()
    }
}

impl UpstreamRoute {
    /// The upstream's name, for `/routes` and `check`.
    pub fn describe(&self) -> String {
        format!("upstream {}", self.upstream.name)
    }

    /// Forwards `request`; see the module docs.
    pub async fn forward<B>(
        &self,
        request: Request<B>,
        request_id: &str,
        client: Option<IpAddr>,
    ) -> Result<Response<ResponseBody>, Failure>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let permit = self.admission.acquire().await.map_err(|reason| {
            self.metrics.rejected(reason);
            Failure::Rejected(reason)
        })?;
        let upstream = &self.upstream;
        let mut request = request;
        // A protocol switch (WebSocket): the client's side of the connection, once hyper has
        // sent our 101 (absent on HTTP/2, where no request asks for one).
        let upgrade = headers::requested_upgrade(request.headers(), request.version());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let key = upstream.request_key(request.headers(), client);
        let (mut parts, body) = request.into_parts();
        let path_and_query = self.rewrite_path(&parts.uri);
        headers::prepare_request(&mut parts.headers, parts.version, upgrade.as_ref());
        let client_host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(http::header::HOST).cloned(),
        };
        // Only a request that can be sent again may be retried.
        let replayable = is_idempotent(&parts.method) && body.is_end_stream();
        let attempts = 1 + if replayable {
            upstream.retries.attempts.min(MAX_RETRIES)
        } else {
            0
        };
        let mut body = Some(body);
        let mut tried = Vec::new();
        let mut last = UpstreamFailure::NoHealthyTarget;
        // A target's answer that asked for a retry (a 503, say): the client gets it if no later
        // try answers, rather than a 502 of the gateway's.
        let mut answered = None;
        for attempt in 0..attempts {
            let Some(index) = upstream.pick(&tried, key) else {
                break;
            };
            tried.push(index);
            let target = &upstream.targets[index];
            let outgoing_body: ProxyBody = match body.take() {
                Some(body) if attempt == 0 => body.map_err(Into::into).boxed_unsync(),
                _ => http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            };
            let mut outgoing = Request::new(outgoing_body);
            *outgoing.method_mut() = parts.method.clone();
            // The last try takes the headers; earlier ones copy them for the next.
            *outgoing.headers_mut() = if attempt + 1 == attempts {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            // Plain HTTP/1.1 goes on the gateway's own pool, in origin form; the rest on
            // hyper-util's client, which takes the target from the URI.
            let pooled = match (&upstream.http1, client_side.is_some()) {
                (Some(connector), false) if target.scheme == Scheme::HTTP => Some(connector),
                _ => None,
            };
            *outgoing.uri_mut() = match pooled {
                Some(_) => Uri::from(path_and_query.clone()),
                None => match Uri::builder()
                    .scheme(target.scheme.clone())
                    .authority(target.authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build()
                {
                    Ok(uri) => uri,
                    Err(_) => {
                        return Err(Failure::BadRequest("the path cannot be forwarded".into()));
                    }
                },
            };
            let host = match upstream.host_header {
                HostHeader::Target => target.host.clone(),
                // HTTP/1.0 without a `Host`: the pool sends the target's, as hyper-util's
                // client does.
                HostHeader::Client => client_host
                    .clone()
                    .or_else(|| pooled.and(target.host.clone())),
            };
            if let Some(host) = host {
                outgoing.headers_mut().insert(http::header::HOST, host);
            }

            let started = Instant::now();
            let sent = {
                // Counted for `least_request` until the headers are in, or the client is gone.
                let _in_flight = InFlight::count(&target.in_flight);
                let sending = async {
                    if let Some(connector) = pooled {
                        return pool::send(connector, &target.idle, &target.address, outgoing)
                            .await;
                    }
                    let client = match client_side {
                        Some(_) => &upstream.upgrade_client,
                        None => upstream.client.here(),
                    };
                    match client.request(outgoing).await {
                        Ok(response) => Ok(response.map(pool::PooledBody::unpooled)),
                        Err(error) if error.is_connect() => {
                            Err(pool::SendFailure::Connect(error.into()))
                        }
                        Err(error) => Err(pool::SendFailure::Send(error.into())),
                    }
                };
                tokio::time::timeout(upstream.timeout, sending).await
            };
            let tried_now = match sent {
                Err(_) => Tried::Failed(UpstreamFailure::TimedOut, Some(RetryOn::Timeout)),
                Ok(Err(error)) => {
                    tracing::debug!(upstream = %upstream.name, target = %target.label, request_id, error = %error, "upstream request failed");
                    let retry = matches!(error, pool::SendFailure::Connect(_))
                        .then_some(RetryOn::ConnectFailure);
                    Tried::Failed(UpstreamFailure::Unreachable, retry)
                }
                Ok(Ok(response)) => Tried::Answered(response),
            };
            let status = tried_now.status();
            upstream.metrics.upstream_request(
                &upstream.name,
                &target.label,
                match &status {
                    Ok(status) => status.as_str(),
                    Err(label) => label,
                },
                &target.duration,
                started.elapsed().as_secs_f64(),
            );
            let retry_on = tried_now.retry_on();
            upstream.record(index, tried_now.failed());
            let retry = retry_on.is_some_and(|on| upstream.retries.on.contains(&on))
                && attempt + 1 < attempts;
            match tried_now {
                Tried::Answered(mut response) if !retry => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if let (true, Some(client_side)) = (switching, client_side) {
                        let upstream_side = hyper::upgrade::on(&mut response);
                        let (mut response_parts, _) = response.into_parts();
                        headers::prepare_response(&mut response_parts.headers, true);
                        tokio::spawn(tunnel(
                            client_side,
                            upstream_side,
                            permit,
                            upstream.tunnel_idle_timeout,
                            upstream.metrics.upstream_tunnels(&upstream.name),
                            upstream.name.clone(),
                            target.label.clone(),
                        ));
                        return Ok(Response::from_parts(
                            response_parts,
                            ResponseBody::default(),
                        ));
                    }
                    return Ok(pass_on(response, permit));
                }
                Tried::Answered(response) => answered = Some(response),
                Tried::Failed(failure, _) => {
                    last = failure;
                    if !retry {
                        break;
                    }
                }
            }
        }
        match answered {
            Some(response) => Ok(pass_on(response, permit)),
            None => Err(Failure::Upstream(last)),
        }
    }

    /// The path and query the target gets: the client's, without `strip_prefix`.
    fn rewrite_path(&self, uri: &Uri) -> PathAndQuery {
        if self.strip_prefix.is_none()
            && let Some(path_and_query) = uri.path_and_query()
        {
            // As the client sent it (a cheap clone of shared bytes).
            return path_and_query.clone();
        }
        let path = uri.path();
        let path = match &self.strip_prefix {
            Some(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some("") => "/",
                Some(rest) => rest,
                None => path,
            },
            None => path,
        };
        let text = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_string(),
        };
        text.parse()
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A target's response on its way to the client: hop-by-hop headers removed, and the route's
/// admission permit held by the body until it is sent or dropped.
fn pass_on(
    response: Response<pool::PooledBody>,
    permit: crate::runtime::admission::Permit,
) -> Response<ResponseBody> {
    let (mut parts, incoming) = response.into_parts();
    headers::prepare_response(&mut parts.headers, false);
    let body = incoming.map_err(move |error| {
        let _held = &permit;
        BoxError::from(error)
    });
    Response::from_parts(parts, body.boxed_unsync())
}

/// Carries bytes both ways between a client and a target once both have switched protocols
/// (a WebSocket), until either side closes or nothing crosses for `idle_timeout`. The route's
/// admission permit is held as long: a route's `max_concurrency` bounds its open tunnels too.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    target: hyper::upgrade::OnUpgrade,
    permit: crate::runtime::admission::Permit,
    idle_timeout: Duration,
    open: prometheus::IntGauge,
    upstream: Arc<str>,
    label: Arc<str>,
) {
    let (client, target) = match tokio::try_join!(client, target) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(upstream = %upstream, target = %label, error = %error, "protocol switch failed");
            return;
        }
    };
    let _open = crate::metrics::GaugeGuard::inc(&open);
    let activity = tunnel::Activity::default();
    let mut client = activity.watch(hyper_util::rt::TokioIo::new(client));
    let mut target = activity.watch(hyper_util::rt::TokioIo::new(target));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
            Ok((sent, received)) => {
                tracing::debug!(upstream = %upstream, target = %label, sent, received, "tunnel closed");
            }
            Err(error) => {
                tracing::debug!(upstream = %upstream, target = %label, error = %error, "tunnel ended with an error");
            }
        },
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!(upstream = %upstream, target = %label, "tunnel closed: idle");
        }
    }
    drop(permit);
}
