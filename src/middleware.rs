//! Per-route middleware: the layers a route's requests pass on their way to its target, and its
//! rate limit.
//!
//! A route with `cors`, `headers` or `compression` gets a tower stack built once per generation
//! from tower-http's layers, outermost first:
//!
//! ```text
//! cors (preflights answered here) ─► request headers set ─► response headers set, removed
//!      ─► compression ─► the target (a component, an upstream, a split)
//! ```
//!
//! so CORS headers and `response_set` apply to every response, the gateway's error pages
//! included, and compression sees the target's response as the target sent it (already encoded
//! bodies, small ones and types that do not compress are left alone). A route without any of
//! them skips the stack entirely: its requests pay nothing for it.
//!
//! The rate limit ([`RateLimit`]) is a stage before the layers: a token bucket per key (the
//! client's address, or a header's value) from the governor crate, answered with 429 and
//! `Retry-After`. Buckets live in the gateway process: N replicas allow N times the rate.

use crate::body::{BoxError, ResponseBody};
use crate::config::RouteConfig;
use crate::config::middleware::{CorsConfig, RateKey, RateLimitConfig};
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};
use tower_http::set_header::{SetRequestHeaderLayer, SetResponseHeaderLayer};

/// The compression level of every encoding (gzip 1-9, br 0-11, zstd 1-22): see `stack`.
const COMPRESSION_LEVEL: i32 = 4;

/// A request's body inside a route's middleware stack.
pub type RouteBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// A route's target, or its target behind its middleware, as one service.
pub type RouteService = BoxCloneSyncService<Request<RouteBody>, Response<ResponseBody>, Infallible>;

/// Wraps `target` in the route's middleware; `None` when the route has none.
pub fn stack(route: &RouteConfig, target: RouteService) -> anyhow::Result<Option<RouteService>> {
    let headers = route.headers.parsed()?;
    if route.cors.is_none() && !route.compression && route.headers.is_empty() {
        return Ok(None);
    }
    let mut service = target;
    if route.compression {
        service = BoxCloneSyncService::new(
            CompressionLayer::new()
                .gzip(true)
                .br(true)
                .zstd(true)
                // Level 4 of each: fast enough for responses made per request (brotli's default,
                // 11, is for files compressed once), most of the size gain.
                .quality(tower_http::CompressionLevel::Precise(COMPRESSION_LEVEL))
                .layer(service)
                .map_response(|response| {
                    response.map(|body| body.map_err(BoxError::from).boxed_unsync())
                }),
        );
    }
    if !headers.response_remove.is_empty() {
        let remove = Arc::new(headers.response_remove);
        service = BoxCloneSyncService::new(service.map_response(move |mut response| {
            for name in remove.iter() {
                response.headers_mut().remove(name);
            }
            response
        }));
    }
    for (name, value) in headers.response_set {
        service = BoxCloneSyncService::new(
            SetResponseHeaderLayer::overriding(name, value).layer(service),
        );
    }
    for (name, value) in headers.request_set {
        service =
            BoxCloneSyncService::new(SetRequestHeaderLayer::overriding(name, value).layer(service));
    }
    if let Some(cors) = &route.cors {
        service = BoxCloneSyncService::new(cors_layer(cors).layer(service));
    }
    Ok(Some(service))
}

/// tower-http's CORS layer for `cors` (checked by the config: no wildcard with credentials, so
/// the layer's own assertions hold).
fn cors_layer(cors: &CorsConfig) -> CorsLayer {
    let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
    let origins = if wildcard(&cors.allow_origins) {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cors.allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let methods = match cors.allow_methods.as_deref() {
        Some(methods) if wildcard(methods) => AllowMethods::any(),
        Some(methods) => AllowMethods::list(
            methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok()),
        ),
        None => AllowMethods::list([http::Method::GET, http::Method::HEAD, http::Method::POST]),
    };
    let names = |list: &[String]| {
        list.iter()
            .filter_map(|h| http::HeaderName::try_from(h.as_str()).ok())
            .collect::<Vec<_>>()
    };
    let allow_headers = if wildcard(&cors.allow_headers) {
        AllowHeaders::any()
    } else {
        AllowHeaders::list(names(&cors.allow_headers))
    };
    let expose_headers = if wildcard(&cors.expose_headers) {
        ExposeHeaders::any()
    } else {
        ExposeHeaders::list(names(&cors.expose_headers))
    };
    let mut layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(methods)
        .allow_headers(allow_headers)
        .expose_headers(expose_headers)
        .allow_credentials(cors.allow_credentials);
    if let Some(max_age) = cors.max_age {
        layer = layer.max_age(max_age);
    }
    layer
}

/// Serves `request` through `service` (a stack from [`stack`]).
pub async fn call(service: &RouteService, request: Request<RouteBody>) -> Response<ResponseBody> {
    match service.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// A route's rate limit: a token bucket per client; see the module docs.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<RateKeyValue>,
    key: RateKey,
    /// `wasmgate_rate_limited_total{route}`.
    pub refused: prometheus::IntCounter,
}

/// What one client is, for its bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKeyValue {
    Address(IpAddr),
    Header(Bytes),
}

impl RateLimit {
    /// The limit `config` describes (checked by the config).
    pub fn new(config: &RateLimitConfig, refused: prometheus::IntCounter) -> anyhow::Result<Self> {
        let key = config.check()?;
        let per_second = NonZeroU32::new(config.per_second)
            .ok_or_else(|| anyhow::anyhow!("rate_limit: per_second must be at least 1"))?;
        let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(per_second);
        Ok(RateLimit {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            key,
            refused,
        })
    }

    /// Takes a token for the client (`address`, or the request's header); `Err` carries how long
    /// until the client may try again.
    pub fn admit(
        &self,
        headers: &http::HeaderMap,
        address: Option<IpAddr>,
    ) -> Result<(), Duration> {
        let key = match &self.key {
            RateKey::Header(name) => match headers.get(name) {
                Some(value) => RateKeyValue::Header(Bytes::copy_from_slice(value.as_bytes())),
                None => RateKeyValue::Address(client_block(address)),
            },
            RateKey::ClientIp => RateKeyValue::Address(client_block(address)),
        };
        self.limiter.check_key(&key).map_err(|not_until| {
            self.refused.inc();
            not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()))
        })
    }

    /// Forgets clients whose buckets are full again, so the map holds only recent clients.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Forgets idle clients every 10 seconds while the limit is in use (on the current tokio
    /// runtime; none under `wasmgate check`).
    pub fn watch(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limit = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(10));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(limit) = limit.upgrade() else {
                    return;
                };
                limit.forget_idle();
            }
        });
    }
}

/// The address a client counts as: an IPv4 address itself, an IPv6 address its /64 (one
/// subscriber usually holds a whole /64, and could otherwise take a new address per request).
fn client_block(address: Option<IpAddr>) -> IpAddr {
    match address {
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        Some(v4) => v4,
        None => IpAddr::from([0, 0, 0, 0]),
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_block(Some(a)), client_block(Some(b)));
        assert_ne!(client_block(Some(a)), client_block(Some(other)));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_block(Some(v4)), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_block(Some(mapped)), v4);
    }
}
