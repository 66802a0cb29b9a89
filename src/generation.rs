//! A generation: everything one config describes, built and ready to serve.
//!
//! The route table, each route's target and settings, the pre-instantiated components and the
//! request limits. A generation is immutable; the gateway serves the current one from an
//! `ArcSwap`, and each request holds the snapshot it started with until it ends, so a new
//! generation can replace the old one without touching requests in flight. What outlives
//! generations (the engine, stores, metrics) is in `runtime::loader::Process`.

use crate::client_identity::ClientPolicy;
use crate::metrics::RouteMetrics;
use crate::proxy::UpstreamRoute;
use crate::router::RouteTable;
use crate::runtime::component::Origin;
use crate::runtime::instance::ComponentRoute;
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
    pub target: Target,
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
    /// A fresh instance of a component per request.
    Component(Arc<ComponentRoute>),
    /// Forwarded to an HTTP service.
    Upstream(Arc<UpstreamRoute>),
}

impl Target {
    /// The route's admission state (what a reload may carry over).
    pub fn admission(&self) -> &Arc<crate::runtime::admission::Admission> {
        match self {
            Target::Component(component) => component.admission(),
            Target::Upstream(upstream) => &upstream.admission,
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
                let target = match &route.target {
                    Target::Component(component) => component.component().to_string(),
                    Target::Upstream(upstream) => upstream.describe(),
                };
                format!("{} {target}{private}", route.metrics.route)
            })
            .collect()
    }
}
