//! The in-memory store: the semantics of the SQLite store without a file,
//! for tests, `--memory` and the library default.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{
    Clock, NewEvent, OpenStream, Purged, Replay, Retention, SessionRecord, Store, StoreError, StoredEvent,
    format_event_id, parse_event_id, random_tag,
};

// Every key is one the server made (a session id, a stream name), so a
// fast hash with a per-process random seed is enough: a client cannot choose
// keys that collide.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Sessions and events in process memory.
///
/// Every operation a request makes costs a few map lookups: each stream
/// knows its events, each session its streams and the order of its events,
/// so the per-stream and per-session caps are enforced as events arrive,
/// and a stream whose last event is trimmed is forgotten with it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    retention: Retention,
    clock: Clock,
}

/// A session's key: its id. Unlike the SQLite store, which keeps only
/// [`session_key`](crate::session_key) digests on disk, this store lives in
/// the same memory as the sessions themselves, so hashing the id would
/// protect nothing. Shared by every row of the session.
type Key = Arc<str>;

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    sessions: HashMap<Key, SessionRecord>,
    state: HashMap<Key, BTreeMap<String, Vec<u8>>>,
    streams: HashMap<Arc<str>, StreamRow>,
    /// Events by sequence number, so iteration is in append order.
    events: BTreeMap<u64, EventRow>,
    /// What each session holds, for its cap and its removal.
    owned: HashMap<Key, Owned>,
    next_seq: u64,
}

#[derive(Debug)]
struct StreamRow {
    /// Its key in `Inner::streams`, shared by its events.
    name: Arc<str>,
    /// The session it belongs to, once bound.
    session: Option<Key>,
    /// The request it answers (JSON); none for a standalone stream.
    request_id: Option<Vec<u8>>,
    /// Its events (sequence number, size), oldest first, and their total
    /// size.
    events: VecDeque<(u64, usize)>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Owned {
    streams: HashSet<Arc<str>>,
    /// Sequence numbers of the session's events, oldest first. Events
    /// removed another way (their stream's cap, their age) stay listed
    /// until they reach the front or the list is compacted.
    events: VecDeque<u64>,
    /// How many of `events` are still stored.
    live: usize,
}

#[derive(Debug)]
struct EventRow {
    /// The random half of the event's id.
    tag: u64,
    stream: Arc<str>,
    created_at: i64,
    retry_ms: Option<u64>,
    message: Option<Vec<u8>>,
    is_response: bool,
}

impl MemoryStore {
    pub fn new(retention: Retention, clock: Clock) -> Self {
        Self { inner: Mutex::default(), retention, clock }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.closed { Err(StoreError::Closed) } else { Ok(inner) }
    }

    fn expired(&self, session: &SessionRecord, now: i64) -> bool {
        session.last_seen.saturating_add(crate::millis(self.retention.session_idle_ttl)) <= now
    }
}

impl Inner {
    /// The sequence number of the stored event `id` (position and random
    /// tag must both match).
    fn find(&self, id: &str) -> Option<u64> {
        let (seq, tag) = parse_event_id(id)?;
        self.events.get(&seq).filter(|event| event.tag == tag).map(|_| seq)
    }

    /// Binds `stream` to the session `key` (first come: a bound stream
    /// keeps its session); its events so far count toward the session's
    /// cap.
    fn bind(&mut self, stream: &str, session: &str, request_id: Option<&[u8]>) {
        if self.streams.get(stream).is_none_or(|row| row.session.is_some()) {
            return;
        }
        let key = self.key(session);
        let row = self.streams.get_mut(stream).expect("checked above");
        row.session = Some(key.clone());
        row.request_id = request_id.map(<[u8]>::to_vec);
        let seqs: Vec<u64> = row.events.iter().map(|(seq, _)| *seq).collect();
        let owned = self.owned.entry(key).or_default();
        owned.streams.insert(row.name.clone());
        owned.live += seqs.len();
        owned.events.extend(seqs);
    }

    /// The shared key of session `id`: the one its rows hold already, or a
    /// new one.
    fn key(&self, id: &str) -> Key {
        let known = self.sessions.get_key_value(id).map(|(key, _)| key);
        known
            .or_else(|| self.owned.get_key_value(id).map(|(key, _)| key))
            .cloned()
            .unwrap_or_else(|| id.into())
    }

    /// Removes one event; false when it was gone already.
    fn remove_event(&mut self, seq: u64) -> bool {
        let Some(event) = self.events.remove(&seq) else { return false };
        let Some(row) = self.streams.get_mut(&*event.stream) else { return true };
        let position = if row.events.front().is_some_and(|(front, _)| *front == seq) {
            Some(0)
        } else {
            row.events.iter().position(|(queued, _)| *queued == seq)
        };
        if let Some((_, size)) = position.and_then(|position| row.events.remove(position)) {
            row.bytes -= size;
        }
        let session = row.session.clone();
        let emptied = row.events.is_empty();
        if emptied {
            self.streams.remove(&*event.stream);
        }
        if let Some(owned) = session.and_then(|key| self.owned.get_mut(&key)) {
            owned.live -= 1;
            if emptied {
                owned.streams.remove(&*event.stream);
            }
        }
        true
    }

