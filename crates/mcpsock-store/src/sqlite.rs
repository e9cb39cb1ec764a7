//! The SQLite store: one file (WAL mode, 0600), one writer thread that
//! commits work in batches, optional encryption of every stored value.
//!
//! All statements run on the writer thread. Callers queue a job and wait for
//! its reply, which is sent only after the batch holding the job committed:
//! an event id reaches a client only once its event is durable (against a
//! process crash with `synchronous=NORMAL`, against power loss with `FULL`).
//! Many concurrent requests share one commit, so persistence costs little
//! throughput.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::crypto::{Cipher, EncryptionSecret, Purpose};
use crate::{
    Clock, NewEvent, OpenStream, Purged, Replay, Retention, SessionRecord, Store, StoreError, StoredEvent,
    millis, session_key,
};

/// The tables here are keyed by numbers, stream names and session
/// keys mcpsock makes itself: hashed fast.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most request streams remembered as opened but not yet bound.
const MAX_UNBOUND: usize = 4096;

/// The schema, one entry per version; `PRAGMA user_version` records how many
/// have been applied. Entries are never edited once released, only added.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, streams, events, per-session state. Streams and events
    // are numbered in the order they are created, and indexed by those
    // numbers only, so each commit appends to the right edge of every
    // B-tree instead of rewriting random pages (event ids carry their
    // number; streams are found by rmcp's name through the writer's cache).
    "CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        key BLOB PRIMARY KEY,
        owner TEXT NOT NULL,
        init_params BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE streams (
        no INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        session BLOB,
        request_id BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX streams_by_session ON streams (session);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        tag INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        retry_ms INTEGER,
        message BLOB,
        response INTEGER NOT NULL
    );
    CREATE INDEX events_by_stream ON events (stream, seq);
    CREATE TABLE state (
        session BLOB NOT NULL,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (session, name)
    ) WITHOUT ROWID;",
    // 2: no index of streams by session. Sessions' keys are random, so each
    // commit of a busy daemon rewrote one page of that index per session it
    // served: over half of the pages written per request, and 60% of the
    // time spent in SQLite. The writer keeps each session's streams in
    // memory instead (`Writer::members`, read back at start). A session's
    // standalone streams (one per name, looked up on first use) keep a
    // small index of their own; request streams never enter it.
    "DROP INDEX streams_by_session;
    CREATE INDEX standalone_streams ON streams (session, name) WHERE request_id IS NULL;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: a committed write survives a crash of the
    /// process; a power loss may lose the last commits (never corrupts).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it is reported.
    Full,
}

/// Where the database lives and how it is kept.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// Encrypt every stored value with keys derived from this secret.
    pub secret: Option<EncryptionSecret>,
    pub retention: Retention,
    pub clock: Clock,
    /// When the log is copied back and started over; fixed outside tests.
    pub(crate) checkpoints: CheckpointPolicy,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Normal,
            secret: None,
            retention: Retention::default(),
            clock: Clock::system(),
            checkpoints: CheckpointPolicy::default(),
        }
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn secret(mut self, secret: Option<EncryptionSecret>) -> Self {
        self.secret = secret;
        self
    }

    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
/// Work that rides with the next awaited job (see `SqliteStore::hold`); its
/// reply runs once that job's batch committed.
type HeldWork = Box<dyn FnOnce(&Writer) -> Reply + Send>;
/// How long a held binding may wait for company before it is sent alone.
const HOLD_AT_MOST: Duration = Duration::from_millis(1);
/// Most held work before it is sent on without waiting for company.
const MAX_HELD: usize = 256;

