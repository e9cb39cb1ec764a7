//! What only the SQLite file can show: persistence across reopen, the lock,
//! file modes, refusal of damaged, newer or wrongly keyed databases, and
//! encryption at rest (SECURITY-TESTS 41–43).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mcpsock_store::{
    Cipher, EncryptionSecret, NewEvent, Purpose, SCHEMA_VERSION, SessionRecord, SqliteOptions, SqliteStore,
    Store, StoreError,
};

use crate::secret;

fn options(path: &Path) -> SqliteOptions {
    SqliteOptions::new(path)
}

fn session(id: &str, params: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        owner: "uid:1".into(),
        init_params: params.into(),
        created_at: 1,
        last_seen: i64::MAX / 2,
    }
}

fn event(text: &str) -> NewEvent {
    NewEvent { message: Some(text.as_bytes().to_vec()), retry_ms: None, is_response: false }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn side(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

fn open_error(options: SqliteOptions) -> StoreError {
    SqliteStore::open(options).expect_err("the store must refuse to open")
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(options(&path)).unwrap();
    store.put_session(session("s1", "{}")).await.unwrap();
    let first = store.append_event("a", None, event("one")).await.unwrap();
    store.bind_stream(&first, "s1", b"1").await.unwrap();
    store.append_event("a", None, event("two")).await.unwrap();
    store.put_state("s1", "log_level", b"\"debug\"".to_vec()).await.unwrap();
    store.close().await.unwrap();

    let store = SqliteStore::open(options(&path)).unwrap();
    assert_eq!(store.load_session("s1").await.unwrap().unwrap().init_params, b"{}");
    let replay = store.replay_after("s1", &first).await.unwrap().unwrap();
    assert_eq!(replay.events[0].message.as_deref(), Some(&b"two"[..]));
    assert_eq!(store.load_state("s1").await.unwrap().len(), 1);
    assert_eq!(store.open_streams().await.unwrap().len(), 1);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let journal: String = raw.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(journal, "wal");
    let version: i64 = raw.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let stored_ids: i64 = raw
        .query_row("SELECT count(*) FROM sessions WHERE key = ?1", [b"s1".as_slice()], |row| row.get(0))
        .unwrap();
    assert_eq!(stored_ids, 0, "session ids are stored hashed, never as themselves");
}

#[tokio::test]
async fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("new").join("mcpsock");
    let path = data_dir.join("state.db");
    let store = SqliteStore::open(options(&path)).unwrap();
    store.append_event("a", None, event("x")).await.unwrap();
    assert_eq!(mode(&data_dir), 0o700, "a missing data directory is created private");
    for file in [path.clone(), side(&path, "-wal"), side(&path, "-shm"), side(&path, ".lock")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    store.close().await.unwrap();

    // A database left readable by others is narrowed on the next start.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open(options(&path)).unwrap();
    store.append_event("a", None, event("y")).await.unwrap();
    for file in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn a_second_process_is_refused_as_already_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(options(&path)).unwrap();
    let error = open_error(options(&path));
    assert!(error.is_already_running(), "{error}");
    assert!(
        matches!(&error, StoreError::Locked { pid: Some(pid), .. } if *pid == std::process::id()),
        "{error:?}"
    );
    assert!(error.to_string().contains(&path.display().to_string()));
    store.close().await.unwrap();
    SqliteStore::open(options(&path)).expect("the lock is released on close");
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    SqliteStore::open(options(&path)).unwrap().close().await.unwrap();
    rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let error = open_error(options(&path));
    assert!(
        matches!(error, StoreError::NewerSchema { found: 99, supported: SCHEMA_VERSION, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("99") && message.contains(&SCHEMA_VERSION.to_string()), "{message}");
}

#[tokio::test]
async fn a_damaged_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let garbage: Vec<u8> = (0..16_384u32).map(|index| (index * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = open_error(options(&path));
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(error.is_refused());
    assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "a damaged database is never overwritten");
}

#[tokio::test]
async fn keys_must_match_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let encrypted = dir.path().join("encrypted.db");
    SqliteStore::open(options(&encrypted).secret(Some(secret()))).unwrap().close().await.unwrap();
    let before = std::fs::read(&encrypted).unwrap();

    let error = open_error(options(&encrypted));
    assert!(matches!(error, StoreError::MissingKey { .. }), "{error:?}");
    let wrong = EncryptionSecret::new(b"another secret of thirty-two bytes!".to_vec()).unwrap();
    let error = open_error(options(&encrypted).secret(Some(wrong)));
    assert!(matches!(error, StoreError::WrongKey { .. }), "{error:?}");
    assert_eq!(std::fs::read(&encrypted).unwrap(), before, "a refused key changes nothing");
    SqliteStore::open(options(&encrypted).secret(Some(secret()))).expect("the right key opens it");

    let plain = dir.path().join("plain.db");
    SqliteStore::open(options(&plain)).unwrap().close().await.unwrap();
    let error = open_error(options(&plain).secret(Some(secret())));
    assert!(matches!(error, StoreError::NotEncrypted { .. }), "{error:?}");
}

#[tokio::test]
async fn key_files_with_loose_permissions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = EncryptionSecret::from_file(&file).unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    EncryptionSecret::from_file(&file).expect("a private key file is accepted");
    std::fs::write(&file, "short\n").unwrap();
    let error = EncryptionSecret::from_file(&file).unwrap_err();
    assert!(error.to_string().contains("at least 32"), "{error}");
}

/// Writes a canary into every encrypted column and reports whether it shows
/// in the raw bytes of the database, `-wal` and `-shm`.
async fn canary_visible(secret: Option<EncryptionSecret>) -> bool {
    const CANARY: &str = "CANARY-7f3a9c-tool-result";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(options(&path).secret(secret)).unwrap();
    store.put_session(session("s1", &format!(r#"{{"clientInfo":"{CANARY}"}}"#))).await.unwrap();
    let first = store.append_event("a", None, NewEvent::default()).await.unwrap();
    store.bind_stream(&first, "s1", CANARY.as_bytes()).await.unwrap();
    for _ in 0..50 {
        store.append_event("a", None, event(&format!(r#"{{"result":"{CANARY}"}}"#))).await.unwrap();
    }
    store.put_state("s1", "subscriptions", CANARY.as_bytes().to_vec()).await.unwrap();
    let contains = |file: &Path| {
        std::fs::read(file).map(|bytes| bytes.windows(CANARY.len()).any(|window| window == CANARY.as_bytes()))
    };
    let mut visible = false;
    for file in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
        visible |= contains(&file).unwrap_or(false);
    }
    store.close().await.unwrap();
    visible | contains(&path).unwrap()
}

#[tokio::test]
async fn sec41_encrypted_values_never_reach_the_disk_in_clear() {
    assert!(canary_visible(None).await, "without encryption the canary is on disk: the check can see it");
    assert!(!canary_visible(Some(secret())).await, "with encryption the canary must not be on disk");
}

#[tokio::test]
async fn swapped_ciphertexts_fail_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(options(&path).secret(Some(secret()))).unwrap();
    let first = store.append_event("a", Some("s1"), event("first")).await.unwrap();
    store.append_event("a", Some("s1"), event("second")).await.unwrap();
    store.append_event("a", Some("s1"), event("third")).await.unwrap();
    store.close().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE events SET message = (SELECT message FROM events WHERE seq = 3) WHERE seq = 2;",
    )
    .unwrap();
    drop(raw);
    let store = SqliteStore::open(options(&path).secret(Some(secret()))).unwrap();
    let error = store.replay_after("s1", &first).await.unwrap_err();
    assert!(matches!(error, StoreError::Tampered), "{error:?}");
}

#[test]
fn sec43_a_million_encryptions_never_repeat_a_nonce() {
    let cipher = Cipher::new(&secret(), b"salt");
    let mut nonces = HashSet::with_capacity(1_000_000);
    for index in 0..1_000_000u32 {
        let sealed = cipher.seal(Purpose::Events, b"aad", &index.to_le_bytes());
        let nonce: [u8; 12] = sealed[..12].try_into().unwrap();
        assert!(nonces.insert(nonce), "nonce repeated after {index} encryptions");
    }
}

/// Requests on several runtime threads at once, as in the daemon: each
/// stream's first event is held, its binding is held after it, and another
/// request's awaited job may take the first event while this one's answer
/// takes the binding. However the threads interleave, the binding must
/// reach the writer after the event it binds, or the stream stays unbound
/// and its ids, already sent to the client, resume nothing.
#[test]
fn bindings_never_overtake_their_first_events_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    runtime.block_on(async {
        // Room for every event: none may go to the session's cap.
        let retention = mcpsock_store::Retention::default().max_events_per_session(10_000);
        let store = std::sync::Arc::new(SqliteStore::open(options(&path).retention(retention)).unwrap());
        store.put_session(session("busy", "{}")).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for request in 0..150 {
                        let stream = format!("stream-{task}-{request}");
                        let first = store.append_event_deferred(&stream, event(""));
                        store
                            .bind_stream(&first, "busy", format!("{task}{request}").as_bytes())
                            .await
                            .unwrap();
                        let mut answer = event("answer");
                        answer.is_response = true;
                        store.append_event(&stream, None, answer).await.unwrap();
                        ids.push(first);
                    }
                    ids
                })
            })
            .collect();
        let mut unbound = 0;
        for task in tasks {
            for id in task.await.unwrap() {
                if store.replay_after("busy", &id).await.unwrap().is_none() {
                    unbound += 1;
                }
            }
        }
        assert_eq!(unbound, 0, "streams whose binding was lost");
        store.close().await.unwrap();
    });
}
