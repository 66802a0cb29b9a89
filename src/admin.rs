//! The admin listener: probes, metrics and the route list, on a port of its own.
//!
//! * `GET /livez`: 200 while the process runs.
//! * `GET /readyz`: 200 while the gateway accepts traffic, 503 once it is shutting down.
//! * `GET /metrics`: Prometheus text format.
//! * `GET /routes`: one line per route: its template, its component (`+NAME` for each component
//!   the route's `links` name) and `private` for private routes.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub routes: Vec<String>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn routes(State(state): State<AdminState>) -> String {
    state.routes.iter().map(|r| format!("{r}\n")).collect()
}
