//! A small pool of dedicated threads for the blocking work of the redb backend.
//!
//! redb's calls block (file I/O, fsync, waiting for the one write transaction). Run inline they
//! would hold a tokio worker thread; on tokio's blocking pool they would share it with DNS
//! lookups (`getaddrinfo` runs there too), and that pool grows to hundreds of threads under load.
//! So redb gets threads of its own, a fixed number, behind a bounded queue:
//!
//! * at most `queue` jobs are queued or running; a caller waits up to `queue_wait` for its job
//!   to start, then gets `Unavailable`, and the job is skipped: it never runs;
//! * a job whose caller is gone before it starts (its request timed out) is skipped too;
//! * once a job has started, its caller waits for the outcome, however long the disk takes.
//!
//! Together: a write is either never started (and reported as failed) or reported with its real
//! outcome. A write that commits is never reported as failed because a timer ran out.

use super::backend::BackendError;
use anyhow::Context;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Where a job is; moves from `QUEUED` to exactly one of the others.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Dedicated threads for blocking jobs, with a bounded queue.
pub struct BlockingPool {
    name: &'static str,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// One permit per job queued or running.
    places: Arc<Semaphore>,
    /// How long a caller waits for its job to start: for a place, then for a thread.
    queue_wait: Duration,
}

/// Marks a job abandoned when its caller stops waiting before it started.
struct Abandon(Arc<AtomicU8>);

impl Drop for Abandon {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl BlockingPool {
    /// Starts `threads` threads named `wasmgate-NAME`; at most `queue` jobs wait or run at once,
    /// and a job that has not started `queue_wait` after it was submitted is not run.
    pub fn new(
        name: &'static str,
        threads: usize,
        queue: usize,
        queue_wait: Duration,
    ) -> anyhow::Result<BlockingPool> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("wasmgate-{name}"))
                .spawn(move || {
                    loop {
                        // Nothing panics while the lock is held, so poisoning cannot happen;
                        // take the receiver either way.
                        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A panicking job drops its reply sender (its caller gets an
                            // error); the thread lives on.
                            Ok(job) => drop(std::panic::catch_unwind(AssertUnwindSafe(job))),
                            // The pool is gone.
                            Err(_) => return,
                        }
                    }
                })
                .with_context(|| format!("cannot start a {name} thread"))?;
        }
        Ok(BlockingPool {
            name,
            jobs: Mutex::new(sender),
            places: Arc::new(Semaphore::new(queue.max(1))),
            queue_wait,
        })
    }

    fn unavailable(&self, what: &str) -> BackendError {
        BackendError::Unavailable(format!("{}: {what}", self.name))
    }

    /// Runs `f` on one of the pool's threads; see the module docs for when it does not run.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let deadline = tokio::time::Instant::now() + self.queue_wait;
        let too_busy = || {
            self.unavailable(&format!(
                "too busy: the operation did not start within {:?} and was not done",
                self.queue_wait
            ))
        };
        let place =
            match tokio::time::timeout_at(deadline, self.places.clone().acquire_owned()).await {
                Ok(Ok(place)) => place,
                Ok(Err(_)) => return Err(self.unavailable("the thread pool is closed")),
                Err(_) => return Err(too_busy()),
            };
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, mut outcome) = oneshot::channel();
        let job_state = state.clone();
        let job: Job = Box::new(move || {
            let _place = place;
            if job_state
                .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = reply.send(f());
            }
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
        if sent.is_err() {
            return Err(self.unavailable("the thread pool is gone"));
        }
        // Dropped with this future (say, when the request times out): a job not yet started
        // never starts.
        let abandon = Abandon(state);
        let result = match tokio::time::timeout_at(deadline, &mut outcome).await {
            Ok(result) => result,
            Err(_) => {
                if abandon
                    .0
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(too_busy());
                }
                // It started: its outcome is what the caller must hear.
                outcome.await
            }
        };
        result.map_err(|_| self.unavailable("the operation panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const WAIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn jobs_that_did_not_start_in_time_never_run_and_started_ones_are_awaited() {
        let pool = Arc::new(BlockingPool::new("test", 1, 8, WAIT).unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        // Occupies the only thread past the queue wait.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let slow = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started.send(());
                    let _ = blocked.recv();
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok("done")
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        has_started.recv().unwrap();
        let queued = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    ran.fetch_add(10, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(WAIT * 2).await;
        let err = queued.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("was not done"), "{err}");
        release.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), Ok("done"), "a started job is awaited");
        // The thread is free again: a new job runs (on the pool's own thread), the abandoned
        // one never did.
        let thread = pool
            .run(|| Ok(std::thread::current().name().map(str::to_string)))
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("wasmgate-test"));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_job_whose_caller_is_gone_before_it_starts_never_runs() {
        let pool = Arc::new(BlockingPool::new("test", 1, 8, Duration::from_secs(30)).unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started.send(());
                    let _ = blocked.recv();
                    Ok(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        has_started.recv().unwrap();
        // Queued behind the busy job, then its request times out (the future is dropped).
        let gone = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        pool.run(|| Ok(())).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_survives() {
        let pool = BlockingPool::new("test", 1, 8, WAIT).unwrap();
        let err = pool.run(|| -> Result<(), _> { panic!("boom") }).await;
        assert!(err.is_err());
        assert_eq!(pool.run(|| Ok(7)).await, Ok(7));
    }
}
