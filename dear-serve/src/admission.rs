//! Admission: at most `workers` requests run the model at once, at most `queue` more
//! wait; beyond that a request is turned away at once (429 + `Retry-After`) instead of
//! piling up behind work it would time out waiting for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiError;

/// The bounded queue in front of the model.
#[derive(Debug)]
pub(crate) struct Admission {
    workers: usize,
    capacity: usize,
    slots: Arc<Semaphore>,
    /// Requests admitted and not yet finished (running + waiting).
    admitted: AtomicUsize,
    /// Requests holding a worker slot.
    running: Arc<AtomicUsize>,
    /// Moving average of the time a request holds a worker, in microseconds.
    service_us: AtomicU64,
}

/// An admitted request; dropping it frees its place.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
}

/// A worker slot, held while the model works for a request.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub(crate) fn new(workers: usize, queue: usize) -> Self {
        Self {
            workers,
            capacity: workers + queue,
            slots: Arc::new(Semaphore::new(workers)),
            admitted: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            service_us: AtomicU64::new(0),
        }
    }

    /// Admits a request, or refuses it with 429 when every worker is busy and the
    /// queue is full.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        let mut current = self.admitted.load(Ordering::Relaxed);
        loop {
            if current >= self.capacity {
                return Err(ApiError::overloaded(
                    self.retry_after(),
                    format!(
                        "the server is at capacity ({} running, {} waiting): retry later",
                        self.workers,
                        self.capacity - self.workers
                    ),
                ));
            }
            match self.admitted.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Ticket {
                        admission: self.clone(),
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// Waits for a worker slot.
    pub(crate) async fn slot(&self, _ticket: &Ticket) -> Result<Slot, ApiError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        self.running.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            _permit: permit,
            running: self.running.clone(),
        })
    }

    /// Records how long a request held its worker (for `Retry-After`).
    pub(crate) fn record_service(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX / 2)) as u64;
        let old = self.service_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.service_us.store(new, Ordering::Relaxed);
    }

    /// Seconds until a place is likely free: the queue drained at the recent service
    /// time per worker, at least 1 and at most 60.
    fn retry_after(&self) -> u64 {
        let per_request = self.service_us.load(Ordering::Relaxed) as f64 / 1e6;
        let waves = self.capacity as f64 / self.workers.max(1) as f64;
        (per_request * waves).ceil().clamp(1.0, 60.0) as u64
    }

    /// Requests waiting for a worker.
    pub(crate) fn queued(&self) -> usize {
        self.admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.running.load(Ordering::Relaxed))
    }

    /// Requests holding a worker.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_workers_plus_queue_then_refuses_until_one_leaves() {
        let a = Arc::new(Admission::new(2, 1));
        let t1 = a.admit().unwrap();
        let t2 = a.admit().unwrap();
        let t3 = a.admit().unwrap();
        let refused = a.admit().err().unwrap();
        assert_eq!(refused.status.as_u16(), 429);
        assert!(refused.retry_after.unwrap() >= 1);
        let s1 = a.slot(&t1).await.unwrap();
        let _s2 = a.slot(&t2).await.unwrap();
        assert_eq!((a.running(), a.queued()), (2, 1));
        // The third waits until a slot frees.
        let waiting = tokio::time::timeout(Duration::from_millis(50), a.slot(&t3)).await;
        assert!(waiting.is_err());
        drop(s1);
        drop(t1);
        let _s3 = a.slot(&t3).await.unwrap();
        assert_eq!((a.running(), a.queued()), (2, 0));
        assert!(a.admit().is_ok());
    }
}
