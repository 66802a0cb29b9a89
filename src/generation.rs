//! A generation: everything one config describes, built and ready to serve.
//!
//! The route table, each route's target and settings, the pre-instantiated components and the
//! request limits. A generation is immutable; the gateway serves the current one from an
//! `ArcSwap`, and each request holds the snapshot it started with until it ends, so a new
//! generation can replace the old one without touching requests in flight. What outlives
//! generations (the engine, stores, metrics) is in `runtime::loader::Process`.

use crate::client_identity::ClientPolicy;
use crate::config::UpstreamConfig;
use crate::metrics::RouteMetrics;
use crate::middleware::{RateLimit, RouteService};
use crate::proxy::{Upstream, UpstreamRoute};
use crate::router::RouteTable;
use crate::runtime::admission::Admission;
use crate::runtime::component::Origin;
use crate::runtime::instance::ComponentRoute;
use crate::split::Split;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One generation; see the module docs.
pub struct Generation {
    pub routes: RouteTable<Arc<Route>>,
    /// What each component was loaded from, for `check` and tests.
    pub components: Vec<(PathBuf, Origin)>,
    pub limits: RequestLimits,
    /// How the client's identity headers are set (`[server] trusted_proxies`, ...).
    pub client: ClientPolicy,
    /// Whether every request gets an access-log line (`[logging] access_log`).
    pub access_log: bool,
    /// The upstreams by name, with the config each was built from: the next generation keeps
    /// those whose config did not change (their pools and health carry over a reload).
    pub upstreams: HashMap<String, (UpstreamConfig, Arc<Upstream>)>,
}

/// The `[server]` limits every request of a generation is held to, whatever its route.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_request_body: u64,
    pub body_read_timeout: Duration,
    pub max_header_bytes: u64,
}

/// A route: what every kind of route shares (its metrics and name, whether clients may reach
/// it), and its target.
pub struct Route {
    /// The route's metric handles; `metrics.route` is its name in metrics, logs and `/routes`.
    pub metrics: Arc<RouteMetrics>,
    /// Reachable only through `http://self`.
    pub private: bool,
    /// The listeners the route serves on; `None`: all.
    pub listeners: Option<Vec<Arc<str>>>,
    pub target: Arc<Target>,
    /// The target behind the route's middleware (`cors`, `headers`, `compression`); `None`
    /// when it has none, and requests go to `target` directly.
    pub layers: Option<RouteService>,
    /// The route's `rate_limit`.
    pub rate_limit: Option<Arc<RateLimit>>,
}

impl Route {
    /// Whether the route serves requests that came on `listener` (`None`: not from a listener,
    /// such as the in-process benchmark).
    pub fn serves(&self, listener: Option<&str>) -> bool {
        match (&self.listeners, listener) {
            (Some(listeners), Some(listener)) => listeners.iter().any(|l| &**l == listener),
            _ => true,
        }
    }
}

/// What serves a route's requests.
pub enum Target {
    /// One backend.
    One(Backend),
    /// Weighted backends (`targets`); the route's admission state is the split's.
    Split {
        split: Split,
        admission: Arc<Admission>,
    },
}

/// A component or an upstream: what finally answers a request.
pub enum Backend {
    /// A fresh instance of a component per request.
    Component(Arc<ComponentRoute>),
    /// Forwarded to an HTTP service.
    Upstream(Arc<UpstreamRoute>),
}

impl Backend {
    /// What `/routes` and `check` show: the component (with `+NAME` per link) or the upstream.
    pub fn describe(&self) -> String {
        match self {
            Backend::Component(component) => match component.own_pool() {
                None => component.component().to_string(),
                Some(pool) => format!("{} (own pool: {pool})", component.component()),
            },
            Backend::Upstream(upstream) => upstream.describe(),
        }
    }
}

impl Target {
    /// The route's admission state (what a reload may carry over).
    pub fn admission(&self) -> &Arc<Admission> {
        match self {
            Target::One(Backend::Component(component)) => component.admission(),
            Target::One(Backend::Upstream(upstream)) => &upstream.admission,
            Target::Split { admission, .. } => admission,
        }
    }

    /// The backends, one or several.
    pub fn backends(&self) -> Box<dyn Iterator<Item = &Backend> + '_> {
        match self {
            Target::One(backend) => Box::new(std::iter::once(backend)),
            Target::Split { split, .. } => Box::new(split.backends()),
        }
    }
}

impl Generation {
    /// A generation with no routes: what a gateway serves before its first config is loaded.
    pub fn empty() -> Generation {
        Generation {
            routes: RouteTable::empty(),
            components: Vec::new(),
            limits: RequestLimits {
                max_request_body: 0,
                body_read_timeout: Duration::from_secs(1),
                max_header_bytes: 64 << 10,
            },
            client: ClientPolicy::default(),
            access_log: false,
            upstreams: HashMap::new(),
        }
    }

    /// One line per route, in config order: the route's name (host and path template), what
    /// serves it (the component, with `+NAME` for each component it links to) and, for
    /// private routes, `private`.
    pub fn route_lines(&self) -> Vec<String> {
        self.routes
            .targets()
            .map(|(_, route)| {
                let private = if route.private { " private" } else { "" };
                let target = match &*route.target {
                    Target::One(backend) => backend.describe(),
                    Target::Split { split, .. } => {
                        let parts: Vec<String> = split.backends().map(Backend::describe).collect();
                        format!("split {}", parts.join(" | "))
                    }
                };
                format!("{} {target}{private}", route.metrics.route)
            })
            .collect()
    }
}
