//! The daemon's event log behind `GET /events`: numbered events in a
//! bounded ring (so a client that reconnects with `Last-Event-ID` gets what
//! it missed), a live feed, and the Server-Sent Events stream that serves
//! both.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mcpsock_api::{AdminEvent, EventBody};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for resumption.
pub(crate) const RING_CAPACITY: usize = 1024;
/// Events a live subscriber may fall behind before its stream is ended (it
/// then resumes from the ring with `Last-Event-ID`).
const LIVE_BACKLOG: usize = 256;
/// How often an idle stream gets a `ping` event.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Numbered events, the most recent kept, and their live feed.
#[derive(Debug)]
pub(crate) struct EventBus {
    ring: Mutex<Ring>,
    live: broadcast::Sender<AdminEvent>,
    capacity: usize,
}

#[derive(Debug)]
struct Ring {
    /// Id of the most recent event; 0 before the first.
    last_id: u64,
    events: VecDeque<AdminEvent>,
}

/// What a new subscriber gets: what it missed, and the live feed after it.
pub(crate) struct Subscription {
    pub(crate) missed: Vec<AdminEvent>,
    /// Ids the subscriber asked for that are no longer kept.
    pub(crate) lost: Option<(u64, u64)>,
    /// Id of the most recent event when the subscription started.
    pub(crate) last_id: u64,
    pub(crate) live: broadcast::Receiver<AdminEvent>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring { last_id: 0, events: VecDeque::with_capacity(capacity) }),
            live: broadcast::channel(LIVE_BACKLOG).0,
            capacity,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers, keeps and broadcasts an event.
    pub(crate) fn publish(&self, body: EventBody) {
        let mut ring = self.ring();
        ring.last_id += 1;
        let event = AdminEvent { id: ring.last_id, time: now_rfc3339(), body };
        tracing::debug!(id = event.id, kind = event.body.kind(), "event");
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock, so live events arrive in id order and a
        // subscription taken under the same lock neither misses nor repeats
        // one.
        let _ = self.live.send(event);
    }

    /// Subscribes to events after `last_seen` (all kept events when it is
    /// older than the ring; none when it is `None`).
    pub(crate) fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let ring = self.ring();
        let live = self.live.subscribe();
        let Some(last_seen) = last_seen else {
            return Subscription { missed: Vec::new(), lost: None, last_id: ring.last_id, live };
        };
        let oldest = ring.events.front().map_or(ring.last_id + 1, |event| event.id);
        let lost = (last_seen + 1 < oldest && last_seen < ring.last_id)
            .then(|| (last_seen + 1, oldest.saturating_sub(1).min(ring.last_id)));
        let missed = ring.events.iter().filter(|event| event.id > last_seen).cloned().collect();
        Subscription { missed, lost, last_id: ring.last_id, live }
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// One SSE frame: `id`, `event` and the event as JSON in `data`.
pub(crate) fn frame(event: &AdminEvent) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.body.kind()))
}

/// A frame for an event that belongs to one stream only (the opening
/// status, a gap notice): it carries the id the client should resume from.
pub(crate) fn frame_unnumbered(id: u64, body: EventBody) -> Bytes {
    frame(&AdminEvent { id, time: now_rfc3339(), body })
}

fn ping_frame() -> Bytes {
    Bytes::from(format!("event: ping\ndata: {{\"time\":\"{}\"}}\n\n", now_rfc3339()))
}

/// Parses `Last-Event-ID`: a decimal event id. Anything else is refused.
pub(crate) fn parse_last_event_id(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The body of one `GET /events` response: `opening` frames first, then
/// `missed` events, then live ones with a ping every `ping_every`, until
/// `stop` is cancelled or the subscriber falls too far behind.
pub(crate) fn stream(
    opening: Vec<Bytes>,
    subscription: Subscription,
    ping_every: Duration,
    stop: CancellationToken,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    struct State {
        pending: VecDeque<Bytes>,
        live: broadcast::Receiver<AdminEvent>,
        ping: tokio::time::Interval,
        stop: CancellationToken,
        /// Live events at or below this id were already sent from the ring.
        sent_up_to: u64,
    }
    let mut pending: VecDeque<Bytes> = opening.into();
    pending.extend(subscription.missed.iter().map(frame));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State { pending, live: subscription.live, ping, stop, sent_up_to: subscription.last_id };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.pending.pop_front() {
                return Some((Ok(bytes), state));
            }
            tokio::select! {
                received = state.live.recv() => match received {
                    Ok(event) if event.id <= state.sent_up_to => continue,
                    Ok(event) => {
                        state.sent_up_to = event.id;
                        return Some((Ok(frame(&event)), state));
                    }
                    // Too slow: end the stream; the client resumes from the
                    // ring with the last id it saw.
                    Err(_) => return None,
                },
                _ = state.ping.tick() => return Some((Ok(ping_frame()), state)),
                () = state.stop.cancelled() => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> EventBody {
        EventBody::ToolsChanged { tools: n }
    }

    #[test]
    fn resume_gets_exactly_what_was_missed() {
        let bus = EventBus::new(4);
        for n in 0..3 {
            bus.publish(body(n));
        }
        let subscription = bus.subscribe(Some(1));
        let ids: Vec<u64> = subscription.missed.iter().map(|event| event.id).collect();
        assert_eq!((ids, subscription.lost, subscription.last_id), (vec![2, 3], None, 3));
        assert!(bus.subscribe(Some(3)).missed.is_empty());
        assert!(bus.subscribe(None).missed.is_empty());
        // Ids from the future (another daemon's) replay nothing.
        assert!(bus.subscribe(Some(99)).missed.is_empty());
    }

    #[test]
    fn a_gap_beyond_the_ring_is_reported() {
        let bus = EventBus::new(4);
        for n in 0..10 {
            bus.publish(body(n));
        }
        let subscription = bus.subscribe(Some(2));
        let ids: Vec<u64> = subscription.missed.iter().map(|event| event.id).collect();
        assert_eq!(ids, vec![7, 8, 9, 10]);
        assert_eq!(subscription.lost, Some((3, 6)));
        assert_eq!(bus.subscribe(Some(6)).lost, None);
        assert_eq!(bus.subscribe(Some(0)).lost, Some((1, 6)));
    }

    #[test]
    fn last_event_ids_are_strict() {
        assert_eq!(parse_last_event_id("42"), Some(42));
        assert_eq!(parse_last_event_id(" 7 "), Some(7));
        for bad in ["", "-1", "1e3", "abc", "99999999999999999999999", "1 2", "0x10"] {
            assert_eq!(parse_last_event_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn frames_carry_id_kind_and_json() {
        let event = AdminEvent { id: 5, time: "2026-01-01T00:00:00Z".into(), body: body(3) };
        assert_eq!(
            frame(&event),
            "id: 5\nevent: tools.changed\ndata: {\"id\":5,\"time\":\"2026-01-01T00:00:00Z\",\"type\":\"tools.changed\",\"tools\":3}\n\n"
        );
    }
}
