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
//! it ends. The connections a request opens are kept for the requests of the worker that opened
//! them ([`PerWorker`]: an upstream route's pool, `crate::proxy::pool`, and the HTTP clients of
//! `https://` and `h2c` targets and of guests' outgoing requests), so reusing one does not wake
//! another thread either.
//!
//! The trade-offs, both those of nginx's and Envoy's workers:
//! - No worker takes over another's work. A guest that computes for long shares its worker with
//!   that worker's other connections: it yields at every epoch tick, and the worker then serves
//!   the others' I/O and timers before resuming it (`runtime::instance`), so they are slowed,
//!   not stopped. `work_stealing` would move them to an idle thread.
//! - Connections are balanced, not requests: all the streams of one HTTP/2 connection run on
//!   its worker. Behind a proxy that multiplexes everything onto fewer connections than there
//!   are cores, `work_stealing` uses every core and `per_core` does not.
//!
//! The accept loops, the admin port, reloads, health checks, and the keyvalue and NATS
//! connections ([`spawn_shared`]) stay on the process's shared runtime under both schedulers.
//! Exceptions, shared by every worker but run by the one that made them: the S3 client's
//! connections, a Redis connection that redis-rs made again after it dropped (it reconnects
//! from the command that found it broken), and WASI 0.3 routes' instances (wasmtime-wasi-http's
//! `ProxyHandler` spawns them). The measurements are in docs/perf.md.

use crate::config::{Scheduler as SchedulerConfig, ServerConfig};
use crate::metrics::Metrics;
use anyhow::Context as _;
use prometheus::IntGauge;
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;

/// Where accepted connections are served. A clone shares the same workers, which stop when
/// the last clone is dropped.
#[derive(Clone)]
pub enum Scheduler {
    /// On the process's multi-thread runtime, with work stealing.
    WorkStealing,
    /// On worker threads of their own.
    PerCore(Arc<Workers>),
}

impl Scheduler {
    /// The scheduler `[server]` asks for, its workers started. Called on the process's shared
    /// runtime, which [`spawn_shared`] then spawns on.
    pub fn start(server: &ServerConfig, metrics: &Metrics) -> anyhow::Result<Scheduler> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = SHARED.set(runtime);
        }
        Ok(match server.scheduler {
            SchedulerConfig::WorkStealing => Scheduler::WorkStealing,
            SchedulerConfig::PerCore => {
                let count = match server.workers {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    count => count,
                };
                Scheduler::PerCore(Arc::new(Workers::start(count, metrics)?))
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

/// The process's shared runtime, once the scheduler has started.
static SHARED: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Spawns `task` on the process's shared runtime rather than on the calling worker: for tasks
/// every worker uses, such as a backend's connection, which would otherwise live on (and wait
/// for) the first worker that needed it. Before the scheduler starts, and in tests, it spawns
/// on the calling runtime.
pub fn spawn_shared<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match SHARED.get() {
        Some(runtime) => runtime.spawn(task),
        None => tokio::spawn(task),
    }
}

/// One `T` for each worker thread and one for every other thread, each used by its own
/// thread: for what holds connections, whose sockets are registered with the event loop of the
/// thread that opened them (a connection pool, an HTTP client). Made before the workers start,
/// it has one `T` that every thread shares.
pub struct PerWorker<T> {
    each: Box<[T]>,
}

impl<T> PerWorker<T> {
    /// A `T` made by `make` for each worker started, and one for the other threads.
    pub fn new(make: impl FnMut(usize) -> T) -> PerWorker<T> {
        PerWorker {
            each: (0..shards()).map(make).collect(),
        }
    }

    /// The index of the calling thread's `T`.
    pub fn index_here(&self) -> usize {
        current_worker().map_or(0, |worker| (worker + 1) % self.each.len())
    }

    /// The calling thread's `T`.
    pub fn here(&self) -> &T {
        &self.each[self.index_here()]
    }

    /// The `T` at `index` (as [`PerWorker::index_here`] gave it).
    pub fn get(&self, index: usize) -> &T {
        &self.each[index % self.each.len()]
    }

    /// Every `T`.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.each.iter()
    }
}

thread_local! {
    /// The worker this thread is, when it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// tokio's default limit on one runtime's blocking threads, shared out between the workers.
const MAX_BLOCKING_THREADS: usize = 512;

/// How many worker threads the process started, for [`PerWorker`].
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// How many `T`s a [`PerWorker`] keeps: one per worker started, and one for every other thread.
fn shards() -> usize {
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
        let count = count.max(1);
        // Blocking work (DNS lookups, file stores): tokio's 512 threads of one runtime shared
        // out, but at least 32 per worker, so a slow resolver does not queue its lookups.
        let blocking_threads = (MAX_BLOCKING_THREADS / count).max(32);
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let mut stopped = stopped.clone();
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            // The runtime is built on its own thread, and dropped there: a runtime may not be
            // dropped from within another's tasks.
            std::thread::Builder::new()
                .name(format!("wg-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("wg-blocking-{index}"))
                        .max_blocking_threads(blocking_threads)
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    WORKER.with(|worker| worker.set(Some(index)));
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        // Resolves once the sender is dropped.
                        while stopped.changed().await.is_ok() {}
                    });
                })
                .with_context(|| format!("cannot start worker thread {index}"))?;
            let handle = handle
                .recv()
                .with_context(|| format!("worker thread {index} ended at start"))?
                .with_context(|| format!("cannot start worker {index}'s runtime"))?;
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
        let counted = CountedOnWorker::new(worker.connections.clone());
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
struct CountedOnWorker(IntGauge);

impl CountedOnWorker {
    fn new(gauge: IntGauge) -> CountedOnWorker {
        gauge.inc();
        CountedOnWorker(gauge)
    }
}

impl Drop for CountedOnWorker {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Hands `count` accepted connections to `scheduler`; each reports the worker it runs on and
    /// stays open until its release is sent.
    async fn hand_over(
        scheduler: &Scheduler,
        count: usize,
    ) -> (Vec<Option<usize>>, Vec<oneshot::Sender<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mut ran_on, mut releases) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let _client = TcpStream::connect(address).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let (report, reported) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            scheduler.spawn(accepted, move |stream| async move {
                let _ = report.send(current_worker());
                let _ = released.await;
                drop(stream);
            });
            ran_on.push(reported.await.unwrap());
            releases.push(release);
        }
        (ran_on, releases)
    }

    #[tokio::test]
    async fn each_connection_runs_on_the_worker_serving_the_fewest() {
        let metrics = Metrics::new();
        let scheduler = Scheduler::PerCore(Arc::new(Workers::start(2, &metrics).unwrap()));
        let (ran_on, releases) = hand_over(&scheduler, 3).await;
        assert_eq!(ran_on, [Some(0), Some(1), Some(0)]);
        assert_eq!(metrics.worker_connections(0).get(), 2);
        assert_eq!(metrics.worker_connections(1).get(), 1);
        // The fourth goes to the one serving fewer.
        let (ran_on, more) = hand_over(&scheduler, 1).await;
        assert_eq!(ran_on, [Some(1)]);
        drop((releases, more));
        for _ in 0..100 {
            if metrics.worker_connections(0).get() == 0 && metrics.worker_connections(1).get() == 0
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the workers' gauges did not drop to 0");
    }

    #[tokio::test]
    async fn work_stealing_runs_connections_on_the_calling_runtime() {
        let (ran_on, _releases) = hand_over(&Scheduler::WorkStealing, 2).await;
        assert_eq!(ran_on, [None, None]);
    }
}