#[derive(Default)]
struct Held(Mutex<Vec<HeldWork>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

enum Job {
    Run(Box<dyn FnOnce(&Writer) -> Reply + Send>),
    /// Copy the whole log back, between two batches (see `Checkpointer`).
    Checkpoint,
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// The store handle: queues jobs for the writer thread.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Work waiting to ride with the next awaited job.
    held: Held,
    /// When each session's use was last written: a busy session is written
    /// at most once per [`TOUCH_INTERVAL_MS`].
    touched: Mutex<HashMap<Vec<u8>, i64>>,
    clock: Clock,
    /// The next event's sequence number: allocated by the caller, so an id
    /// is known before its event is written (see `append_event_deferred`).
    next_seq: std::sync::atomic::AtomicU64,
}

/// How stale a stored "last seen" may be; far below any sensible TTL.
const TOUCH_INTERVAL_MS: i64 = 1000;

/// What the writer thread owns. Field order matters: the connection closes
/// before the lock file is released.
struct Writer {
    connection: Connection,
    cipher: Option<Cipher>,
    retention: Retention,
    clock: Clock,
    /// Events and bytes appended per stream since it was last trimmed (or
    /// since start, or the last cleanup): a stream is trimmed once these
    /// pass a quarter of its bounds, so each append stays cheap.
    appended: RefCell<HashMap<i64, (usize, usize)>>,
    /// Events that joined each session since its last trim.
    joined: RefCell<HashMap<Vec<u8>, usize>>,
    /// rmcp's stream names → (stream number, standalone) for the streams
    /// this process writes to.
    streams: RefCell<HashMap<String, (i64, bool)>>,
    /// The request streams opened here and not yet bound to their session,
    /// by the sequence number of their first event. Such a stream has a
    /// number but no row yet: binding, which follows at once, writes its
    /// row whole, so a stream costs one insert, not an insert and an update.
    unbound: RefCell<HashMap<i64, Unbound>>,
    /// The streams of each session (request streams once bound, and
    /// standalone streams), by session key; read from the database at
    /// start. The database has no index of streams by session (see
    /// migration 2): deleting or trimming a session finds its streams here.
    members: RefCell<HashMap<Vec<u8>, Vec<i64>>>,
    /// The number of the next stream opened.
    next_stream: Cell<i64>,
    _lock: File,
}

/// A request stream opened but not yet bound (see `Writer::unbound`).
struct Unbound {
    tag: i64,
    stream: i64,
    name: String,
    created_at: i64,
}

impl SqliteStore {
    /// Opens (or creates) the database and starts its writer thread.
    ///
    /// Refuses, leaving the file untouched, when another process holds it,
    /// when its schema is newer than this build's, when it is damaged, or
    /// when the encryption secret is missing, wrong, or given for a
    /// database created without encryption. Blocks while it checks the file.
    pub fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        let SqliteOptions { path, durability, secret, retention, clock, checkpoints } = options;
        let io = |source| StoreError::Io { path: path.clone(), source };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty())
            && !parent.exists()
        {
            DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io)?;
        }
        let lock = lock_file(&path)?;
        prepare_files(&path).map_err(io)?;
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| classify(&path, error))?;
        rusqlite::vtab::array::load_module(&connection).map_err(|error| classify(&path, error))?;
        check_integrity(&connection, &path)?;
        configure(&connection, durability).map_err(|error| classify(&path, error))?;
        migrate(&connection, &path)?;
        let cipher = check_keys(&connection, &path, secret.as_ref())?;
        let writer = Writer {
            connection,
            cipher,
            retention,
            clock: clock.clone(),
            appended: RefCell::default(),
            streams: RefCell::default(),
            unbound: RefCell::default(),
            joined: RefCell::default(),
            members: RefCell::default(),
            next_stream: Cell::new(1),
            _lock: lock,
        };
        let next_seq = writer.recall().map_err(|error| classify(&path, error))?;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let checkpointer = Checkpointer::start(&path, checkpoints, jobs.downgrade())?;
        let answers = answer_task();
        std::thread::Builder::new()
            .name("mcpsock-store".into())
            .spawn(move || write_loop(writer, receiver, answers, checkpointer))
            .map_err(io)?;
        tracing::info!(db = %path.display(), encrypted = secret.is_some(), "state database open");
        Ok(Self {
            path,
            jobs: Mutex::new(Some(jobs)),
            held: Held::default(),
            touched: Mutex::default(),
            clock,
            next_seq: std::sync::atomic::AtomicU64::new(u64::try_from(next_seq).unwrap_or(1)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh event's sequence number, tag and id.
    fn next_event_id(&self) -> (i64, i64, String) {
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = crate::event_id(seq);
        let (_, tag) = crate::parse_event_id(&id).expect("a fresh id parses");
        (seq as i64, tag as i64, id)
    }

    /// Queues work nobody waits for without waking the writer: it runs
    /// just before the next job somebody awaits, in the same batch (so a
    /// stream's first event and its binding, which always follows, cost one
    /// commit, not two). Too much of it is sent on at once.
    fn hold(&self, work: HeldWork) {
        let mut held = self.held();
        held.push(work);
        if held.len() >= MAX_HELD {
            self.send_alone(&mut held);
        }
    }

    /// Sends the held work on by itself, if there is any.
    fn send_held(&self) {
        self.send_alone(&mut self.held());
    }

    /// Sends `held` (under its lock) as a job of its own, if there is any.
    fn send_alone(&self, held: &mut Vec<HeldWork>) {
        if !held.is_empty() {
            self.send_with(held, |_| Box::new(|_: Option<&str>| {}));
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<HeldWork>> {
        self.held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends one job: the held work, then `work`. Called with the held
    /// work's lock held, so jobs reach the writer in the order their held
    /// work was taken: a stream's binding never overtakes its first event
    /// (taken by another request's job on another thread).
    fn send_with(
        &self,
        held: &mut Vec<HeldWork>,
        work: impl FnOnce(&Writer) -> Reply + Send + 'static,
    ) -> bool {
        let earlier = std::mem::take(held);
        let job = Job::Run(Box::new(move |writer: &Writer| {
            let replies: Vec<Reply> = earlier.into_iter().map(|work| work(writer)).collect();
            let last = work(writer);
            Box::new(move |commit_error: Option<&str>| {
                for reply in replies {
                    reply(commit_error);
                }
                last(commit_error);
            })
        }));
        self.sender().is_some_and(|jobs| jobs.send(job).is_ok())
    }

    fn sender(&self) -> Option<mpsc::UnboundedSender<Job>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Runs `work` on the writer thread and returns its result once the
    /// batch that ran it has committed.
    async fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send_with(&mut self.held(), move |writer| {
            let result = work(writer);
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(error) => Err(StoreError::Commit(error.to_string())),
                    None => result,
                };
                let _ = reply.send(result);
            })
        });
        if !sent {
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Takes the exclusive lock that makes one process the database's only
/// user, and writes our pid into the lock file for the next one's message.
fn lock_file(path: &Path) -> Result<File, StoreError> {
    let lock_path = with_suffix(path, ".lock");
    let io = |source| StoreError::Io { path: lock_path.clone(), source };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(io)?;
    if let Err(error) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        if error == rustix::io::Errno::WOULDBLOCK {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::Locked { path: path.to_path_buf(), pid: text.trim().parse().ok() });
        }
        return Err(io(error.into()));
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates the database file 0600 when missing, and narrows the mode of an
/// existing database and its `-wal`/`-shm` files to 0600 (SQLite gives the
/// side files the database's mode). Symlinks are refused, not followed.
fn prepare_files(path: &Path) -> std::io::Result<()> {
    let open = |path: &Path, create: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    };
    for (file_path, create) in
        [(path.to_path_buf(), true), (with_suffix(path, "-wal"), false), (with_suffix(path, "-shm"), false)]
    {
        let file = match open(&file_path, create) {
            Ok(file) => file,
            Err(error) if !create && error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(std::io::Error::new(error.kind(), format!("{}: {error}", file_path.display())));
            }
        };
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other(format!("{} is not a regular file", file_path.display())));
        }
        if metadata.mode() & 0o077 != 0 {
            tracing::warn!(file = %file_path.display(), mode = format!("{:o}", metadata.mode() & 0o777), "narrowing the state file's mode to 0600");
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn classify(path: &Path, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.to_path_buf(), detail: error.to_string() }
        }
        _ => StoreError::Sqlite(error),
    }
}

/// A damaged file is refused before anything is written to it.
fn check_integrity(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let verdict: String = connection
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|error| classify(path, error))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt { path: path.to_path_buf(), detail: verdict });
    }
    Ok(())
}

fn configure(connection: &Connection, durability: Durability) -> rusqlite::Result<()> {
    // Every commit writes each page it dirtied to the log, one system call
    // per frame. With 4 KiB pages (SQLite's default) a batch of events
    // dirties fewer pages than with 1 KiB ones, whose leaves split every few
    // events; measured, about half the writes per request. Takes effect only
    // when the database is created.
    connection.execute_batch("PRAGMA page_size = 4096;")?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the state database is not in WAL mode");
    }
    connection.execute_batch(match durability {
        Durability::Normal => "PRAGMA synchronous = NORMAL;",
        Durability::Full => "PRAGMA synchronous = FULL;",
    })?;
    // The log is copied back by the checkpointer thread (see `Checkpointer`),
    // never by a commit: a checkpoint waits for the disk twice, and the
    // writer must not.
    connection.execute_batch(
        "PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -8192;",
    )?;
    connection.execute_batch(&format!("PRAGMA journal_size_limit = {LOG_SIZE_LIMIT};"))?;
    Ok(())
}

fn migrate(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|error| classify(path, error))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { path: path.to_path_buf(), found, supported: SCHEMA_VERSION });
    }
    let applied = usize::try_from(found).unwrap_or(0);
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index + 1;
        let script = format!("BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {version}; COMMIT;");
        connection.execute_batch(&script).map_err(|error| {
            let _ = connection.execute_batch("ROLLBACK");
            classify(path, error)
        })?;
        tracing::info!(db = %path.display(), version, "state database schema migrated");
    }
    Ok(())
}

