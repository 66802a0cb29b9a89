//! The listeners: accepting connections, speaking HTTP/1.1 and HTTP/2, and shutting down.
//!
//! One port serves HTTP/1.1 (keep-alive) and HTTP/2 with prior knowledge, through hyper-util's
//! auto connection builder. A timer is installed so `header_read_timeout` is enforced (hyper
//! ignores timeouts without one); `max_header_bytes` bounds hyper's header buffer (HTTP/1.1) and
//! header list (HTTP/2), and the gateway checks it again exactly. `max_connections` is enforced
//! by not accepting while that many are open, so excess clients wait in the kernel's backlog.
//!
//! On SIGTERM or SIGINT: `/readyz` starts failing, the listener closes, open connections finish
//! their in-flight requests (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY)
//! for up to `shutdown_grace`, and the process exits 0.

use crate::admin::{self, AdminState};
use crate::config::{Config, ServerConfig};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Builds the gateway from `config` and serves until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let gateway = {
        let config = config.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Gateway::build(&config, metrics))
            .await
            .context("building the gateway panicked")??
    };
    let gateway = Arc::new(gateway);
    gateway.attach_self();

    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ([server] listen)",
                config.server.listen
            )
        })?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([admin] listen)", config.admin.listen))?;
    let address = listener.local_addr()?;
    let admin_address = admin_listener.local_addr()?;

    let ready = Arc::new(AtomicBool::new(true));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_app = admin::router(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        routes: gateway.route_lines(),
    });
    let admin_task = tokio::spawn(async move {
        let serve = axum::serve(admin_listener, admin_app).with_graceful_shutdown(async {
            let _ = admin_stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });

    tracing::info!(
        routes = config.routes.len(),
        "serving HTTP on http://{address} (admin endpoints on http://{admin_address})"
    );
    let graceful = serve_connections(listener, gateway, &config.server, shutdown_signal()).await;

    ready.store(false, Ordering::Release);
    tracing::info!(
        grace_seconds = config.server.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections, waiting for in-flight requests"
    );
    match tokio::time::timeout(config.server.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    Ok(())
}

/// Accepts and serves connections until `shutdown` resolves; returns the open connections.
async fn serve_connections(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let builder = connection_builder(limits);
    let graceful = GracefulShutdown::new();
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = connection_slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful
}

fn connection_builder(limits: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let max_header_bytes = usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    builder
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
    }
}
