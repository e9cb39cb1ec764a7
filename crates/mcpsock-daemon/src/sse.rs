//! The event stream that answers a request in a session, written as rmcp's
//! service writes it: the same fields in the same order, a `:` comment
//! when the stream has been quiet for the keep-alive interval, and the end
//! of the stream when the daemon stops its streams.
//!
//! Each event is written straight into one buffer: rmcp's service builds a
//! `String` of the message, moves it into an event value, then copies both
//! into the bytes sent.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http_body::Frame;
use rmcp::transport::common::server_side_http::ServerSseMessage;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a quiet stream sends every keep-alive interval.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// A `200 OK` event stream of `events`, with a keep-alive comment after
/// each quiet `keep_alive`, ending early when `stop` is cancelled.
pub(crate) fn reply<S>(events: S, keep_alive: Option<Duration>, stop: CancellationToken) -> Response
where
    S: Stream<Item = ServerSseMessage> + Send + 'static,
{
    let body = EventBody {
        events: Box::pin(events),
        keep_alive,
        quiet: None,
        stopped: Box::pin(stop.clone().cancelled_owned()),
        stop,
    };
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}

/// One event as bytes: `data`, then `id` and `retry` when set, then the
/// blank line. A JSON-RPC message serializes to one line.
pub(crate) fn encode(event: &ServerSseMessage) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    if let Some(message) = &event.message {
        serde_json::to_writer(&mut out, message.as_ref()).expect("a JSON-RPC message serializes");
    }
    out.push(b'\n');
    if let Some(id) = &event.event_id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(b"retry: ");
        out.extend_from_slice(retry.as_millis().to_string().as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.into()
}

struct EventBody {
    events: Pin<Box<dyn Stream<Item = ServerSseMessage> + Send>>,
    keep_alive: Option<Duration>,
    /// Set when the stream first has nothing to send (most replies never
    /// do), then pushed back by every event.
    quiet: Option<Pin<Box<Sleep>>>,
    /// Checked at every poll; `stopped` is polled (and so wakes the body
    /// when the daemon stops its streams) only when the stream waits, since
    /// each poll of it takes a lock.
    stop: CancellationToken,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.stop.is_cancelled() {
            return Poll::Ready(None);
        }
        match this.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(event)) => {
                if let (Some(quiet), Some(interval)) = (&mut this.quiet, this.keep_alive) {
                    quiet.as_mut().reset(Instant::now() + interval);
                }
                Poll::Ready(Some(Ok(Frame::data(encode(&event)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                let Some(interval) = this.keep_alive else {
                    return Poll::Pending;
                };
                let quiet = this.quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
                ready!(quiet.as_mut().poll(cx));
                quiet.as_mut().reset(Instant::now() + interval);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use http_body_util::BodyExt;
    use rmcp::model::{ServerJsonRpcMessage, ServerResult};
    use tokio::sync::mpsc;

    fn answer(id: i64) -> ServerSseMessage {
        let message: ServerJsonRpcMessage =
            serde_json::from_value(serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}})).unwrap();
        assert!(
            matches!(&message, ServerJsonRpcMessage::Response(response) if matches!(response.result, ServerResult::EmptyResult(_)))
        );
        let mut event = ServerSseMessage::retry(Duration::ZERO);
        event.event_id = Some(format!("s-{id}"));
        event.message = Some(Arc::new(message));
        event.retry = None;
        event
    }

    #[test]
    fn events_are_written_field_by_field() {
        assert_eq!(
            &encode(&answer(7))[..],
            b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\nid: s-7\n\n"
        );
        // A priming event: empty data, an id and a retry hint.
        let mut priming = ServerSseMessage::retry(Duration::from_secs(3));
        priming.event_id = Some("0".into());
        assert_eq!(&encode(&priming)[..], b"data: \nid: 0\nretry: 3000\n\n");
    }

    async fn next_frame(body: &mut Body) -> Option<Bytes> {
        body.frame().await.map(|frame| frame.unwrap().into_data().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_kept_alive_and_ends_with_its_events() {
        let (send, receive) = mpsc::unbounded_channel();
        let events = futures::stream::unfold(receive, |mut receive| async {
            receive.recv().await.map(|e| (e, receive))
        });
        let response = reply(events, Some(Duration::from_secs(15)), CancellationToken::new());
        assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
        let mut body = response.into_body();

        send.send(answer(1)).unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), encode(&answer(1)));
        // Nothing to send: after the interval (the clock is paused and
        // advances by itself while the test waits), a comment.
        let quiet_since = Instant::now();
        assert_eq!(&next_frame(&mut body).await.unwrap()[..], KEEP_ALIVE);
        assert_eq!(quiet_since.elapsed(), Duration::from_secs(15));
        send.send(answer(2)).unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), encode(&answer(2)));
        drop(send);
        assert_eq!(next_frame(&mut body).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_the_daemon_stops_its_streams() {
        let stop = CancellationToken::new();
        let mut body = reply(futures::stream::pending(), None, stop.child_token()).into_body();
        stop.cancel();
        assert_eq!(next_frame(&mut body).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_stream_wakes_and_ends_when_the_daemon_stops_its_streams() {
        let stop = CancellationToken::new();
        let mut body = reply(futures::stream::pending(), None, stop.child_token()).into_body();
        // Polled again only when woken.
        let reader = tokio::spawn(async move { next_frame(&mut body).await });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        stop.cancel();
        // The clock is paused: if nothing wakes the reader, the timeout
        // fires as soon as the runtime is idle.
        let read = tokio::time::timeout(Duration::from_secs(60), reader).await;
        assert_eq!(read.expect("the stop wakes a waiting stream").unwrap(), None);
    }
}
