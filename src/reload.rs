//! Reloading the config without a restart: build a new generation, then swap it in.
//!
//! A reload is triggered by SIGHUP, by `POST /reload` on the admin port (what
//! `wasmgate reload` sends), or, with `[server] watch = true`, by a change to the config file or
//! any component file it names. Whatever the trigger, [`Reloader::reload`]:
//!
//! 1. reads and validates the config file again;
//! 2. builds a whole new generation on the running process, off the request path (components
//!    come from the compile cache unless they changed, so a reload that touches one route
//!    compiles one component);
//! 3. only if everything built, makes it the live generation. Requests that started on the old
//!    one finish on it; it is dropped when the last of them ends.
//!
//! Any error keeps the old generation serving and is logged and counted. Settings that a
//! running process cannot take (listen addresses, connection limits, the engine's pool, the
//! log format) are reported as needing a restart; the rest of the reload still applies, the log
//! level included (unless `RUST_LOG` set it).
//! Reloads run one at a time.

use crate::config::{Config, ListenerConfig};
use crate::gateway::Gateway;
use crate::runtime::oci;
use crate::tls::TlsListeners;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Replaces the process's log filter with a `[logging] level` value (set up by the binary,
/// which owns the log subscriber).
pub type SetLogLevel = Arc<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What asked for a reload (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    Watch,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin",
            Trigger::Watch => "file change",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new generation is live. `needs_restart` lists changed settings it could not apply.
    Applied {
        generation: u64,
        routes: usize,
        needs_restart: Vec<&'static str>,
    },
    /// Nothing changed: the old generation keeps serving. The error, with its causes.
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Applied {
                generation,
                routes,
                needs_restart,
            } => {
                write!(f, "reloaded: generation {generation}, {routes} routes")?;
                if !needs_restart.is_empty() {
                    write!(
                        f,
                        "; changed but not applied until a restart: {}",
                        needs_restart.join(", ")
                    )?;
                }
                Ok(())
            }
            Outcome::Failed(error) => {
                write!(f, "reload failed, still serving the old config: {error}")
            }
        }
    }
}

/// Reloads one gateway's config; see the module docs.
pub struct Reloader {
    gateway: Arc<Gateway>,
    /// The TLS listeners, whose certificates a reload replaces.
    tls: Arc<TlsListeners>,
    path: PathBuf,
    /// The config the process started with: what needs a restart is compared against it.
    started_with: Config,
    set_log_level: SetLogLevel,
    state: tokio::sync::Mutex<State>,
}

struct State {
    generation: u64,
    /// The config of the live generation.
    live: Config,
}

impl Reloader {
    /// A reloader for `gateway`, which serves `config` (read from `path`) as generation 1.
    pub fn new(
        gateway: Arc<Gateway>,
        tls: Arc<TlsListeners>,
        path: PathBuf,
        config: Config,
        set_log_level: SetLogLevel,
    ) -> Reloader {
        let metrics = gateway.process().metrics();
        metrics.config_generation.set(1);
        metrics.config_last_success.set(unix_now());
        Reloader {
            gateway,
            tls,
            path,
            started_with: config.clone(),
            set_log_level,
            state: tokio::sync::Mutex::new(State {
                generation: 1,
                live: config,
            }),
        }
    }

    /// Reads the config file again and, if it builds, serves it; see the module docs.
    pub async fn reload(&self, trigger: Trigger) -> Outcome {
        let mut state = self.state.lock().await;
        tracing::info!(trigger = trigger.as_str(), path = %self.path.display(), "reloading the config");
        let started = std::time::Instant::now();
        let gateway = self.gateway.clone();
        let tls = self.tls.clone();
        let path = self.path.clone();
        let built = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            // Certificates are built first and put in use only once the generation is.
            let certificates = tls.prepare(&config)?;
            let generation = gateway.load(&config)?;
            tls.apply(certificates, &config);
            anyhow::Ok((config, generation.routes.targets().count()))
        })
        .await;
        let metrics = self.gateway.process().metrics();
        let outcome = match built {
            Ok(Ok((config, routes))) => {
                state.generation += 1;
                let mut needs_restart = needs_restart(&self.started_with, &config);
                if config.logging.level != state.live.logging.level
                    && let Err(e) = (self.set_log_level)(&config.logging.level)
                {
                    tracing::warn!(error = %format!("{e:#}"), "the new [logging] level was not applied");
                    needs_restart.push("[logging] level");
                }
                state.live = config;
                metrics.config_generation.set(state.generation as i64);
                metrics.config_last_success.set(unix_now());
                Outcome::Applied {
                    generation: state.generation,
                    routes,
                    needs_restart,
                }
            }
            Ok(Err(error)) => Outcome::Failed(format!("{error:#}")),
            Err(panic) => Outcome::Failed(format!("building the new generation panicked: {panic}")),
        };
        metrics.reloaded(&outcome);
        let millis = started.elapsed().as_millis() as u64;
        match &outcome {
            Outcome::Applied { needs_restart, .. } if !needs_restart.is_empty() => {
                tracing::warn!(millis, "{outcome}")
            }
            Outcome::Applied { .. } => tracing::info!(millis, "{outcome}"),
            Outcome::Failed(_) => tracing::error!(millis, "{outcome}"),
        }
        outcome
    }

    /// The files a change to which triggers a reload with `[server] watch`: the config file and
    /// every component file the live config names.
    async fn watched_files(&self) -> Vec<PathBuf> {
        let state = self.state.lock().await;
        let live = &state.live;
        let mut files = vec![self.path.clone()];
        // Components from a registry are not files to watch: a reload re-resolves their tags.
        let components = live
            .routes
            .iter()
            .flat_map(|r| r.component_files())
            .chain(live.components.values().map(|c| c.path.as_path()))
            .filter(|c| oci::reference_of(c).is_none());
        files.extend(components.map(|c| live.resolve(c)));
        files.sort();
        files.dedup();
        files
    }

    /// Whether the live config asks for file watching.
    pub async fn watching(&self) -> bool {
        self.state.lock().await.live.server.watch
    }
}