    /// Removes a session with its streams, events and state; returns how
    /// many events went.
    fn remove_session(&mut self, key: &str) -> usize {
        self.sessions.remove(key);
        self.state.remove(key);
        let Some(owned) = self.owned.remove(key) else { return 0 };
        let mut removed = 0;
        for stream in owned.streams {
            if let Some(row) = self.streams.remove(&stream) {
                for (seq, _) in row.events {
                    removed += usize::from(self.events.remove(&seq).is_some());
                }
            }
        }
        removed
    }

    /// Drops a stream's oldest events until it is within both bounds.
    fn trim_stream(&mut self, stream: &str, max_events: usize, max_bytes: usize) {
        let Some(row) = self.streams.get_mut(stream) else { return };
        let mut doomed = Vec::new();
        while row.events.len() > max_events.max(1) || (row.bytes > max_bytes && row.events.len() > 1) {
            let Some((seq, size)) = row.events.pop_front() else { break };
            row.bytes -= size;
            doomed.push(seq);
        }
        if doomed.is_empty() {
            return;
        }
        let session = row.session.clone();
        for seq in &doomed {
            self.events.remove(seq);
        }
        if let Some(owned) = session.and_then(|key| self.owned.get_mut(&key)) {
            owned.live -= doomed.len();
        }
    }

    /// Drops a session's oldest events until it holds at most `cap`;
    /// returns how many went.
    fn trim_session(&mut self, key: &str, cap: usize) -> usize {
        let mut removed = 0;
        loop {
            let Some(owned) = self.owned.get_mut(key) else { return removed };
            if owned.live <= cap {
                // Events removed another way leave their numbers behind;
                // compact before the list outgrows what it tracks.
                if owned.events.len() > 2 * owned.live + 64 {
                    let events = &self.events;
                    owned.events.retain(|seq| events.contains_key(seq));
                }
                return removed;
            }
            let Some(seq) = owned.events.pop_front() else { return removed };
            removed += usize::from(self.remove_event(seq));
        }
    }
}

impl MemoryStore {
    /// Appends `event` to `stream`; `session` (with the request a request
    /// stream answers) binds a stream not bound yet.
    fn append(
        &self,
        stream: &str,
        session: Option<(&str, Option<&[u8]>)>,
        event: NewEvent,
    ) -> Result<String, StoreError> {
        let now = self.clock.now();
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let tag = random_tag();
        if !inner.streams.contains_key(stream) {
            let name: Arc<str> = Arc::from(stream);
            let row = StreamRow {
                name: name.clone(),
                session: None,
                request_id: None,
                events: VecDeque::new(),
                bytes: 0,
            };
            inner.streams.insert(name, row);
        }
        if let Some((session, request_id)) = session
            && inner.streams[stream].session.is_none()
        {
            // A standalone stream is bound by its first event, a request's
            // stream as it opens.
            inner.bind(stream, session, request_id);
        }
        let size = event.message.as_ref().map_or(0, Vec::len);
        let row = inner.streams.get_mut(stream).expect("inserted above");
        row.events.push_back((seq, size));
        row.bytes += size;
        let key = row.session.clone();
        let name = row.name.clone();
        inner.events.insert(
            seq,
            EventRow {
                tag,
                stream: name,
                created_at: now,
                retry_ms: event.retry_ms,
                message: event.message,
                is_response: event.is_response,
            },
        );
        let cap = self.retention.max_events_per_session;
        if let Some(key) = &key
            && let Some(owned) = inner.owned.get_mut(key)
        {
            owned.events.push_back(seq);
            owned.live += 1;
        }
        inner.trim_stream(stream, cap, self.retention.max_stream_bytes);
        if let Some(key) = &key {
            inner.trim_session(key, cap);
        }
        Ok(format_event_id(seq, tag))
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn put_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let key = inner.key(&session.id);
        inner.sessions.insert(key, session);
        Ok(())
    }

    async fn load_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock()?;
        Ok(inner.sessions.get(id).filter(|session| !self.expired(session, now)).cloned())
    }

    fn touch_session(&self, id: &str) {
        let now = self.clock.now();
        if let Ok(mut inner) = self.lock()
            && let Some(session) = inner.sessions.get_mut(id)
        {
            session.last_seen = session.last_seen.max(now);
        }
    }

