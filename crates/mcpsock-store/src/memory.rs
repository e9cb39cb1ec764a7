//! The in-memory store: the semantics of the SQLite store without a file,
//! for tests, `--memory` and the library default.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{
    Clock, NewEvent, OpenStream, Purged, Replay, Retention, SessionRecord, Store, StoreError, StoredEvent,
    session_key,
};

/// Every this many appends, sessions over `max_events_per_session` are
/// trimmed at once, so the cap holds between cleanups under any load.
const TRIM_SESSIONS_EVERY: u64 = 1024;

/// Sessions and events in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    retention: Retention,
    clock: Clock,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    sessions: HashMap<Vec<u8>, SessionRecord>,
    streams: HashMap<String, StreamRow>,
    /// Events by sequence number, so iteration is in append order.
    events: BTreeMap<u64, EventRow>,
    event_seq: HashMap<String, u64>,
    /// Each stream's events (sequence number, size) and their total size.
    stream_events: HashMap<String, (VecDeque<(u64, usize)>, usize)>,
    next_seq: u64,
    state: HashMap<Vec<u8>, BTreeMap<String, Vec<u8>>>,
}

#[derive(Debug)]
struct StreamRow {
    session: Vec<u8>,
    request_id: Option<Vec<u8>>,
}

#[derive(Debug)]
struct EventRow {
    id: String,
    stream: String,
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
    fn remove_session(&mut self, key: &[u8]) -> usize {
        self.sessions.remove(key);
        self.state.remove(key);
        let streams: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, row)| row.session == key)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in &streams {
            self.streams.remove(stream);
            self.stream_events.remove(stream);
        }
        let doomed: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, event)| streams.contains(&event.stream))
            .map(|(seq, _)| *seq)
            .collect();
        self.remove_events(&doomed)
    }

    fn remove_events(&mut self, seqs: &[u64]) -> usize {
        for seq in seqs {
            if let Some(event) = self.events.remove(seq) {
                self.event_seq.remove(&event.id);
                if let Some((queue, bytes)) = self.stream_events.get_mut(&event.stream) {
                    if let Some(position) = queue.iter().position(|(queued, _)| queued == seq)
                        && let Some((_, size)) = queue.remove(position)
                    {
                        *bytes -= size;
                    }
                    if queue.is_empty() {
                        self.stream_events.remove(&event.stream);
                    }
                }
            }
        }
        seqs.len()
    }

    /// Per session, keeps the newest `cap` events; returns how many went.
    fn trim_sessions(&mut self, cap: usize) -> usize {
        let mut per_session: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
        for (seq, event) in self.events.iter().rev() {
            if let Some(row) = self.streams.get(&event.stream) {
                per_session.entry(row.session.clone()).or_default().push(*seq);
            }
        }
        let over: Vec<u64> = per_session.into_values().flat_map(|seqs| seqs.into_iter().skip(cap)).collect();
        self.remove_events(&over)
    }

    /// Drops a stream's oldest events until it is within both bounds.
    fn trim_stream(&mut self, stream: &str, max_events: usize, max_bytes: usize) {
        let mut doomed = Vec::new();
        if let Some((queue, bytes)) = self.stream_events.get_mut(stream) {
            while queue.len() > max_events || (*bytes > max_bytes && queue.len() > 1) {
                let Some((seq, size)) = queue.pop_front() else { break };
                *bytes -= size;
                doomed.push(seq);
            }
        }
        for seq in doomed {
            if let Some(event) = self.events.remove(&seq) {
                self.event_seq.remove(&event.id);
            }
        }
    }
}

impl MemoryStore {
    fn append(&self, stream: &str, session: Option<&str>, event: NewEvent) -> Result<String, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock()?;

