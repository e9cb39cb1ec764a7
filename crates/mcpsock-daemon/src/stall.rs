//! Dropping streams whose client stopped reading.
//!
//! An SSE response body is wrapped so that it knows when it last handed a
//! frame to hyper. hyper asks for the next frame as soon as it has room to
//! write it; a client that stops reading leaves hyper's buffers full, so the
//! body is not asked again. When that lasts longer than the stall timeout,
//! the connection is closed at once: the stream and its backlog are dropped,
//! and whatever fed it gets an error instead of waiting forever. A stream
//! that is merely idle is not affected: its last poll found nothing to send.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use mcpsock_transport::ConnectionControl;

/// What the watchdog needs to know about one stream.
#[derive(Debug, Default)]
struct Progress {
    /// When the last frame was handed out, if hyper has not asked for the
    /// next one since.
    delivered_at: Mutex<Option<Instant>>,
    finished: AtomicBool,
}

struct Watched {
    inner: Body,
    progress: Arc<Progress>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut delivered_at =
            self.progress.delivered_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &polled {
            Poll::Ready(Some(Ok(_))) => *delivered_at = Some(Instant::now()),
            Poll::Pending => *delivered_at = None,
            Poll::Ready(_) => self.progress.finished.store(true, Ordering::Release),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.progress.finished.store(true, Ordering::Release);
    }
}

/// The streams being watched, checked by one sweeper task: watching a
/// stream costs an allocation, not a task and a timer per response.
#[derive(Debug)]
pub(crate) struct StreamWatch {
    timeout: Duration,
    streams: Mutex<Vec<(Weak<Progress>, ConnectionControl)>>,
}

impl StreamWatch {
    /// Starts the sweeper; it ends when the last handle is dropped.
    pub(crate) fn start(timeout: Duration) -> Arc<Self> {
        let watch = Arc::new(Self { timeout, streams: Mutex::default() });
        tokio::spawn(sweep(
            Arc::downgrade(&watch),
            (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        ));
        watch
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Vec<(Weak<Progress>, ConnectionControl)>> {
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connections of stalled streams; forgets finished ones.
    fn check(&self) {
        self.streams().retain(|(progress, control)| {
            let Some(progress) = progress.upgrade() else { return false };
            if progress.finished.load(Ordering::Acquire) {
                return false;
            }
            let stalled = progress
                .delivered_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|at| at.elapsed() >= self.timeout);
            if stalled {
                tracing::warn!(
                    "dropped a stream whose client stopped reading for {}s (stream_stall_timeout)",
                    self.timeout.as_secs_f64()
                );
                control.close_now();
            }
            !stalled
        });
    }
}

async fn sweep(watch: Weak<StreamWatch>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(watch) = watch.upgrade() else { return };
        watch.check();
    }
}

impl StreamWatch {
    /// Wraps a `text/event-stream` response so that a stalled reader is
    /// dropped after the stall timeout; `control` is the connection of the
    /// request it answers.
    pub(crate) fn watch(&self, control: Option<ConnectionControl>, response: Response) -> Response {
        let is_stream = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let Some(control) = control.filter(|_| is_stream) else {
            return response;
        };
        let progress = Arc::new(Progress::default());
        self.streams().push((Arc::downgrade(&progress), control));
        response.map(|inner| Body::new(Watched { inner, progress }))
    }
}
