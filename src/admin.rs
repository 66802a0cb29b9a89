//! The admin listener: probes, metrics and the route list, on a port of its own.
//!
//! * `GET /livez`: 200 while the process runs.
//! * `GET /readyz`: 200 while the gateway accepts traffic; 503 before its first config is
//!   loaded and once it is shutting down.
//! * `GET /metrics`: Prometheus text format.
//! * `GET /routes`: one line per route of the live generation: its name (host and path
//!   template), its component (`+NAME` for each component the route's `links` name) and
//!   `private` for private routes.
//! * `POST /reload`: reloads the config file (what `wasmgate reload` sends); 200 with the new
//!   generation's number, or 422 with the error while the old config keeps serving.

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::{Outcome, Reloader, Trigger};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub gateway: Arc<Gateway>,
    /// Set once the first generation is live.
    pub reloader: Arc<OnceLock<Arc<Reloader>>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .route("/reload", post(reload))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else if state.reloader.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn reload(State(state): State<AdminState>) -> impl IntoResponse {
    let Some(reloader) = state.reloader.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the first config is not loaded yet\n".to_string(),
        );
    };
    let outcome = reloader.reload(Trigger::Admin).await;
    let status = match outcome {
        Outcome::Applied { .. } => StatusCode::OK,
        Outcome::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, format!("{outcome}\n"))
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
    state
        .gateway
        .generation()
        .route_lines()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect()
}