        if let Some(session) = session {
            inner
                .streams
                .entry(stream.to_string())
                .or_insert_with(|| StreamRow { session: session_key(session), request_id: None });
        }
        let seq = inner.next_seq;
        let id = crate::event_id(seq);
        inner.next_seq += 1;
        inner.event_seq.insert(id.clone(), seq);
        let size = event.message.as_ref().map_or(0, Vec::len);
        let (queue, bytes) = inner.stream_events.entry(stream.to_string()).or_default();
        queue.push_back((seq, size));
        *bytes += size;
        inner.events.insert(
            seq,
            EventRow {
                id: id.clone(),
                stream: stream.to_string(),
                created_at: now,
                retry_ms: event.retry_ms,
                message: event.message,
                is_response: event.is_response,
            },
        );
        inner.trim_stream(stream, self.retention.max_events_per_session, self.retention.max_stream_bytes);
        if seq % TRIM_SESSIONS_EVERY == TRIM_SESSIONS_EVERY - 1 {
            inner.trim_sessions(self.retention.max_events_per_session);
        }
        Ok(id)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn put_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        self.lock()?.sessions.insert(session_key(&session.id), session);
        Ok(())
    }

    async fn load_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock()?;
        Ok(inner.sessions.get(&session_key(id)).filter(|session| !self.expired(session, now)).cloned())
    }

    fn touch_session(&self, id: &str) {
        let now = self.clock.now();
        if let Ok(mut inner) = self.lock()
            && let Some(session) = inner.sessions.get_mut(&session_key(id))
        {
            session.last_seen = session.last_seen.max(now);
        }
    }

    async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        self.lock()?.remove_session(&session_key(id));
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
        self.append(stream, session, event)
    }

    async fn bind_stream(&self, event_id: &str, session: &str, request_id: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let Some(stream) = inner
            .event_seq
            .get(event_id)
            .and_then(|seq| inner.events.get(seq))
            .map(|event| event.stream.clone())
        else {
            return Ok(());
        };
        inner.streams.entry(stream).or_insert_with(|| StreamRow {
            session: session_key(session),
            request_id: Some(request_id.to_vec()),
        });
        Ok(())
    }

    async fn replay_after(&self, session: &str, event_id: &str) -> Result<Option<Replay>, StoreError> {
        let inner = self.lock()?;
        let Some(&seq) = inner.event_seq.get(event_id) else { return Ok(None) };
        let Some(stream) = inner.events.get(&seq).map(|event| event.stream.clone()) else { return Ok(None) };
        let Some(row) = inner.streams.get(&stream) else { return Ok(None) };
        if row.session != session_key(session) {
            return Ok(None);
        }
        let events = inner
            .events
            .range(seq + 1..)
            .filter(|(_, event)| event.stream == stream)
            .map(|(_, event)| StoredEvent {
                id: event.id.clone(),
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
                inner.sessions.get(&row.session).is_some_and(|session| !self.expired(session, now))
            })
            .filter_map(|(stream, row)| Some((stream, row.request_id.clone()?)))
            .filter(|(stream, _)| {
                !inner.events.values().any(|event| &event.stream == *stream && event.is_response)
            })
            .map(|(stream, request_id)| {
                let first =
                    inner.events.iter().find(|(_, event)| &event.stream == stream).map_or(0, |(seq, _)| *seq);
                (first, OpenStream { stream: stream.clone(), request_id })
            })
            .collect();
        open.sort_by_key(|(first, _)| *first);
        Ok(open.into_iter().map(|(_, stream)| stream).collect())
    }

    async fn put_state(&self, session: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.lock()?.state.entry(session_key(session)).or_default().insert(key.to_string(), value);
        Ok(())
    }

    async fn load_state(&self, session: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .state
            .get(&session_key(session))
            .map(|values| values.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
            .unwrap_or_default())
    }

    async fn purge(&self) -> Result<Purged, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let mut purged = Purged::default();
        let expired: Vec<Vec<u8>> = inner
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
        purged.events += inner.remove_events(&old);
        purged.events += inner.trim_sessions(self.retention.max_events_per_session);
        Ok(purged)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.lock()?.closed = true;
        Ok(())
    }
}