/// How often watched files are looked at. A change is acted on once it has held still for one
/// look, so an editor's or a deployment's several writes make one reload.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads whenever a watched file changes, while the live config has `watch = true`.
pub async fn watch(reloader: Arc<Reloader>) {
    let mut seen = fingerprint(&reloader.watched_files().await);
    let mut pending: Option<Vec<Option<(SystemTime, u64)>>> = None;
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        if !reloader.watching().await {
            pending = None;
            seen = fingerprint(&reloader.watched_files().await);
            continue;
        }
        let now = fingerprint(&reloader.watched_files().await);
        if now == seen {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            // Changed since the last look: wait until it holds still.
            pending = Some(now);
            continue;
        }
        pending = None;
        reloader.reload(Trigger::Watch).await;
        seen = fingerprint(&reloader.watched_files().await);
    }
}

/// Modification time and size of each file (`None` for one that cannot be read).
pub(crate) fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|file| stat(file)).collect()
}

fn stat(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The settings a running process keeps from its start, and which of them `next` changes.
fn needs_restart(started: &Config, next: &Config) -> Vec<&'static str> {
    let (a, b) = (&started.server, &next.server);
    let mut changed = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    check("[server] listen", a.listen == b.listen);
    check("[tracing]", started.tracing == next.tracing);
    check(
        "[[listener]] (names, addresses, proxy_protocol, http_redirect, TLS on or off)",
        listeners_same(&started.listener_tables, &next.listener_tables),
    );
    check(
        "[server] max_connections",
        a.max_connections == b.max_connections,
    );
    check(
        "[server] max_concurrent_streams",
        a.max_concurrent_streams == b.max_concurrent_streams,
    );
    check(
        "[server] header_read_timeout",
        a.header_read_timeout == b.header_read_timeout,
    );
    check("[server] idle_timeout", a.idle_timeout == b.idle_timeout);
    check("[server] send_timeout", a.send_timeout == b.send_timeout);
    check("[server] send_buffer", a.send_buffer == b.send_buffer);
    check(
        "[server] scheduler and workers",
        a.scheduler == b.scheduler && a.workers == b.workers,
    );
    check(
        "[server] keepalive_interval",
        a.keepalive_interval == b.keepalive_interval,
    );
    check(
        "[server] shutdown_grace and shutdown_delay",
        a.shutdown_grace == b.shutdown_grace && a.shutdown_delay == b.shutdown_delay,
    );
    check("[admin]", started.admin == next.admin);
    check("[engine]", started.engine == next.engine);
    let (a, b) = (&started.logging, &next.logging);
    check("[logging] format", a.format == b.format);
    check("[logging] buffer_lines", a.buffer_lines == b.buffer_lines);
    changed
}

/// Whether two listener lists differ only in what a reload applies: TLS certificates and
/// their settings.
fn listeners_same(a: &[ListenerConfig], b: &[ListenerConfig]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.name == b.name
                && a.address == b.address
                && a.proxy_protocol == b.proxy_protocol
                && a.http_redirect == b.http_redirect
                && a.tls.is_some() == b.tls.is_some()
        })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_a_running_process_keeps_are_reported() {
        let parse = |text: &str| Config::parse(text, PathBuf::from("/etc/wasmgate")).unwrap();
        let started = parse("[server]\nlisten = \"127.0.0.1:8080\"\n");
        assert!(needs_restart(&started, &started).is_empty());
        let next = parse(
            "[server]\nlisten = \"127.0.0.1:8081\"\nmax_request_body = \"1MiB\"\n[engine]\nmax_instances = 5\n",
        );
        assert_eq!(
            needs_restart(&started, &next),
            vec!["[server] listen", "[engine]"]
        );
    }
}
