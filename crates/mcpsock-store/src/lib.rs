//! Where mcpsock keeps what must outlive a request: sessions (with their
//! owner and `initialize` parameters), the SSE events of every stream, which
//! stream answers which request, and small per-session gateway state.
//!
//! [`Store`] is the one interface; [`MemoryStore`] (tests, `--memory`, the
//! library default) and [`SqliteStore`] (the daemon's default, with
//! encryption at rest) implement it with the same semantics, which the
//! shared suite in `tests/it` checks for every backend.
//!
//! The store knows nothing of MCP or rmcp: messages are opaque bytes (JSON),
//! principals are strings. The daemon adapts it to rmcp's `SessionStore` and
//! `EventStore`.
//!
//! Session ids are bearer secrets, so the database never holds them: its
//! rows are keyed by the SHA-256 of the id ([`session_key`]). The in-memory
//! store keys them by the id itself, since it lives in the process that
//! holds the ids anyway.

mod crypto;
mod memory;
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::Digest;

pub use crypto::{Cipher, EncryptionSecret, Purpose, SECRET_MIN_LEN, derive_subkey};
pub use memory::MemoryStore;
pub use sqlite::{Durability, SCHEMA_VERSION, SqliteOptions, SqliteStore};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A session as stored: its owner and the parameters of its `initialize`
/// request, replayed to restore the session after a restart.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id clients send in `Mcp-Session-Id`.
    pub id: String,
    /// The principal that opened it (`uid:1000`, `api-key`).
    pub owner: String,
    /// The `initialize` request's params, as JSON.
    pub init_params: Vec<u8>,
    pub created_at: UnixMillis,
    pub last_seen: UnixMillis,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is a bearer secret.
        f.debug_struct("SessionRecord")
            .field("owner", &self.owner)
            .field("created_at", &self.created_at)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

/// An SSE event to append to a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewEvent {
    /// The JSON-RPC message, as JSON; `None` for a priming event.
    pub message: Option<Vec<u8>>,
    /// The SSE `retry` hint, in milliseconds.
    pub retry_ms: Option<u64>,
    /// The message answers the request the stream was opened for: after it,
    /// the stream is complete.
    pub is_response: bool,
}

/// An event read back for replay, with the id the client was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub message: Option<Vec<u8>>,
    pub retry_ms: Option<u64>,
}

/// The events of one stream after a given event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub events: Vec<StoredEvent>,
    /// The stream is the session's standalone (GET) stream rather than the
    /// answer to one request.
    pub standalone: bool,
}

/// A request stream whose response was never stored: the process that
/// served it stopped first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenStream {
    /// The stream's key, to append to.
    pub stream: String,
    /// The JSON-RPC id of the request, as JSON.
    pub request_id: Vec<u8>,
}

/// What a cleanup pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub sessions: usize,
    pub events: usize,
}

/// How long things are kept.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Retention {
    /// A session unused this long is expired: it no longer loads, and the
    /// next cleanup removes it with its events and state.
    pub session_idle_ttl: Duration,
    /// Events older than this are removed by cleanup.
    pub event_max_age: Duration,
    /// Cleanup keeps at most this many events per session (the newest);
    /// a single stream is held to it as each event is appended.
    pub max_events_per_session: usize,
    /// Most bytes of events one stream keeps; the oldest go first, as each
    /// event is appended. This bounds what a flood to a client that stopped
    /// reading can cost between cleanups.
    pub max_stream_bytes: usize,
}

