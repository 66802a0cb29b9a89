//! Admission control: how many instances of a route may run at once, and who waits.
//!
//! Each route has `max_concurrency` permits. A request that finds none free waits in a bounded
//! queue (`queue_size` places) for at most `queue_timeout`; a request that finds the queue full,
//! or waits too long, is rejected, and the caller answers 503 with `Retry-After`. The semaphore is
//! fair, so waiters are served in arrival order and a new request cannot overtake them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why admission control turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    QueueFull,
    QueueTimeout,
    PoolExhausted,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::PoolExhausted => "pool_exhausted",
        }
    }
}

/// The admission state of one route.
pub struct Admission {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: AdmissionLimits,
}

/// A route's admission settings: `max_concurrency`, `queue_size`, `queue_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_concurrency: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
}

/// Held while an instance of the route is alive; dropping it admits the next request.
pub type Permit = OwnedSemaphorePermit;

impl Admission {
    pub fn new(max_concurrency: usize, queue_size: usize, queue_timeout: Duration) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_concurrency)),
            waiting: AtomicUsize::new(0),
            limits: AdmissionLimits {
                max_concurrency,
                queue_size,
                queue_timeout,
            },
        }
    }

    /// The settings this admission state enforces. A reload keeps a route's admission state
    /// (its permits in use and its queue) when these did not change, so requests on the old
    /// and the new generation share one limit.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Waits for a permit, within the queue's bounds.
    pub async fn acquire(&self) -> Result<Permit, RejectReason> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _place = QueuePlace::take(&self.waiting, self.limits.queue_size)
            .ok_or(RejectReason::QueueFull)?;
        match tokio::time::timeout(
            self.limits.queue_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(RejectReason::QueueTimeout),
        }
    }
}

/// A place in the wait queue, given back on drop.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, limit: usize) -> Option<QueuePlace<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| QueuePlace(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_rejects_at_once_and_waiters_time_out() {
        let admission = Arc::new(Admission::new(1, 1, Duration::from_millis(50)));
        let held = admission.acquire().await.unwrap();
        // One waiter fits in the queue...
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // ...a second does not.
        assert_eq!(
            admission.acquire().await.err(),
            Some(RejectReason::QueueFull)
        );
        assert_eq!(waiter.await.unwrap(), Err(RejectReason::QueueTimeout));
        drop(held);
        assert!(admission.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn a_released_permit_goes_to_the_waiter() {
        let admission = Arc::new(Admission::new(1, 4, Duration::from_secs(5)));
        let held = admission.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
