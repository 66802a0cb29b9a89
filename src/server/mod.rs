//! The server: its listeners, speaking HTTP/1.1 and HTTP/2, and shutting down.
//!
//! Each listener (`[[listener]]`, or `[server] listen` alone) is cleartext or TLS
//! ([`listener`], `crate::tls`), optionally behind a PROXY protocol load balancer
//! ([`proxy_protocol`]). A cleartext port serves HTTP/1.1 (keep-alive) and HTTP/2 with prior
//! knowledge through hyper-util's auto connection builder; a TLS port speaks what ALPN chose. A timer is installed so `header_read_timeout` is enforced (hyper
//! ignores timeouts without one); `max_header_bytes` bounds hyper's header buffer (HTTP/1.1) and
//! header list (HTTP/2), and the gateway checks it again exactly. At `max_connections`, a new
//! client makes the longest-idle connection close; when every connection is busy, new clients
//! wait in the kernel's backlog.
//!
//! Each accepted connection spends its whole life on one worker thread, or runs on the shared
//! work-stealing runtime, as `[server] scheduler` says ([`workers`]).
//! Each connection's life, and the limits on idle, silent and slow peers, are in [`connection`].
//! A connection the gateway ends while the client may still be sending lingers ([`linger`]), so
//! an early answer such as a 413 reaches the client instead of being lost to a TCP reset.
//! At start the open-file limit is raised to what `max_connections` may need ([`file_limit`]).
//!
//! On SIGTERM or SIGINT: `/readyz` starts failing at once, the listeners keep accepting for
//! `shutdown_delay` and then close, open connections finish their in-flight requests (HTTP/1.1
//! closes after the current response, HTTP/2 sends GOAWAY) for up to `shutdown_grace`, and the
//! process exits 0. SIGHUP reloads the config (`crate::reload`).

pub mod connection;
pub mod file_limit;
pub mod linger;
pub mod listener;
pub mod proxy_protocol;
pub mod workers;

