//! Where client connections run (`[server] scheduler`): each pinned to one worker thread with
//! an event loop of its own (`per_core`, the default), or on tokio's work-stealing runtime.
//!
//! On tokio's multi-thread runtime any thread may run any task, and a task woken by another
//! thread's I/O is often run there: a request crosses threads several times, and each crossing
//! wakes a parked thread (a futex or eventfd write, an inter-processor interrupt, a context
//! switch). nginx and Envoy avoid this by giving each worker its own event loop and its own
//! connections. `per_core` does the same within one process: one thread per core, each running
//! a single-threaded tokio runtime, and each accepted connection is handed to the worker that
//! serves the fewest connections. The connection, and everything it spawns (hyper's HTTP/2
//! streams, a guest's streaming body, the socket's lingering close), stays on that worker until
//! it ends; the upstream connections its requests open are kept for that worker's requests
//! (`crate::proxy::pool`), so a proxied request never wakes another thread either.
//!
//! The trade-off is that no worker can take over another's work. A guest that computes for
//! long delays the other connections of its worker, where the shared runtime would have moved
//! them to an idle thread. Guests yield at every epoch tick, so the delay is at most one tick
//! at a time, and the route's `timeout` still bounds the guest. `work_stealing` is for routes
//! whose guests compute for long.
//!
//! The accept loops, the admin port, reloads, health checks and the backends' own tasks stay on
//! the process's shared runtime under both schedulers. Measured gains are in docs/perf.md.

use crate::config::{Scheduler as SchedulerConfig, ServerConfig};
use crate::metrics::Metrics;
use prometheus::IntGauge;
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;

/// Where accepted connections are served.
pub enum Scheduler {
    /// On the process's multi-thread runtime, with work stealing.
    WorkStealing,
    /// On worker threads of their own.
    PerCore(Workers),
}

impl Scheduler {
    /// The scheduler `[server]` asks for, its workers started.
    pub fn start(server: &ServerConfig, metrics: &Metrics) -> anyhow::Result<Scheduler> {
        Ok(match server.scheduler {
            SchedulerConfig::WorkStealing => Scheduler::WorkStealing,
            SchedulerConfig::PerCore => {
                let count = match server.workers {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    count => count,
                };
                Scheduler::PerCore(Workers::start(count, metrics)?)
            }
        })
    }

    /// Serves `stream` with `serve` to its end: on the calling runtime, or on the worker that
    /// serves the fewest connections, its socket registered with that worker's event loop.
    pub fn spawn<S, F>(&self, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Scheduler::WorkStealing => {
                tokio::spawn(serve(stream));
            }
            Scheduler::PerCore(workers) => workers.spawn(stream, serve),
        }
    }
}

thread_local! {
    /// The worker this thread is, when it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many worker threads the process started, for the per-worker lists of
/// `crate::proxy::pool`.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// How many lists a per-worker structure keeps: one per worker started, and one for every other
/// thread.
pub fn shards() -> usize {
    STARTED.load(Ordering::Relaxed) + 1
}

/// The worker the calling thread is (`Some(0)` for the first), or `None` on any other thread.
pub fn current_worker() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Worker threads, each running a single-threaded tokio runtime until the workers are dropped.
pub struct Workers {
    workers: Vec<Worker>,
    /// Dropped with the workers: each thread's runtime then stops, dropping what it still runs.
    _stop: tokio::sync::watch::Sender<()>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// `wasmgate_worker_connections{worker}`: the connections it serves now.
    connections: IntGauge,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub(crate) fn start(count: usize, metrics: &Metrics) -> anyhow::Result<Workers> {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("wg-blocking-{index}"))
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start worker {index}'s runtime: {e}"))?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("wg-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(Some(index)));
                    runtime.block_on(async move {
                        // Resolves once the sender is dropped.
                        while stopped.changed().await.is_ok() {}
                    });
                })
                .map_err(|e| anyhow::anyhow!("cannot start worker thread {index}: {e}"))?;
            workers.push(Worker {
                handle,
                connections: metrics.worker_connections(index),
            });
        }
        STARTED.fetch_max(workers.len(), Ordering::Relaxed);
        Ok(Workers {
            workers,
            _stop: stop,
        })
    }

    /// The runtime of worker `index`, for tests that run work on a given worker.
    #[cfg(test)]
    pub(crate) fn handle(&self, index: usize) -> Option<&tokio::runtime::Handle> {
        self.workers.get(index).map(|worker| &worker.handle)
    }

    fn spawn<S, F>(&self, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|worker| worker.connections.get())
        else {
            tokio::spawn(serve(stream));
            return;
        };
        // Registered with the runtime that accepted it, the socket's readiness would be
        // delivered by that runtime's threads: it moves to the worker's event loop.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let counted = Counted::new(worker.connections.clone());
        worker.handle.spawn(async move {
            let _counted = counted;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "a worker cannot take a connection"),
            }
        });
    }
}

/// A connection counted on its worker's gauge from the hand-over until it ends, or until the
/// worker drops it unfinished.
struct Counted(IntGauge);

impl Counted {
    fn new(gauge: IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}