impl Default for Retention {
    /// One hour idle, events kept an hour, 1 000 events per session,
    /// 8 MiB per stream.
    fn default() -> Self {
        Self {
            session_idle_ttl: Duration::from_secs(3600),
            event_max_age: Duration::from_secs(3600),
            max_events_per_session: 1_000,
            max_stream_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Retention {
    pub fn session_idle_ttl(mut self, ttl: Duration) -> Self {
        self.session_idle_ttl = ttl;
        self
    }

    pub fn event_max_age(mut self, age: Duration) -> Self {
        self.event_max_age = age;
        self
    }

    pub fn max_events_per_session(mut self, max: usize) -> Self {
        self.max_events_per_session = max;
        self
    }

    pub fn max_stream_bytes(mut self, max: usize) -> Self {
        self.max_stream_bytes = max;
        self
    }
}

/// The time source of a store: the system clock, or a clock tests move.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: UnixMillis) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start))))
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.0 {
            now.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    pub fn now(&self) -> UnixMillis {
        match &self.0 {
            Some(now) => now.load(Ordering::SeqCst),
            None => SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0),
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Why a store operation or opening a store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("another mcpsock process (pid {pid}) uses the state database {path}", pid = pid.map_or_else(|| "unknown".to_string(), |pid| pid.to_string()))]
    Locked { path: std::path::PathBuf, pid: Option<u32> },
    #[error(
        "the state database {path} has schema version {found}, newer than this mcpsock supports ({supported}); upgrade mcpsock or use another --db"
    )]
    NewerSchema { path: std::path::PathBuf, found: i64, supported: i64 },
    #[error(
        "the state database {path} is damaged or not an SQLite database ({detail}); it was left untouched: move it away (or use another --db) to start with an empty one"
    )]
    Corrupt { path: std::path::PathBuf, detail: String },
    #[error(
        "the state database {path} is encrypted; pass its secret with --encryption-secret-file or MCPSOCK_ENCRYPTION_SECRET"
    )]
    MissingKey { path: std::path::PathBuf },
    #[error(
        "the encryption secret does not open the state database {path}; pass the secret it was created with, or use another --db"
    )]
    WrongKey { path: std::path::PathBuf },
    #[error(
        "the state database {path} was created without encryption and is not re-keyed silently; use another --db for an encrypted store, or drop the encryption secret"
    )]
    NotEncrypted { path: std::path::PathBuf },
    #[error("{0}")]
    Secret(String),
    #[error("cannot use the state database {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored value failed authentication: the database was modified or rows were swapped")]
    Tampered,
    #[error("the state database could not commit: {0}")]
    Commit(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Another process holds the store: the same situation as a second
    /// daemon on a socket that is already served.
    pub fn is_already_running(&self) -> bool {
        matches!(self, Self::Locked { .. })
    }

    /// The store was refused at start for a reason the user must fix
    /// (schema, damage, keys).
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::NewerSchema { .. }
                | Self::Corrupt { .. }
                | Self::MissingKey { .. }
                | Self::WrongKey { .. }
                | Self::NotEncrypted { .. }
                | Self::Secret(_)
        )
    }
}

