//! A lazily made connection that concurrent callers share, for the remote backends.
//!
//! Redis and NATS connect on first use, so the gateway starts while they are down. A plain
//! `OnceCell` would run one connection attempt at a time: against a server that accepts and
//! never answers, the Nth of N concurrent requests would wait N attempts. Here every caller that
//! arrives while an attempt is under way waits for that same attempt, which is bounded by
//! `timeout` and runs on its own task (a caller that gives up does not cancel it for the others).
//! A failed attempt is forgotten, so the next caller tries again; a made connection is kept (the
//! clients reconnect by themselves).

use super::backend::BackendError;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::sync::Mutex;
use std::time::Duration;

type Attempt<T> = Shared<BoxFuture<'static, Result<T, BackendError>>>;

enum Slot<T> {
    Idle,
    /// An attempt under way, numbered so that only its own outcome replaces it.
    Connecting(u64, Attempt<T>),
    Ready(T),
}

/// A connection of type `T` made at most once at a time, shared by every caller.
pub struct SharedConnection<T> {
    slot: Mutex<Slot<T>>,
    attempts: std::sync::atomic::AtomicU64,
    timeout: Duration,
    what: &'static str,
}

impl<T: Clone + Send + Sync + 'static> SharedConnection<T> {
    /// Not connected yet; an attempt may take up to `timeout`. `what` names the service in
    /// errors (`redis`, `nats`).
    pub fn new(what: &'static str, timeout: Duration) -> SharedConnection<T> {
        SharedConnection {
            slot: Mutex::new(Slot::Idle),
            attempts: Default::default(),
            timeout,
            what,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        // Nothing panics while the lock is held.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, made by `connect` if there is none and no attempt is under way. Returns
    /// within `timeout` of the call (a little more if an attempt must start).
    pub async fn get<F>(&self, connect: impl FnOnce() -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let (number, attempt) = {
            let mut slot = self.lock();
            match &*slot {
                Slot::Ready(connection) => return Ok(connection.clone()),
                Slot::Connecting(number, attempt) => (*number, attempt.clone()),
                Slot::Idle => {
                    let number = self
                        .attempts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (what, timeout) = (self.what, self.timeout);
                    // On the shared runtime: the connection's own tasks, spawned as it
                    // connects, serve every worker thread (`crate::server::workers`).
                    // The deadline too: a timer belongs to the runtime it is made on.
                    let connecting = connect();
                    let attempt = crate::server::workers::spawn_shared(async move {
                        tokio::time::timeout(timeout, connecting).await
                    });
                    let attempt: Attempt<T> = async move {
                        match attempt.await {
                            Ok(Ok(result)) => result,
                            Ok(Err(_)) => Err(BackendError::Unavailable(format!(
                                "{what}: could not connect within {}s",
                                timeout.as_secs_f64()
                            ))),
                            Err(e) => Err(BackendError::Unavailable(format!(
                                "{what}: the connection attempt failed: {e}"
                            ))),
                        }
                    }
                    .boxed()
                    .shared();
                    *slot = Slot::Connecting(number, attempt.clone());
                    (number, attempt)
                }
            }
        };
        // The attempt ends within `timeout` by itself; this bound is for a runtime too busy to
        // run it.
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Unavailable(format!(
                "{}: could not connect within {}s",
                self.what,
                self.timeout.as_secs_f64()
            ))),
        };
        let mut slot = self.lock();
        if matches!(&*slot, Slot::Connecting(current, _) if *current == number) {
            *slot = match &result {
                Ok(connection) => Slot::Ready(connection.clone()),
                Err(_) => Slot::Idle,
            };
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_attempt_and_all_fail_within_the_timeout() {
        let timeout = Duration::from_millis(300);
        let connection = Arc::new(SharedConnection::<u32>::new("test", timeout));
        let attempts = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (connection, attempts) = (connection.clone(), attempts.clone());
                tokio::spawn(async move {
                    connection
                        .get(|| async move {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            // A server that never answers.
                            std::future::pending::<()>().await;
                            Ok(1)
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            let err = caller.await.unwrap().unwrap_err();
            assert!(err.to_string().contains("within 0.3s"), "{err}");
        }
        // One attempt at a time would take 20 x 0.3 s.
        assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        // A failed attempt is forgotten; a made connection is kept.
        assert_eq!(connection.get(|| async { Ok(7) }).await, Ok(7));
        assert_eq!(connection.get(|| async { Ok(8) }).await, Ok(7));
    }
}
