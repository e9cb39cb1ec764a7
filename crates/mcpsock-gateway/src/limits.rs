//! How many client requests one upstream serves at once, and what waits.
//!
//! Requests beyond `max_concurrent_requests` wait in a bounded FIFO queue
//! (tokio's semaphore hands out permits in arrival order). A request is shed
//! with a JSON-RPC error when the queue is full or when it waited longer than
//! `queue_timeout`, so one slow upstream cannot pile up unbounded work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::ErrorData;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Client requests served at once; `None` for no limit.
    pub max_concurrent: Option<usize>,
    /// Requests that may wait for a slot.
    pub max_queued: usize,
    /// How long a request may wait for a slot.
    pub queue_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_concurrent: None, max_queued: 100, queue_timeout: Duration::from_secs(30) }
    }
}

/// Counts of one upstream's requests, for health reports.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) queued: AtomicUsize,
    pub(crate) shed: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Limiter {
    limits: RequestLimits,
    slots: Option<Arc<Semaphore>>,
    pub(crate) load: Arc<Load>,
}

/// A request's slot; it counts as in flight until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    load: Arc<Load>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the queue count however the wait ends.
struct Waiting<'a>(&'a Load);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub(crate) fn new(limits: RequestLimits) -> Self {
        let slots = limits.max_concurrent.map(|max| Arc::new(Semaphore::new(max.max(1))));
        Self { limits, slots, load: Arc::default() }
    }

    /// Waits for a slot, or sheds the request with an error that says why.
    pub(crate) async fn admit(&self, upstream: &str) -> Result<Slot, ErrorData> {
        let permit = match &self.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => Some(self.wait(slots, upstream).await?),
            },
        };
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { _permit: permit, load: self.load.clone() })
    }

    async fn wait(&self, slots: &Arc<Semaphore>, upstream: &str) -> Result<OwnedSemaphorePermit, ErrorData> {
        let max_concurrent = self.limits.max_concurrent.unwrap_or_default();
        let queued = self.load.queued.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.load);
        if queued >= self.limits.max_queued {
            return Err(self.shed(format!(
                "upstream {upstream} is busy: {max_concurrent} requests running and {queued} waiting (max_concurrent_requests, max_queued_requests); try again later"
            )));
        }
        match tokio::time::timeout(self.limits.queue_timeout, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(self.shed(format!("upstream {upstream} is shutting down"))),
            Err(_) => Err(self.shed(format!(
                "upstream {upstream} is busy: no slot freed within {}s of queue_timeout ({max_concurrent} requests running); try again later",
                self.limits.queue_timeout.as_secs_f64()
            ))),
        }
    }

    fn shed(&self, message: String) -> ErrorData {
        self.load.shed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{message}");
        ErrorData::internal_error(message, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_wait_in_order_and_are_shed_when_the_queue_is_full_or_slow() {
        let limiter = Arc::new(Limiter::new(RequestLimits {
            max_concurrent: Some(1),
            max_queued: 1,
            queue_timeout: Duration::from_secs(5),
        }));
        let running = limiter.admit("up").await.unwrap();
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.admit("up").await.map(|_| ()) }
        });
        while limiter.load.queued.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let shed = limiter.admit("up").await.unwrap_err();
        assert!(shed.message.contains("1 requests running and 1 waiting"), "{}", shed.message);
        drop(running);
        waiting.await.unwrap().unwrap();
        let _running = limiter.admit("up").await.unwrap();
        let slow = limiter.admit("up").await.unwrap_err();
        assert!(slow.message.contains("within 5s of queue_timeout"), "{}", slow.message);
        assert_eq!(limiter.load.shed.load(Ordering::Relaxed), 2);
        assert_eq!(limiter.load.queued.load(Ordering::Relaxed), 0);
        assert_eq!(limiter.load.in_flight.load(Ordering::Relaxed), 1);
    }
}