use crate::admin::{self, AdminState};
use crate::config::{Config, ServerConfig};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::{self, Reloader, SetLogLevel, Trigger};
use crate::runtime::loader::Process;
use crate::tls::TlsListeners;
use anyhow::Context;
use connection::{IdleLimits, Room};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use listener::{Builders, Connections, Listener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Builds the gateway from `config` (read from `path`) and serves until a shutdown signal.
///
/// The admin port opens first: `/livez` answers at once and `/readyz` turns 200 only once the
/// first generation is built, so a slow first compile does not fail liveness probes.
pub async fn run(config: Config, path: PathBuf, set_log_level: SetLogLevel) -> anyhow::Result<()> {
    let hangups = hangup_signals();
    match file_limit::raise(config.server.max_connections) {
        file_limit::FileLimit::Enough { limit } => {
            tracing::debug!(open_file_limit = limit, "open file limit")
        }
        file_limit::FileLimit::Short { limit, needed } => tracing::warn!(
            open_file_limit = limit,
            needed,
            max_connections = config.server.max_connections,
            "the open file limit is below what max_connections may need (each connection, as \
             many lingering sockets, and 1024 more): raise it (systemd LimitNOFILE=, ulimit -n) \
             or lower [server] max_connections"
        ),
    }
    crate::tls::certs::prefetch_system_roots();
    let metrics = Metrics::new();
    // Before the first generation: the connection pools it builds keep one pool per worker.
    let scheduler = workers::Scheduler::start(&config.server, &metrics)?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([admin] listen)", config.admin.listen))?;
    let admin_address = admin_listener.local_addr()?;
    let tls = TlsListeners::start(&config, metrics.clone())?;

    let process = {
        let mut config = config.clone();
        // Guests must not reach the admin port as bound, not as configured (port 0).
        config.admin.listen = admin_address;
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Process::start(&config, metrics))
            .await
            .context("starting the engine panicked")??
    };
    let gateway = Gateway::new(process);
    let ready = Arc::new(AtomicBool::new(false));
    let reloader: Arc<OnceLock<Arc<Reloader>>> = Arc::new(OnceLock::new());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_app = admin::router(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        gateway: gateway.clone(),
        reloader: reloader.clone(),
    });
    let admin_task = tokio::spawn(async move {
        let serve = axum::serve(admin_listener, admin_app).with_graceful_shutdown(async {
            let _ = admin_stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });

    {
        let config = config.clone();
        let gateway = gateway.clone();
        tokio::task::spawn_blocking(move || gateway.load(&config))
            .await
            .context("building the gateway panicked")??;
    }
    let reloads = Arc::new(Reloader::new(
        gateway.clone(),
        tls.clone(),
        path,
        config.clone(),
        set_log_level,
    ));
    let _ = reloader.set(reloads.clone());
    tokio::spawn(reload_on_hangup(hangups, reloads.clone()));
    tokio::spawn(reload::watch(reloads));
    tokio::spawn(tls.clone().watch());

    let mut listeners = Vec::new();
    for listener in config.listeners() {
        listeners.push(Listener::bind(&listener, &tls).await?);
    }
    let described = listeners
        .iter()
        .map(Listener::describe)
        .collect::<anyhow::Result<Vec<_>>>()?;
    ready.store(true, Ordering::Release);

    tracing::info!(
        routes = config.routes.len(),
        "serving HTTP on {} (admin endpoints on http://{admin_address})",
        described.join(", ")
    );
    let delay = config.server.shutdown_delay;
    let stop_accepting = {
        let ready = ready.clone();
        async move {
            shutdown_signal().await;
            // Fail readiness first, and keep serving new connections for `shutdown_delay`, so
            // load balancers take the gateway out of rotation before its port closes.
            ready.store(false, Ordering::Release);
            if !delay.is_zero() {
                tracing::info!(
                    delay_seconds = delay.as_secs_f64(),
                    "not ready; still accepting connections for shutdown_delay"
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    let tracing = gateway.process().tracing().cloned();
    let connections = serve_connections(
        listeners,
        gateway,
        metrics.clone(),
        &config.server,
        scheduler.clone(),
        stop_accepting,
    )
    .await;

    tracing::info!(
        grace_seconds = config.server.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections, waiting for in-flight requests"
    );
    if connections.shutdown(config.server.shutdown_grace).await {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    }
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    if let Some(tracing) = tracing {
        // The spans of the last requests are still queued: export them before exiting.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    // The workers run to here, as the shared runtime does: what connections left running
    // (a socket's lingering close) ends with the process, not with the last connection.
    drop(scheduler);
    Ok(())
}

/// The open connections, once the listener stopped accepting.
struct OpenConnections {
    shutdown: watch::Sender<bool>,
}

impl OpenConnections {
    /// Asks every connection to close (HTTP/2 GOAWAY; HTTP/1.1 after the response in flight)
    /// and waits for them, at most `grace`. Returns whether they all closed.
    async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(grace, self.shutdown.closed())
            .await
            .is_ok()
    }
}

/// Accepts and serves connections on every listener until `stop` resolves; returns the open
/// connections.
///
/// The listeners share `max_connections`: at the limit, a new client on any of them is
/// accepted and asks the longest-idle connection to make room (`connection::Room`); it waits
/// for a slot only when every connection is busy.
async fn serve_connections(
    listeners: Vec<Listener>,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    limits: &ServerConfig,
    scheduler: workers::Scheduler,
    stop: impl Future<Output = ()>,
) -> OpenConnections {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let lingering = linger::Budget::new(
        limits.max_connections,
        metrics.connections_lingering.clone(),
    );
    let connections = Arc::new(Connections {
        gateway,
        metrics,
        builders: connection_builders(limits),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        room: Room::default(),
        idle: IdleLimits {
            first_request: limits.header_read_timeout,
            between_requests: limits.idle_timeout,
        },
        send_timeout: limits.send_timeout,
        send_buffer: usize::try_from(limits.send_buffer).unwrap_or(usize::MAX),
        lingering,
        shutdown: shutdown_rx,
        scheduler,
    });
    let (stop_accepting, stopped) = watch::channel(false);
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(listener::accept_loop(
                listener,
                connections.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    drop(connections);
    stop.await;
    let _ = stop_accepting.send(true);
    for task in accepting {
        let _ = task.await;
    }
    OpenConnections { shutdown }
}

/// Streams a client may open and reset before the gateway accepted them (hyper's default).
const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the gateway may reset for a client's protocol errors before it closes the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The builders every connection is served with: one that detects the protocol (cleartext),
/// and one per protocol for TLS connections, whose protocol ALPN chose.
fn connection_builders(limits: &ServerConfig) -> Builders {
    let auto = connection_builder(limits);
    Builders {
        http1: auto.clone().http1_only(),
        http2: auto.clone().http2_only(),
        auto,
    }
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
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Pings find peers that vanished without closing; an unanswered ping closes the
        // connection.
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_interval)
        // Rapid reset (CVE-2023-44487): streams a client opens and resets before they are
        // served, and streams the gateway had to reset for protocol errors, are bounded.
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    builder
}

/// SIGHUP, listened for from the start: a SIGHUP's default action ends the process, so the
/// handler is installed before anything slow happens.
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

/// Reloads the config on every SIGHUP.
async fn reload_on_hangup(hangups: Option<tokio::signal::unix::Signal>, reloader: Arc<Reloader>) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        reloader.reload(Trigger::Signal).await;
    }
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