/// Records, on first use, whether the database is encrypted (with a random
/// salt and a sealed check value); on later opens, insists on the same
/// answer and a secret that opens the check value.
fn check_keys(
    connection: &Connection,
    path: &Path,
    secret: Option<&EncryptionSecret>,
) -> Result<Option<Cipher>, StoreError> {
    const CHECK_AAD: &[u8] = b"mcpsock key check";
    const CHECK_VALUE: &[u8] = b"mcpsock";
    let meta = |name: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(connection
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| row.get(0))
            .optional()?)
    };
    match (meta("encrypted")?, secret) {
        (None, secret) => {
            let encrypted: &[u8] = if secret.is_some() { b"1" } else { b"0" };
            let cipher = match secret {
                Some(secret) => {
                    let mut salt = [0u8; 32];
                    getrandom::fill(&mut salt).expect("the OS random number generator failed");
                    let cipher = Cipher::new(secret, &salt);
                    let check = cipher.seal(Purpose::KeyCheck, CHECK_AAD, CHECK_VALUE);
                    connection.execute("INSERT INTO meta (name, value) VALUES ('salt', ?1)", [&salt[..]])?;
                    connection
                        .execute("INSERT INTO meta (name, value) VALUES ('key_check', ?1)", [&check])?;
                    Some(cipher)
                }
                None => None,
            };
            connection.execute("INSERT INTO meta (name, value) VALUES ('encrypted', ?1)", [encrypted])?;
            Ok(cipher)
        }
        (Some(flag), None) if flag == b"1" => Err(StoreError::MissingKey { path: path.to_path_buf() }),
        (Some(_), None) => Ok(None),
        (Some(flag), Some(_)) if flag != b"1" => Err(StoreError::NotEncrypted { path: path.to_path_buf() }),
        (Some(_), Some(secret)) => {
            let salt = meta("salt")?.ok_or(StoreError::Tampered)?;
            let check = meta("key_check")?.ok_or(StoreError::Tampered)?;
            let cipher = Cipher::new(secret, &salt);
            match cipher.open(Purpose::KeyCheck, CHECK_AAD, &check) {
                Ok(value) if value == CHECK_VALUE => Ok(Some(cipher)),
                _ => Err(StoreError::WrongKey { path: path.to_path_buf() }),
            }
        }
    }
}

/// When the checkpointer copies the log back into the database, and when
/// it has the log started over.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckpointPolicy {
    /// How often the log is copied back while commits arrive.
    pub(crate) interval: Duration,
    /// Log frames (pages) past which the writer copies the rest of the log
    /// back itself, so that the log is written from its start again.
    pub(crate) restart_frames: i64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        // 4,096 frames of 4 KiB: the log file stays near 16 MiB plus one
        // interval's traffic, however long the load lasts.
        Self { interval: Duration::from_millis(100), restart_frames: 4096 }
    }
}

/// The most a log file keeps on disk when it starts over (SQLite truncates
/// a longer one then): room for the restart point and a burst above it.
const LOG_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// A thread with a connection of its own that copies the write-ahead log
/// back into the database (a passive checkpoint, which never blocks the
/// writer) every [`CheckpointPolicy::interval`] after a commit. Done by the
/// writer, as SQLite does by default, each checkpoint's two waits for the
/// disk would stall every request waiting for a commit.
///
/// SQLite writes the log from its start again only when a write begins
/// after a checkpoint copied all of it. Under steady load a commit always
/// lands while this thread's checkpoint runs, so the log would only grow
/// (by gigabytes, and every commit would pay for the file growing). Once
/// the log passes [`CheckpointPolicy::restart_frames`], the writer is asked
/// to copy the little left between two batches, when nothing can land.
struct Checkpointer {
    /// Set by the writer after each commit.
    dirty: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(
        path: &Path,
        policy: CheckpointPolicy,
        writer: mpsc::WeakUnboundedSender<Job>,
    ) -> Result<Self, StoreError> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| classify(path, error))?;
        let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let seen = dirty.clone();
        let thread = std::thread::Builder::new()
            .name("mcpsock-store-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(policy.interval)
                {
                    if seen.swap(false, std::sync::atomic::Ordering::AcqRel) {
                        checkpoint_round(&connection, &writer, policy.restart_frames);
                    }
                }
            })
            .map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        Ok(Self { dirty, stop: Some(stop), thread: Some(thread) })
    }

    fn committed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops the thread and closes its connection.
    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One round of the checkpointer: a passive checkpoint on its own
/// connection; then, if the log is long, a checkpoint by the writer.
fn checkpoint_round(connection: &Connection, writer: &mpsc::WeakUnboundedSender<Job>, restart_frames: i64) {
    if copy_log_back(connection).is_some_and(|frames| frames >= restart_frames)
        && let Some(jobs) = writer.upgrade()
    {
        let _ = jobs.send(Job::Checkpoint);
    }
}

/// A passive checkpoint on `connection`: the frames in the log, or `None`
/// when it could not run (another checkpoint running is not worth a word:
/// the next one catches up).
fn copy_log_back(connection: &Connection) -> Option<i64> {
    // The pragma's row: whether it was blocked, the frames in the log, the
    // frames copied back.
    match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1)) {
        Ok(frames) => Some(frames),
        Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => None,
        Err(error) => {
            tracing::warn!(%error, "could not copy the state database's log back");
            None
        }
    }
}

/// A batch's replies and its commit error, if any.
type Answers = (Vec<Reply>, Option<String>);

/// A task on the caller's runtime that hands each committed batch's replies
/// to their waiters. Each waiter wakes a task on that runtime; done from the
/// writer thread, the first wake would let the scheduler switch to the
/// runtime's thread and back for every reply. `None` outside a runtime.
fn answer_task() -> Option<mpsc::UnboundedSender<Answers>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (answers, mut batches) = mpsc::unbounded_channel::<Answers>();
    runtime.spawn(async move {
        while let Some((replies, commit_error)) = batches.recv().await {
            for reply in replies {
                reply(commit_error.as_deref());
            }
        }
    });
    Some(answers)
}

/// The writer thread: runs queued jobs in batches, one transaction each.
fn write_loop(
    writer: Writer,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    answers: Option<mpsc::UnboundedSender<Answers>>,
    mut checkpointer: Checkpointer,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        // Woken by the first job, let a thread that shares this core (the
        // runtime's, queueing more) run on first: the batch grows and
        // commits fewer times. Measured with the server pinned to one core,
        // as bench.py runs it: 0.27 context switches per request instead of
        // 0.46. With a core to itself, this returns at once.
        std::thread::yield_now();
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut close = None;
        let mut checkpoint = false;
        let begun = writer.connection.execute_batch("BEGIN IMMEDIATE");
        for job in batch.drain(..) {
            match job {
                Job::Run(work) => replies.push(work(&writer)),
                Job::Checkpoint => checkpoint = true,
                Job::Close(reply) => close = Some(reply),
            }
        }
        let committed = begun.and_then(|()| writer.connection.execute_batch("COMMIT"));
        let commit_error = committed.as_ref().err().map(ToString::to_string);
        checkpointer.committed();
        if let Some(error) = &commit_error {
            tracing::error!(%error, "a state database batch failed to commit");
            let _ = writer.connection.execute_batch("ROLLBACK");
        }
        let batch_replies = std::mem::replace(&mut replies, Vec::with_capacity(MAX_BATCH));
        let undelivered = match &answers {
            Some(answers) => answers.send((batch_replies, commit_error)).err().map(|failed| failed.0),
            // No runtime to hand them to (or it is gone): answer from here.
            None => Some((batch_replies, commit_error)),
        };
        if let Some((batch_replies, commit_error)) = undelivered {
            for reply in batch_replies {
                reply(commit_error.as_deref());
            }
        }
        if checkpoint && close.is_none() {
            // No commit can land while this runs, so it copies the whole log
            // and the next batch writes the log from its start again.
            copy_log_back(&writer.connection);
        }
        if let Some(reply) = close {
            // The last checkpoint empties the log; nothing may hold it then.
            checkpointer.stop();
            let checkpoint = writer
                .connection
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(StoreError::from);
            // The caller may reopen the database as soon as it hears back:
            // close the connection and release the lock first.
            drop(writer);
            let _ = reply.send(checkpoint);
            return;
        }
    }
}

