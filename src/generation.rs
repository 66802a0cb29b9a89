//! A generation: everything one config describes, built and ready to serve.
//!
//! The route table, each route's target and settings, the pre-instantiated components and the
//! request limits. A generation is immutable; the gateway serves the current one from an
//! `ArcSwap`, and each request holds the snapshot it started with until it ends, so a new
//! generation can replace the old one without touching requests in flight. What outlives
//! generations (the engine, stores, metrics) is in `runtime::loader::Process`.

use crate::metrics::RouteMetrics;
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
    pub target: Target,
}

/// What serves a route's requests.
pub enum Target {
    /// A fresh instance of a component per request.
    Component(Arc<ComponentRoute>),
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
                    Target::Component(component) => component.component(),
                };
                format!("{} {target}{private}", route.metrics.route)
            })
            .collect()
    }
}