    async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        self.lock()?.remove_session(id);
        Ok(())
    }

    fn append_event_deferred(&self, stream: &str, event: NewEvent) -> String {
        // Memory has nothing to defer to: the event is stored at once.
        match self.append(stream, None, event) {
            Ok(id) => id,
            Err(_) => crate::event_id(u64::MAX),
        }
    }

    async fn append_event(
        &self,
        stream: &str,
        session: Option<&str>,
        event: NewEvent,
    ) -> Result<String, StoreError> {
        self.append(stream, session.map(|session| (session, None)), event)
    }

    async fn bind_stream(&self, event_id: &str, session: &str, request_id: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let Some(stream) =
            inner.find(event_id).and_then(|seq| inner.events.get(&seq)).map(|e| e.stream.clone())
        else {
            return Ok(());
        };
        inner.bind(&stream, session, Some(request_id));
        inner.trim_session(session, self.retention.max_events_per_session);
        Ok(())
    }

    fn open_stream(
        self: Arc<Self>,
        stream: &str,
        session: &str,
        request_id: Vec<u8>,
        first: NewEvent,
    ) -> Result<(String, Option<crate::Binding>), StoreError> {
        // Both at once, under one lock: nothing left to wait for.
        Ok((self.append(stream, Some((session, Some(&request_id))), first)?, None))
    }

    async fn replay_after(&self, session: &str, event_id: &str) -> Result<Option<Replay>, StoreError> {
        let inner = self.lock()?;
        let Some(seq) = inner.find(event_id) else { return Ok(None) };
        let Some(row) = inner.events.get(&seq).and_then(|event| inner.streams.get(&*event.stream)) else {
            return Ok(None);
        };
        if row.session.as_deref() != Some(session) {
            return Ok(None);
        }
        let events = row
            .events
            .iter()
            .filter(|(queued, _)| *queued > seq)
            .filter_map(|(queued, _)| Some((*queued, inner.events.get(queued)?)))
            .map(|(queued, event)| StoredEvent {
                id: format_event_id(queued, event.tag),
                message: event.message.clone(),
                retry_ms: event.retry_ms,
            })
            .collect();
        Ok(Some(Replay { events, standalone: row.request_id.is_none() }))
    }

    async fn open_streams(&self) -> Result<Vec<OpenStream>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock()?;
        let mut open: Vec<(u64, OpenStream)> = inner
            .streams
            .iter()
            .filter(|(_, row)| {
                row.session
                    .as_ref()
                    .and_then(|key| inner.sessions.get(key))
                    .is_some_and(|session| !self.expired(session, now))
            })
            .filter(|(_, row)| {
                !row.events
                    .iter()
                    .any(|(seq, _)| inner.events.get(seq).is_some_and(|event| event.is_response))
            })
            .filter_map(|(stream, row)| {
                let request_id = row.request_id.clone()?;
                let first = row.events.front().map_or(0, |(seq, _)| *seq);
                Some((first, OpenStream { stream: stream.to_string(), request_id }))
            })
            .collect();
        open.sort_by_key(|(first, _)| *first);
        Ok(open.into_iter().map(|(_, stream)| stream).collect())
    }

    async fn put_state(&self, session: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let session = inner.key(session);
        inner.state.entry(session).or_default().insert(key.to_string(), value);
        Ok(())
    }

    async fn load_state(&self, session: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .state
            .get(session)
            .map(|values| values.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
            .unwrap_or_default())
    }

    async fn purge(&self) -> Result<Purged, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let mut purged = Purged::default();
        let expired: Vec<Key> = inner
            .sessions
            .iter()
            .filter(|(_, session)| self.expired(session, now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            purged.events += inner.remove_session(&key);
            purged.sessions += 1;
        }
        let oldest_kept = now.saturating_sub(crate::millis(self.retention.event_max_age));
        let old: Vec<u64> = inner
            .events
            .iter()
            .filter(|(_, event)| event.created_at < oldest_kept)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in old {
            purged.events += usize::from(inner.remove_event(seq));
        }
        let keys: Vec<Key> = inner.owned.keys().cloned().collect();
        for key in keys {
            purged.events += inner.trim_session(&key, self.retention.max_events_per_session);
        }
        Ok(purged)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.lock()?.closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answered_request_streams_leave_nothing_behind_past_the_cap() {
        let store = MemoryStore::new(Retention::default().max_events_per_session(50), Clock::manual(0));
        store
            .put_session(SessionRecord {
                id: "s1".into(),
                owner: "uid:1".into(),
                init_params: b"{}".to_vec(),
                created_at: 0,
                last_seen: 0,
            })
            .await
            .unwrap();
        for index in 0..10_000 {
            let stream = format!("request-{index}");
            let first = store.append_event_deferred(&stream, NewEvent::default());
            store.bind_stream(&first, "s1", b"1").await.unwrap();
            let answer = NewEvent { message: Some(b"{}".to_vec()), retry_ms: None, is_response: true };
            store.append_event(&stream, None, answer).await.unwrap();
        }
        {
            let inner = store.lock().unwrap();
            assert_eq!(inner.events.len(), 50, "the session's cap");
            assert!(inner.streams.len() <= 26, "{} stream rows for 50 events", inner.streams.len());
            let owned = &inner.owned["s1"];
            assert_eq!(owned.live, 50);
            assert_eq!(owned.streams.len(), inner.streams.len());
            assert!(owned.events.len() <= 2 * 50 + 64, "{} listed", owned.events.len());
        }
        store.delete_session("s1").await.unwrap();
        let inner = store.lock().unwrap();
        assert!(inner.events.is_empty() && inner.streams.is_empty() && inner.owned.is_empty());
    }
}