impl Writer {
    /// `value` sealed when the database is encrypted, as it is otherwise.
    /// `aad` is made only when it is needed.
    fn seal(&self, purpose: Purpose, aad: impl FnOnce() -> Vec<u8>, value: Vec<u8>) -> Vec<u8> {
        match &self.cipher {
            Some(cipher) => cipher.seal(purpose, &aad(), &value),
            None => value,
        }
    }

    fn open(&self, purpose: Purpose, aad: &[u8], value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match &self.cipher {
            Some(cipher) => cipher.open(purpose, aad, &value),
            None => Ok(value),
        }
    }

    /// Sessions last seen before this are expired.
    fn expiry_cutoff(&self) -> i64 {
        self.clock.now().saturating_sub(millis(self.retention.session_idle_ttl))
    }

    /// Reads back what the writer keeps in memory about the database: each
    /// session's streams, and the next stream number. Returns the next
    /// event's sequence number.
    fn recall(&self) -> rusqlite::Result<i64> {
        self.load_members()?;
        // Past every number an event still names, not only the streams
        // that have rows: a stream's row is written when it is bound.
        let next_stream: i64 = self.connection.query_row(
            "SELECT max(coalesce((SELECT max(no) FROM streams), 0),
                        coalesce((SELECT max(stream) FROM events), 0)) + 1",
            [],
            |row| row.get(0),
        )?;
        self.next_stream.set(next_stream);
        self.connection.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events", [], |row| row.get(0))
    }

    /// Reads each session's streams from the database.
    fn load_members(&self) -> rusqlite::Result<()> {
        let mut members: HashMap<Vec<u8>, Vec<i64>> = HashMap::default();
        let mut statement =
            self.connection.prepare_cached("SELECT session, no FROM streams WHERE session IS NOT NULL")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            members.entry(row.get(0)?).or_default().push(row.get(1)?);
        }
        *self.members.borrow_mut() = members;
        Ok(())
    }

    /// The streams of `session`, as a parameter for `rarray(?)`.
    fn members_of(&self, session: &[u8]) -> Rc<Vec<Value>> {
        array(self.members.borrow().get(session).into_iter().flatten().copied())
    }

    /// Records that `stream` now belongs to `session`.
    fn join(&self, session: &[u8], stream: i64) -> Result<(), StoreError> {
        self.members.borrow_mut().entry(session.to_vec()).or_default().push(stream);
        self.note_session_events(session)
    }

    fn new_stream_no(&self) -> i64 {
        let no = self.next_stream.get();
        self.next_stream.set(no + 1);
        no
    }

    /// The number of the stream rmcp calls `name` (or, for `no:<n>`, of
    /// stream `n` itself), creating the stream on first use: a session's
    /// standalone stream is found by its name, or written at once; a
    /// request stream (`session` is `None`) gets a number, and its row
    /// when it is bound (see `Writer::unbound`). A stream of this process
    /// is found in the cache.
    fn stream_no(&self, name: &str, session: Option<&[u8]>, seq: i64, tag: i64) -> Result<i64, StoreError> {
        if let Some(no) = name.strip_prefix("no:").and_then(|no| no.parse().ok()) {
            return Ok(no);
        }
        if let Some(entry) = self.streams.borrow().get(name) {
            return Ok(entry.0);
        }
        let no = match session {
            Some(session) => self.standalone_stream(name, session)?,
            None => {
                let no = self.new_stream_no();
                self.hold_unbound(
                    seq,
                    Unbound { tag, stream: no, name: name.into(), created_at: self.clock.now() },
                )?;
                no
            }
        };
        self.streams.borrow_mut().insert(name.to_string(), (no, session.is_some()));
        Ok(no)
    }

    /// The standalone stream `name` of `session`: one an earlier process
    /// wrote, or a new one.
    fn standalone_stream(&self, name: &str, session: &[u8]) -> Result<i64, StoreError> {
        let found: Option<i64> = self
            .connection
            .prepare_cached("SELECT no FROM streams WHERE session = ?1 AND request_id IS NULL AND name = ?2")?
            .query_row(params![session, name], |row| row.get(0))
            .optional()?;
        if let Some(no) = found {
            return Ok(no);
        }
        let no = self.new_stream_no();
        self.connection
            .prepare_cached("INSERT INTO streams (no, name, session, created_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![no, name, session, self.clock.now()])?;
        self.join(session, no)?;
        Ok(no)
    }

    /// Remembers a request stream until it is bound. Streams that are never
    /// bound (their binding failed, or went to an earlier stream) must not
    /// pile up here: past [`MAX_UNBOUND`], the rows of those waiting are
    /// written unbound, and a late binding updates its row.
    fn hold_unbound(&self, seq: i64, stream: Unbound) -> Result<(), StoreError> {
        let waiting = {
            let mut unbound = self.unbound.borrow_mut();
            let waiting =
                if unbound.len() >= MAX_UNBOUND { std::mem::take(&mut *unbound) } else { HashMap::default() };
            unbound.insert(seq, stream);
            waiting
        };
        for stream in waiting.into_values() {
            self.connection
                .prepare_cached("INSERT INTO streams (no, name, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![stream.stream, stream.name, stream.created_at])?;
        }
        Ok(())
    }

    fn append(
        &self,
        seq: i64,
        tag: i64,
        id: &str,
        stream: &str,
        session: Option<&[u8]>,
        event: NewEvent,
    ) -> Result<(), StoreError> {
        let stream_no = self.stream_no(stream, session, seq, tag)?;
        if let Some(session) = session {
            self.note_session_events(session)?;
        }
        let message =
            event.message.map(|message| self.seal(Purpose::Events, || event_aad(id, stream_no), message));
        let size = message.as_ref().map_or(0, Vec::len);
        let retry_ms = event.retry_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        self.connection
            .prepare_cached(
                "INSERT INTO events (seq, tag, stream, created_at, retry_ms, message, response)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![seq, tag, stream_no, self.clock.now(), retry_ms, message, event.is_response])?;

        self.note_append(stream_no, size)?;
        if event.is_response && session.is_none() {
            // A request stream is complete: rmcp sends nothing after it.
            self.streams.borrow_mut().remove(stream);
            self.appended.borrow_mut().remove(&stream_no);
        }
        Ok(())
    }

    /// Binds the stream whose first event is `event_id` to `session` and
    /// the request `request_id`; the first binding of a stream wins.
    fn bind(&self, event_id: &str, session: &[u8], request_id: &[u8]) -> Result<(), StoreError> {
        let waiting = crate::parse_event_id(event_id).and_then(|(seq, tag)| {
            match self.unbound.borrow_mut().entry(seq as i64) {
                Entry::Occupied(entry) if entry.get().tag == tag as i64 => Some(entry.remove()),
                _ => None,
            }
        });
        if let Some(stream) = waiting {
            let request_id = self.seal(Purpose::Events, || stream_aad(stream.stream), request_id.to_vec());
            self.connection
                .prepare_cached(
                    "INSERT INTO streams (no, name, session, request_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![stream.stream, stream.name, session, request_id, stream.created_at])?;
            return self.join(session, stream.stream);
        }
        let Some((_, stream)) = self.find_event(event_id)? else { return Ok(()) };
        let request_id = self.seal(Purpose::Events, || stream_aad(stream), request_id.to_vec());
        let bound = self
            .connection
            .prepare_cached(
                "UPDATE streams SET session = ?2, request_id = ?3 WHERE no = ?1 AND session IS NULL",
            )?
            .execute(params![stream, session, request_id])?;
        if bound > 0 {
            self.join(session, stream)?;
        }
        Ok(())
    }

    /// The event `id` as (sequence number, stream number), if it exists.
    fn find_event(&self, id: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let Some((seq, tag)) = crate::parse_event_id(id) else { return Ok(None) };
        let (seq, tag) = (seq as i64, tag as i64);
        Ok(self
            .connection
            .prepare_cached("SELECT stream FROM events WHERE seq = ?1 AND tag = ?2")?
            .query_row(params![seq, tag], |row| row.get(0))
            .optional()?
            .map(|stream| (seq, stream)))
    }

    /// Counts an append to `stream` and trims the stream to its bounds
    /// when enough has been appended since the last trim.
    fn note_append(&self, stream: i64, size: usize) -> Result<(), StoreError> {
        let max_events = self.retention.max_events_per_session;
        let max_bytes = self.retention.max_stream_bytes;
        let due = {
            let mut appended = self.appended.borrow_mut();
            let (events, bytes) = appended.entry(stream).or_default();
            *events += 1;
            *bytes += size;
            *events > max_events.div_ceil(4) || *bytes > max_bytes.div_ceil(4)
        };
        if due {
            self.trim_stream(stream, max_events, max_bytes)?;
            self.appended.borrow_mut().remove(&stream);
        }
        Ok(())
    }

    /// Deletes a stream's oldest events until it holds at most `max_events`
    /// events and `max_bytes` bytes (always keeping the newest).
    fn trim_stream(&self, stream: i64, max_events: usize, max_bytes: usize) -> Result<(), StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT seq, coalesce(length(message), 0) FROM events WHERE stream = ?1 ORDER BY seq DESC",
        )?;
        let mut rows = statement.query([stream])?;
        let (mut kept, mut bytes) = (0usize, 0usize);
        let mut first_doomed = None;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let size = usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
            if kept > 0 && (kept >= max_events || bytes + size > max_bytes) {
                first_doomed = Some(seq);
                break;
            }
            kept += 1;
            bytes += size;
        }
        drop(rows);
        if let Some(seq) = first_doomed {
            self.connection
                .prepare_cached("DELETE FROM events WHERE stream = ?1 AND seq <= ?2")?
                .execute(params![stream, seq])?;
        }
        Ok(())
    }

    /// Counts events that joined `session` (a bound stream, an event on its
    /// standalone stream) and trims the session to its cap once another cap's
    /// worth has joined since its last trim: a session holds at most twice
    /// its cap between cleanups, and old events go in large, cheap batches.
    fn note_session_events(&self, session: &[u8]) -> Result<(), StoreError> {
        let cap = self.retention.max_events_per_session;
        let due = {
            let mut joined = self.joined.borrow_mut();
            let count = joined.entry(session.to_vec()).or_default();
            *count += 1;
            *count > cap
        };
        if due {
            // Sessions at least halfway to their next trim are trimmed with
            // this one. Busy sessions' events lie interleaved, so each trim
            // rewrites pages all over the span it deletes from; trims in one
            // commit write each such page once. Busy sessions soon trim
            // together, and a session is still trimmed at most every half
            // cap.
            let together: Vec<Vec<u8>> = {
                let mut joined = self.joined.borrow_mut();
                let together = joined
                    .iter()
                    .filter(|(other, count)| other.as_slice() == session || **count > cap / 2)
                    .map(|(other, _)| other.clone())
                    .collect::<Vec<_>>();
                for other in &together {
                    joined.remove(other);
                }
                together
            };
            for session in together {
                self.trim_session(&session)?;
            }
        }
        Ok(())
    }

    /// Keeps the newest `max_events_per_session` events of `session`, and
    /// forgets the request streams left without events.
    fn trim_session(&self, session: &[u8]) -> Result<usize, StoreError> {
        let cap = i64::try_from(self.retention.max_events_per_session).unwrap_or(i64::MAX);
        let streams = self.members_of(session);
        let trimmed = self
            .connection
            .prepare_cached(
                "DELETE FROM events WHERE seq IN (
                    SELECT seq FROM events WHERE stream IN rarray(?1) ORDER BY seq DESC LIMIT -1 OFFSET ?2)",
            )?
            .execute(params![&streams, cap])?;
        if trimmed > 0 {
            self.forget_emptied(session, streams)?;
        }
        Ok(trimmed)
    }

    /// Deletes the request streams among `streams` (of `session`) that the
    /// caps left without events: their answers went with the rest, so no
    /// client can resume them (`open_streams` skips them too). A request
    /// still running here keeps its stream for its answer; a standalone
    /// stream stays while its session does.
    fn forget_emptied(&self, session: &[u8], streams: Rc<Vec<Value>>) -> Result<(), StoreError> {
        let running: std::collections::HashSet<i64> =
            self.streams.borrow().values().filter(|(_, standalone)| !standalone).map(|(no, _)| *no).collect();
        let emptied: Vec<i64> = {
            let mut statement = self.connection.prepare_cached(
                "SELECT no FROM streams WHERE no IN rarray(?1) AND request_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream = streams.no)",
            )?;
            let rows = statement.query_map([streams], |row| row.get(0))?;
            rows.filter(|no| no.as_ref().map_or(true, |no| !running.contains(no)))
                .collect::<Result<_, _>>()?
        };
        if emptied.is_empty() {
            return Ok(());
        }
        let gone: std::collections::HashSet<i64> = emptied.iter().copied().collect();
        self.connection
            .prepare_cached("DELETE FROM streams WHERE no IN rarray(?1)")?
            .execute([array(emptied)])?;
        if let Some(members) = self.members.borrow_mut().get_mut(session) {
            members.retain(|no| !gone.contains(no));
        }
        Ok(())
    }

    /// Per session, keeps the newest `max_events_per_session` events;
    /// returns how many went.
    fn trim_sessions(&self) -> Result<usize, StoreError> {
        let cap = i64::try_from(self.retention.max_events_per_session).unwrap_or(i64::MAX);
        let crowded: Vec<Vec<u8>> = {
            let mut statement = self.connection.prepare_cached(
                "SELECT s.session FROM events e JOIN streams s ON s.no = e.stream
                 WHERE s.session IS NOT NULL GROUP BY s.session HAVING count(*) > ?1",
            )?;
            let rows = statement.query_map([cap], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut trimmed = 0;
        for session in crowded {
            trimmed += self.trim_session(&session)?;
        }
        Ok(trimmed)
    }

    fn delete_session(&self, key: &[u8]) -> Result<usize, StoreError> {
        let streams = array(self.members.borrow_mut().remove(key).into_iter().flatten());
        self.joined.borrow_mut().remove(key);
        let events = self
            .connection
            .prepare_cached("DELETE FROM events WHERE stream IN rarray(?1)")?
            .execute([&streams])?;
        self.connection.prepare_cached("DELETE FROM streams WHERE no IN rarray(?1)")?.execute([&streams])?;
        self.connection.prepare_cached("DELETE FROM state WHERE session = ?1")?.execute([key])?;
        self.connection.prepare_cached("DELETE FROM sessions WHERE key = ?1")?.execute([key])?;
        Ok(events)
    }
}

/// Stream numbers as a parameter for `rarray(?)`.
fn array(streams: impl IntoIterator<Item = i64>) -> Rc<Vec<Value>> {
    Rc::new(streams.into_iter().map(Value::Integer).collect())
}

fn session_aad(key: &[u8]) -> Vec<u8> {
    [b"session:".as_slice(), key].concat()
}

fn event_aad(id: &str, stream: i64) -> Vec<u8> {
    format!("event:{id}:{stream}").into_bytes()
}

fn stream_aad(stream: i64) -> Vec<u8> {
    format!("stream:{stream}").into_bytes()
}

fn state_aad(session: &[u8], name: &str) -> Vec<u8> {
    [b"state:".as_slice(), session, b":", name.as_bytes()].concat()
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn put_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        self.submit(move |writer| {
            let key = session_key(&session.id);
            let init_params = writer.seal(Purpose::Sessions, || session_aad(&key), session.init_params);
            writer
                .connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO sessions (key, owner, init_params, created_at, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key, session.owner, init_params, session.created_at, session.last_seen])?;
            Ok(())
        })
        .await
    }

    async fn load_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_string();
        self.submit(move |writer| {
            let key = session_key(&id);
            let row = writer
                .connection
                .prepare_cached(
                    "SELECT owner, init_params, created_at, last_seen FROM sessions WHERE key = ?1 AND last_seen > ?2",
                )?
                .query_row(params![key, writer.expiry_cutoff()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()?;
            let Some((owner, sealed, created_at, last_seen)) = row else { return Ok(None) };
            let init_params = writer.open(Purpose::Sessions, &session_aad(&key), sealed)?;
            Ok(Some(SessionRecord { id, owner, init_params, created_at, last_seen }))
        })
        .await
    }

    fn touch_session(&self, id: &str) {
        let key = session_key(id);
        let now = self.clock.now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if touched.get(&key).is_some_and(|last| now - last < TOUCH_INTERVAL_MS) {
                return;
            }
            if touched.len() > 100_000 {
                touched.retain(|_, last| now - *last < TOUCH_INTERVAL_MS);
            }
            touched.insert(key.clone(), now);
        }
        let job = Job::Run(Box::new(move |writer: &Writer| {
            let touched = writer
                .connection
                .prepare_cached("UPDATE sessions SET last_seen = max(last_seen, ?2) WHERE key = ?1")
                .and_then(|mut statement| statement.execute(params![key, writer.clock.now()]));
            if let Err(error) = touched {
                tracing::warn!(%error, "could not record session use");
            }
            Box::new(|_: Option<&str>| {})
        }));
        if let Some(jobs) = self.sender() {
            let _ = jobs.send(job);
        }
    }

    async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let key = session_key(id);
        self.submit(move |writer| writer.delete_session(&key).map(drop)).await
    }

    async fn append_event(
        &self,
        stream: &str,
        session: Option<&str>,
        event: NewEvent,
    ) -> Result<String, StoreError> {
        let stream = stream.to_string();
        let session = session.map(session_key);
        let (seq, tag, id) = self.next_event_id();
        self.submit(move |writer| {
            writer.append(seq, tag, &id, &stream, session.as_deref(), event)?;
            Ok(id)
        })
        .await
    }

    fn append_event_deferred(&self, stream: &str, event: NewEvent) -> String {
        let (seq, tag, id) = self.next_event_id();
        let (stream, event_id) = (stream.to_string(), id.clone());
        self.hold(Box::new(move |writer: &Writer| {
            if let Err(error) = writer.append(seq, tag, &event_id, &stream, None, event) {
                tracing::warn!(%error, "could not store an event");
            }
            Box::new(|_: Option<&str>| {})
        }));
        id
    }

    async fn bind_stream(&self, event_id: &str, session: &str, request_id: &[u8]) -> Result<(), StoreError> {
        let event_id = event_id.to_string();
        let session = session_key(session);
        let request_id = request_id.to_vec();
        let bind = move |writer: &Writer| writer.bind(&event_id, &session, &request_id);
        // The request runs meanwhile; its answer, stored soon after, takes
        // this binding (and the stream's first event) into its own commit.
        // A slower request's binding is sent alone after a moment.
        let (reply, mut answer) = oneshot::channel();
        self.hold(Box::new(move |writer: &Writer| {
            let result = bind(writer);
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(error) => Err(StoreError::Commit(error.to_string())),
                    None => result,
                };
                let _ = reply.send(result);
            })
        }));
        if let Ok(answered) = tokio::time::timeout(HOLD_AT_MOST, &mut answer).await {
            return answered.map_err(|_| StoreError::Closed)?;
        }
        self.send_held();
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn replay_after(&self, session: &str, event_id: &str) -> Result<Option<Replay>, StoreError> {
        let event_id = event_id.to_string();
        let session = session_key(session);
        self.submit(move |writer| {
            let Some((seq, stream)) = writer.find_event(&event_id)? else { return Ok(None) };
            let owner: Option<(Option<Vec<u8>>, bool)> = writer
                .connection
                .prepare_cached("SELECT session, request_id IS NULL FROM streams WHERE no = ?1")?
                .query_row([stream], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((Some(owner), standalone)) = owner else { return Ok(None) };
            if owner != session {
                return Ok(None);
            }
            let mut statement = writer.connection.prepare_cached(
                "SELECT seq, tag, retry_ms, message FROM events WHERE stream = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = statement.query_map(params![stream, seq], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?.map(|ms| u64::try_from(ms).unwrap_or(0)),
                    row.get::<_, Option<Vec<u8>>>(3)?,
                ))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, tag, retry_ms, message) = row?;
                let id = crate::format_event_id(seq as u64, tag as u64);
                let message = match message {
                    Some(sealed) => Some(writer.open(Purpose::Events, &event_aad(&id, stream), sealed)?),
                    None => None,
                };
                events.push(StoredEvent { id, message, retry_ms });
            }
            Ok(Some(Replay { events, standalone }))
        })
        .await
    }

    async fn open_streams(&self) -> Result<Vec<OpenStream>, StoreError> {
        self.submit(move |writer| {
            let mut statement = writer.connection.prepare_cached(
                // A stream left without events lost them, answer and all,
                // to the retention caps: it was not cut short.
                "SELECT s.no, s.request_id FROM streams s JOIN sessions x ON x.key = s.session
                 WHERE s.request_id IS NOT NULL AND x.last_seen > ?1
                   AND EXISTS (SELECT 1 FROM events e WHERE e.stream = s.no)
                   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream = s.no AND e.response)
                 ORDER BY s.no",
            )?;
            let rows = statement.query_map([writer.expiry_cutoff()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })?;
            let mut open = Vec::new();
            for row in rows {
                let (stream, sealed) = row?;
                let request_id = writer.open(Purpose::Events, &stream_aad(stream), sealed)?;
                open.push(OpenStream { stream: format!("no:{stream}"), request_id });
            }
            Ok(open)
        })
        .await
    }

    async fn put_state(&self, session: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let session = session_key(session);
        let name = key.to_string();
        self.submit(move |writer| {
            let value = writer.seal(Purpose::State, || state_aad(&session, &name), value);
            writer
                .connection
                .prepare_cached("INSERT OR REPLACE INTO state (session, name, value) VALUES (?1, ?2, ?3)")?
                .execute(params![session, name, value])?;
            Ok(())
        })
        .await
    }

    async fn load_state(&self, session: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let session = session_key(session);
        self.submit(move |writer| {
            let mut statement = writer
                .connection
                .prepare_cached("SELECT name, value FROM state WHERE session = ?1 ORDER BY name")?;
            let rows = statement
                .query_map([&session], |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)))?;
            let mut values = Vec::new();
            for row in rows {
                let (name, sealed) = row?;
                let value = writer.open(Purpose::State, &state_aad(&session, &name), sealed)?;
                values.push((name, value));
            }
            Ok(values)
        })
        .await
    }

    async fn purge(&self) -> Result<Purged, StoreError> {
        self.submit(move |writer| {
            let mut purged = Purged::default();
            let expired: Vec<Vec<u8>> = {
                let mut statement =
                    writer.connection.prepare_cached("SELECT key FROM sessions WHERE last_seen <= ?1")?;
                let rows = statement.query_map([writer.expiry_cutoff()], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for key in expired {
                purged.events += writer.delete_session(&key)?;
                purged.sessions += 1;
            }
            let oldest_kept = writer.clock.now().saturating_sub(millis(writer.retention.event_max_age));
            // Events are appended in time order, so the old ones are those
            // before the first young one (no index on age needed).
            let first_young: Option<i64> = writer
                .connection
                .prepare_cached("SELECT seq FROM events WHERE created_at >= ?1 ORDER BY seq LIMIT 1")?
                .query_row([oldest_kept], |row| row.get(0))
                .optional()?;
            purged.events += writer
                .connection
                .prepare_cached("DELETE FROM events WHERE seq < ?1")?
                .execute([first_young.unwrap_or(i64::MAX)])?;
            writer
                .connection
                .prepare_cached(
                    "DELETE FROM streams WHERE created_at < ?1
                     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream = streams.no)",
                )?
                .execute([oldest_kept])?;
            writer.load_members()?;
            purged.events += writer.trim_sessions()?;
            writer.appended.borrow_mut().clear();
            writer.joined.borrow_mut().clear();
            // Forget standalone streams (found again by their session) and
            // request streams whose rows are gone.
            let oldest_stream: i64 = writer
                .connection
                .prepare_cached("SELECT coalesce(min(no), 0) FROM streams")?
                .query_row([], |row| row.get(0))?;
            writer.streams.borrow_mut().retain(|_, (no, standalone)| !*standalone && *no >= oldest_stream);
            Ok(purged)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.send_held();
        let Some(jobs) = self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return Err(StoreError::Closed);
        };
        let (reply, answer) = oneshot::channel();
        jobs.send(Job::Close(reply)).map_err(|_| StoreError::Closed)?;
        drop(jobs);
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's checkpoint sequence number, which SQLite bumps each time
    /// it writes the log from its start again.
    fn log_generation(path: &Path) -> u32 {
        let header = std::fs::read(with_suffix(path, "-wal")).expect("the log exists");
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    async fn append(store: &SqliteStore, text: &str) {
        let event = NewEvent { message: Some(text.as_bytes().to_vec()), retry_ms: None, is_response: false };
        store.append_event("stream", None, event).await.expect("appended");
    }

    /// The race that kept the log growing under load: commits land while
    /// the checkpointer copies the log, so its checkpoint never copies all
    /// of it. Here a reader holding an old snapshot stands in for those
    /// commits (a checkpoint cannot copy past a reader's snapshot).
    #[tokio::test]
    async fn a_long_log_starts_over_although_commits_race_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut options = SqliteOptions::new(&path);
        // The checkpointer's own thread stays out of the way; the test runs
        // its rounds.
        options.checkpoints = CheckpointPolicy { interval: Duration::from_secs(3600), restart_frames: 8 };
        let store = Arc::new(SqliteStore::open(options).unwrap());
        let checkpointer = Connection::open(&path).unwrap();
        let writer = store.sender().unwrap().downgrade();

        for n in 0..20 {
            append(&store, &format!("before the reader {n}")).await;
        }
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM events;").unwrap();
        for n in 0..20 {
            append(&store, &format!("after the reader {n}")).await;
        }
        let generation = log_generation(&path);

        // The writer is kept busy until the reader is gone, so the copy it
        // is asked for runs when nothing else holds the log.
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .submit(move |_| {
                        started.send(()).unwrap();
                        released.recv().unwrap();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || has_started.recv().unwrap()).await.unwrap();

        checkpoint_round(&checkpointer, &writer, 8);
        reader.execute_batch("COMMIT").unwrap();
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();

        // The writer copies the log back after the batch that took the
        // request to: this append may share that batch; the next cannot.
        append(&store, "after the round").await;
        append(&store, "after the copy").await;
        assert_eq!(log_generation(&path), generation + 1, "the log was written from its start again");
        store.close().await.unwrap();
    }

    fn session(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            owner: "uid:1".into(),
            init_params: b"{}".to_vec(),
            created_at: 1,
            last_seen: i64::MAX / 2,
        }
    }

    fn priming() -> NewEvent {
        NewEvent { message: None, retry_ms: None, is_response: false }
    }

    fn open_with_cap(path: &Path, max_events_per_session: usize) -> SqliteStore {
        let retention = Retention::default().max_events_per_session(max_events_per_session);
        SqliteStore::open(SqliteOptions::new(path).retention(retention)).unwrap()
    }

    fn count(path: &Path, table: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
            .unwrap()
    }

    /// A database written by the first schema: its index of streams by
    /// session goes, and its sessions are still deleted whole, with the
    /// streams an earlier process bound (read back at start).
    #[tokio::test]
    async fn a_first_schema_database_is_upgraded_and_its_sessions_still_delete_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(&format!("BEGIN; {}; PRAGMA user_version = 1; COMMIT;", MIGRATIONS[0]))
                .unwrap();
        }
        let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
        store.put_session(session("s1")).await.unwrap();
        store.put_session(session("s2")).await.unwrap();
        for (session, stream) in [("s1", "a"), ("s1", "b"), ("s2", "c")] {
            let first = store.append_event(stream, None, priming()).await.unwrap();
            store.bind_stream(&first, session, b"1").await.unwrap();
        }
        store.append_event("standalone", Some("s1"), priming()).await.unwrap();
        store.close().await.unwrap();

        let raw = Connection::open(&path).unwrap();
        let version: i64 = raw.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, 2);
        let indexes: Vec<String> = raw
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'streams'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["standalone_streams"]);
        drop(raw);

        let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
        store.delete_session("s1").await.unwrap();
        store.close().await.unwrap();
        assert_eq!(count(&path, "streams"), 1, "only s2's stream is left");
        assert_eq!(count(&path, "events"), 1, "only s2's event is left");
    }

    /// Deleting and trimming a session, and starting, find streams by
    /// their numbers: no statement of theirs reads a whole table.
    #[test]
    fn session_work_reads_no_whole_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
        drop(store);
        let connection = Connection::open(&path).unwrap();
        rusqlite::vtab::array::load_module(&connection).unwrap();
        for sql in [
            "DELETE FROM events WHERE stream IN rarray(?1)",
            "DELETE FROM streams WHERE no IN rarray(?1)",
            "DELETE FROM events WHERE seq IN (
                SELECT seq FROM events WHERE stream IN rarray(?1) ORDER BY seq DESC LIMIT -1 OFFSET ?2)",
            "SELECT no FROM streams WHERE no IN rarray(?1) AND request_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream = streams.no)",
            "SELECT no FROM streams WHERE session = ?1 AND request_id IS NULL AND name = ?2",
            "SELECT max(coalesce((SELECT max(no) FROM streams), 0),
                        coalesce((SELECT max(stream) FROM events), 0)) + 1",
        ] {
            let mut statement = connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = statement.raw_query();
            let mut plan: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get(3).unwrap());
            }
            for step in &plan {
                assert!(
                    !(step.starts_with("SCAN events") || step.starts_with("SCAN streams")),
                    "{sql}: {plan:?}"
                );
            }
        }
    }

    /// Past `MAX_UNBOUND` request streams waiting for their binding, their
    /// rows are written unbound; a late binding still binds its stream.
    #[tokio::test]
    async fn a_binding_later_than_many_other_streams_still_binds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
        store.put_session(session("s1")).await.unwrap();
        let late = store.append_event("late", None, priming()).await.unwrap();
        for n in 0..MAX_UNBOUND {
            store.append_event(&format!("other-{n}"), None, priming()).await.unwrap();
        }
        store.bind_stream(&late, "s1", b"7").await.unwrap();
        store
            .append_event(
                "late",
                None,
                NewEvent { message: Some(b"answer".to_vec()), retry_ms: None, is_response: true },
            )
            .await
            .unwrap();
        let replay = store.replay_after("s1", &late).await.unwrap().expect("the late stream is bound");
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.events[0].message.as_deref(), Some(&b"answer"[..]));
        store.close().await.unwrap();
    }

    /// The request streams a session's cap emptied go with their events;
    /// one whose request is still running stays for its answer.
    #[tokio::test]
    async fn streams_the_cap_emptied_are_deleted_but_a_running_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = open_with_cap(&path, 10);
        store.put_session(session("s1")).await.unwrap();
        let running = store.append_event("running", None, priming()).await.unwrap();
        store.bind_stream(&running, "s1", b"0").await.unwrap();
        for n in 0..100 {
            let stream = format!("done-{n}");
            let first = store.append_event(&stream, None, priming()).await.unwrap();
            store.bind_stream(&first, "s1", b"1").await.unwrap();
            let answer = NewEvent { message: Some(b"{}".to_vec()), retry_ms: None, is_response: true };
            store.append_event(&stream, None, answer).await.unwrap();
        }
        let answer = NewEvent { message: Some(b"late".to_vec()), retry_ms: None, is_response: true };
        let answered = store.append_event("running", None, answer).await.unwrap();
        store.close().await.unwrap();
        // Trimmed after every 11 bindings to the newest 10 events (5
        // streams); at most 11 more streams joined since.
        let streams = count(&path, "streams");
        assert!(streams <= 5 + 11 + 1, "{streams} stream rows left of 101");
        let raw = Connection::open(&path).unwrap();
        let session: Vec<u8> = raw
            .query_row(
                "SELECT s.session FROM events e JOIN streams s ON s.no = e.stream WHERE e.seq = ?1",
                [crate::parse_event_id(&answered).unwrap().0 as i64],
                |row| row.get(0),
            )
            .expect("the running request's stream is still there for its answer");
        assert_eq!(session, session_key("s1"));
    }

    /// A session due for a trim takes those at least halfway to theirs
    /// with it, into the same commit.
    #[tokio::test]
    async fn sessions_halfway_to_a_trim_are_trimmed_with_the_one_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = open_with_cap(&path, 10);
        let mut ids = HashMap::<&str, Vec<String>>::default();
        for (name, streams) in [("a", 11 + 6), ("b", 11)] {
            store.put_session(session(name)).await.unwrap();
            for n in 0..streams {
                let first = store.append_event(&format!("{name}-{n}"), None, priming()).await.unwrap();
                store.bind_stream(&first, name, b"1").await.unwrap();
                ids.entry(name).or_default().push(first);
            }
        }
        let mut kept = HashMap::default();
        for (session, ids) in &ids {
            for id in ids {
                *kept.entry(*session).or_insert(0) +=
                    usize::from(store.replay_after(session, id).await.unwrap().is_some());
            }
        }
        // "a" was trimmed to 10 at its 11th stream and held 16 when "b"
        // came due; "b" was trimmed at its 11th.
        assert_eq!(kept["a"], 10, "{kept:?}");
        assert_eq!(kept["b"], 10, "{kept:?}");
        store.close().await.unwrap();
    }
}