/// A stream's binding still being committed (see [`Store::open_stream`]).
pub type Binding = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// The storage interface every backend implements with the same semantics.
///
/// Event ids are random (128 bits), unique across the store, and handed out
/// only once the event is committed: an id a client holds is never lost to
/// a crash.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Records a new session, or replaces the record of the same id.
    async fn put_session(&self, session: SessionRecord) -> Result<(), StoreError>;

    /// The session, unless it is unknown or has expired.
    async fn load_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Marks the session used now. Never waits; a lost touch costs at most
    /// an earlier expiry.
    fn touch_session(&self, id: &str);

    /// Removes the session with its streams, events and state.
    async fn delete_session(&self, id: &str) -> Result<(), StoreError>;

    /// Appends an event to `stream` and returns its id once committed.
    /// `session` binds a standalone stream to its session on first use.
    async fn append_event(
        &self,
        stream: &str,
        session: Option<&str>,
        event: NewEvent,
    ) -> Result<String, StoreError>;

    /// Appends an event and returns its id at once, before it is committed:
    /// it commits with (or before) the next operation on this store whose
    /// result is awaited. Only for an event whose id the caller withholds
    /// from clients until such an operation returned, e.g. a stream's first
    /// event, held back until [`Store::bind_stream`] recorded the stream.
    fn append_event_deferred(&self, stream: &str, event: NewEvent) -> String;

    /// Binds the stream of `event_id` to `session` as the answer to the
    /// request `request_id` (JSON).
    async fn bind_stream(&self, event_id: &str, session: &str, request_id: &[u8]) -> Result<(), StoreError>;

    /// Opens a request's stream: appends its first event and binds the
    /// stream to `session` as the answer to `request_id` (JSON). Returns the
    /// event's id and, unless both are committed already, the binding still
    /// under way: the id must not reach a client before it is done, and the
    /// request may run meanwhile. By default [`Store::append_event_deferred`]
    /// and then [`Store::bind_stream`], which SQLite commits with the next
    /// event stored (the request's answer, when it comes soon).
    fn open_stream(
        self: Arc<Self>,
        stream: &str,
        session: &str,
        request_id: Vec<u8>,
        first: NewEvent,
    ) -> Result<(String, Option<Binding>), StoreError> {
        let id = self.append_event_deferred(stream, first);
        let (event_id, session) = (id.clone(), session.to_string());
        let binding: Binding =
            Box::pin(async move { self.bind_stream(&event_id, &session, &request_id).await });
        Ok((id, Some(binding)))
    }

    /// The events after `event_id` on its stream, when that event exists
    /// and its stream belongs to `session`; `None` otherwise.
    async fn replay_after(&self, session: &str, event_id: &str) -> Result<Option<Replay>, StoreError>;

    /// Request streams of live sessions that never got their response.
    async fn open_streams(&self) -> Result<Vec<OpenStream>, StoreError>;

    /// Sets one value of a session's gateway state.
    async fn put_state(&self, session: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// All of a session's gateway state, by key.
    async fn load_state(&self, session: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes expired sessions (with everything they own), events older
    /// than the retention age and events over the per-session cap.
    async fn purge(&self) -> Result<Purged, StoreError>;

    /// Writes everything out and releases the store (for SQLite: checkpoints
    /// the WAL and unlocks the file). Later calls fail with `Closed`.
    async fn close(&self) -> Result<(), StoreError>;
}

/// The key a session is stored under: SHA-256 of its id, so the database
/// never holds a usable session id.
pub fn session_key(id: &str) -> Vec<u8> {
    sha2::Sha256::digest(id.as_bytes()).to_vec()
}

/// The id of the event with sequence number `seq`: the number (so a
/// backend finds the event by its position, without an index on random
/// ids) and 64 random bits (so nobody can guess an id), in hex.
fn event_id(seq: u64) -> String {
    format_event_id(seq, random_tag())
}

/// 64 bits from the OS random number generator, drawn from a per-thread
/// buffer so that an event costs no system call of its own.
fn random_tag() -> u64 {
    const BUFFERED: usize = 64;
    thread_local! {
        static POOL: std::cell::RefCell<([u64; BUFFERED], usize)> =
            const { std::cell::RefCell::new(([0; BUFFERED], BUFFERED)) };
    }
    POOL.with_borrow_mut(|(pool, next)| {
        if *next == BUFFERED {
            let mut bytes = [0u8; BUFFERED * 8];
            // getrandom fails only without any OS randomness source, where
            // nothing secure can run at all.
            getrandom::fill(&mut bytes).expect("the OS random number generator failed");
            for (slot, chunk) in pool.iter_mut().zip(bytes.chunks_exact(8)) {
                *slot = u64::from_le_bytes(chunk.try_into().expect("8-byte chunks"));
            }
            *next = 0;
        }
        let tag = pool[*next];
        // Never hand out the same bits twice.
        pool[*next] = 0;
        *next += 1;
        tag
    })
}

/// The id of event `seq` with random `tag`.
fn format_event_id(seq: u64, tag: u64) -> String {
    let mut text = String::with_capacity(32);
    push_hex(&mut text, &seq.to_be_bytes());
    push_hex(&mut text, &tag.to_be_bytes());
    text
}

/// The sequence number and random tag of an event id.
fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    if !is_event_id(id) {
        return None;
    }
    let seq = u64::from_str_radix(&id[..16], 16).ok()?;
    let tag = u64::from_str_radix(&id[16..], 16).ok()?;
    Some((seq, tag))
}

/// Whether `id` has the shape of an event id this store hands out; anything
/// else (garbage, overlong) is answered without touching the backend.
pub fn is_event_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Appends `bytes` to `text` in lower-case hex.
pub fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Written into a buffer and appended at once: `String::push` checks
    // capacity and encodes UTF-8 for every character.
    let mut buffer = [0u8; 64];
    for chunk in bytes.chunks(buffer.len() / 2) {
        let digits = &mut buffer[..chunk.len() * 2];
        for (pair, byte) in digits.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        text.push_str(std::str::from_utf8(digits).expect("hex digits are ASCII"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte_at_any_length() {
        let mut text = String::from("x");
        push_hex(&mut text, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(text, "x000fa5ff");
        let long: Vec<u8> = (0..=255).collect();
        let mut text = String::new();
        push_hex(&mut text, &long);
        let expected: String = long.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn an_event_id_reads_back_as_its_sequence_and_tag() {
        let id = format_event_id(7, 0xdead_beef_0123_4567);
        assert_eq!(id, "0000000000000007deadbeef01234567");
        assert!(is_event_id(&id));
        assert_eq!(parse_event_id(&id), Some((7, 0xdead_beef_0123_4567)));
        assert_eq!(parse_event_id("0000000000000007DEADBEEF01234567"), None);
    }
}
