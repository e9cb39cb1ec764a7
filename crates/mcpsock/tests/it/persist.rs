//! Sessions and streams that outlive the daemon: restarts, `kill -9`
//! mid-stream, and the database under a crash (SECURITY-TESTS 40, 42, 45).

// Logging is deprecated in the newest protocol revision, but the legacy
// sessions whose settings survive restarts still use it.
#![allow(deprecated)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mcpsock_store::Store;
use rustix::process::Signal;
use serde_json::json;

use crate::support::*;

const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

fn session_headers(session: &str) -> String {
    format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}")
}

/// The ids of the SSE events in `body`.
fn event_ids(body: &str) -> Vec<String> {
    body.lines().filter_map(|line| line.strip_prefix("id:")).map(|id| id.trim().to_string()).collect()
}

#[test]
fn a_session_survives_a_restart() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let socket = sandbox.socket();
    let daemon = Daemon::start(&sandbox, &config);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    assert_eq!(post(Target::Unix(&socket), "localhost", &session_headers(&session), LIST).status, 200);
    assert!(daemon.stop().success());

    let daemon = Daemon::start(&sandbox, &config);
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"demo__echo","arguments":{"text":"still here"}}}"#;
    let answer = post(Target::Unix(&socket), "localhost", &session_headers(&session), call);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("still here"), "{}", answer.body);
    // Unknown ids still get 404 after a restart.
    let unknown = session_headers(&"0".repeat(64));
    assert_eq!(post(Target::Unix(&socket), "localhost", &unknown, LIST).status, 404);
    assert!(daemon.stop().success());
}

#[test]
fn a_restored_session_still_belongs_to_its_owner() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "listen": "127.0.0.1:0"}));
    let socket = sandbox.socket();
    let with_key = |command: &mut std::process::Command| {
        command.env("MCPSOCK_API_KEY", "a-key-for-the-tests-0123456789");
    };
    let daemon = Daemon::start_with(&sandbox, &config, &socket, with_key);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    assert!(daemon.stop().success());

    let daemon = Daemon::start_with(&sandbox, &config, &socket, with_key);
    let address = tcp_address(&daemon);
    // The API key holder presents the uid's session first, before the
    // session is back in memory: the owner comes from the store.
    let headers =
        format!("Authorization: Bearer a-key-for-the-tests-0123456789\r\n{}", session_headers(&session));
    let stolen = post(Target::Tcp(address), &address.to_string(), &headers, LIST);
    assert_eq!(stolen.status, 404, "{stolen:?}");
    assert_eq!(post(Target::Unix(&socket), "localhost", &session_headers(&session), LIST).status, 200);
    assert!(daemon.stop().success());
}

/// Starts a slow call in `session` and returns the open connection, the
/// request's id and the id of the first event of its stream.
fn start_countdown(socket: &std::path::Path, session: &str) -> (BufReader<UnixStream>, String) {
    let call = r#"{"jsonrpc":"2.0","id":"slow-1","method":"tools/call","params":{"name":"demo__countdown","arguments":{"steps":600,"interval_ms":100},"_meta":{"progressToken":"p1"}}}"#;
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\n{}\r\nContent-Length: {}\r\n\r\n{call}",
        session_headers(session),
        call.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended before its first event");
        if let Some(id) = line.strip_prefix("id:") {
            return (reader, id.trim().to_string());
        }
    }
}

#[test]
fn a_stream_cut_by_kill_9_ends_with_a_retry_error_after_restart() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let socket = sandbox.socket();
    let mut daemon = Daemon::start(&sandbox, &config);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let (cut, last_event_id) = start_countdown(&socket, &session);
    daemon.signal(Signal::KILL);
    daemon.wait_exit();
    drop(cut);

    let daemon = Daemon::start(&sandbox, &config);
    let resume = raw_request(
        Target::Unix(&socket),
        &format!(
            "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{}\r\nLast-Event-ID: {last_event_id}",
            session_headers(&session)
        ),
        b"",
    );
    assert_eq!(resume.status, 200, "{resume:?}");
    assert!(resume.body.contains(r#""id":"slow-1""#), "the error answers the cut request: {}", resume.body);
    assert!(
        resume.body.contains("-32603") && resume.body.contains("server restarted; retry"),
        "{}",
        resume.body
    );

    // Resuming from the error itself finds nothing more.
    let after_error = event_ids(&resume.body).pop().expect("the error has an event id");
    let again = raw_request(
        Target::Unix(&socket),
        &format!(
            "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{}\r\nLast-Event-ID: {after_error}",
            session_headers(&session)
        ),
        b"",
    );
    assert_eq!(again.status, 200);
    assert!(!again.body.contains("jsonrpc"), "{}", again.body);

    // The session itself carries on.
    let call = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"demo__echo","arguments":{"text":"after the crash"}}}"#;
    let answer = post(Target::Unix(&socket), "localhost", &session_headers(&session), call);
    assert!(answer.body.contains("after the crash"), "{answer:?}");
    assert!(daemon.stop().success());
}

#[test]
fn sec23_garbage_event_ids_get_an_empty_stream() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let socket = sandbox.socket();
    let daemon = Daemon::start(&sandbox, &config);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let other = open_session(Target::Unix(&socket), "localhost", "");
    let listed = post(Target::Unix(&socket), "localhost", &session_headers(&other), LIST);
    let others_event = event_ids(&listed.body).into_iter().next().expect("the answer carries event ids");
    for last_event_id in ["garbage", &"f".repeat(8000), "0/1", "../../etc", others_event.as_str()] {
        let resume = raw_request(
            Target::Unix(&socket),
            &format!(
                "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{}\r\nLast-Event-ID: {last_event_id}",
                session_headers(&session)
            ),
            b"",
        );
        assert!(matches!(resume.status, 200 | 400 | 431), "{resume:?}");
        assert!(!resume.body.contains("jsonrpc"), "{last_event_id:.20}: replayed {}", resume.body);
    }
    assert_eq!(daemon.health()["status"], "ok", "still serving");
    assert!(daemon.stop().success());
}

#[test]
fn sec40_every_event_a_client_received_survives_kill_9() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let socket = sandbox.socket();
    let mut received_total = 0;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for round in 0..100u32 {
        let mut daemon = Daemon::start(&sandbox, &config);
        let session = open_session(Target::Unix(&socket), "localhost", "");
        let received = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (socket, session, received, stop) =
                    (socket.clone(), session.clone(), received.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = UnixStream::connect(&socket) else { return };
                        let request = format!(
                            "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\n{}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{LIST}",
                            session_headers(&session),
                            LIST.len()
                        );
                        if stream.write_all(request.as_bytes()).is_err() {
                            return;
                        }
                        // Every id read off the wire counts, even from a
                        // response cut short by the kill.
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { break };
                            if let Some(id) = line.strip_prefix("id:") {
                                received.lock().unwrap().push(id.trim().to_string());
                            }
                        }
                    }
                })
            })
            .collect();
        // A different moment each round: after 1 to 80 received events.
        let kill_after = 1 + (round * 37 + std::process::id()) % 80;
        wait_until("events arrive", || received.lock().unwrap().len() >= kill_after as usize);
        daemon.signal(Signal::KILL);
        daemon.wait_exit();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }

        let db = rusqlite::Connection::open_with_flags(
            sandbox.state_db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let integrity: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(integrity, "ok", "round {round}");
        drop(db);
        // Every id the client holds resumes its stream in the restarted
        // store: the event is there, and its stream is bound to the session.
        let received = received.lock().unwrap();
        let store =
            mcpsock_store::SqliteStore::open(mcpsock_store::SqliteOptions::new(sandbox.state_db())).unwrap();
        runtime.block_on(async {
            for id in received.iter() {
                let replay = store.replay_after(&session, id).await.unwrap();
                assert!(
                    replay.is_some(),
                    "round {round}: event {id} was sent to a client but cannot be resumed"
                );
            }
            store.close().await.unwrap();
        });
        received_total += received.len();
    }
    assert!(received_total >= 100, "only {received_total} events were checked");
}

/// `mcpsock serve` with `extra` flags, run to its exit (a refused start).
fn serve_refused(sandbox: &Sandbox, config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut command = sandbox.serve_command(config, &sandbox.socket());
    command.args(extra);
    command.output().unwrap()
}

fn write_secret(sandbox: &Sandbox, name: &str, secret: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = sandbox.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn sec42_a_database_is_opened_only_with_its_own_key() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let key = write_secret(&sandbox, "key", &"k".repeat(40), 0o600);
    let other_key = write_secret(&sandbox, "other-key", &"o".repeat(40), 0o600);
    let loose_key = write_secret(&sandbox, "loose-key", &"k".repeat(40), 0o644);
    let key_flag = ["--encryption-secret-file", key.to_str().unwrap()];

    let refused =
        serve_refused(&sandbox, &config, &["--encryption-secret-file", loose_key.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("chmod 600"), "{}", stderr(&refused));

    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.args(key_flag);
    });
    assert!(daemon.stop().success());
    let before = std::fs::read(sandbox.state_db()).unwrap();

    let refused = serve_refused(&sandbox, &config, &[]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("is encrypted"), "{}", stderr(&refused));
    let refused =
        serve_refused(&sandbox, &config, &["--encryption-secret-file", other_key.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("does not open"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(sandbox.state_db()).unwrap(), before, "nothing was re-keyed or rewritten");

    // The environment variable carries the secret itself.
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.env("MCPSOCK_ENCRYPTION_SECRET", "k".repeat(40));
    });
    assert!(daemon.stop().success());
}

#[test]
fn sec41_a_tool_result_is_not_on_disk_in_clear() {
    const CANARY: &str = "canary-5b1e0c-in-a-tool-result";
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let socket = sandbox.socket();
    let key = write_secret(&sandbox, "key", &"k".repeat(40), 0o600);
    let daemon = Daemon::start_with(&sandbox, &config, &socket, |command| {
        command.args(["--encryption-secret-file", key.to_str().unwrap()]);
    });
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"demo__echo","arguments":{{"text":"{CANARY}"}}}}}}"#
    );
    for _ in 0..20 {
        let answer = post(Target::Unix(&socket), "localhost", &session_headers(&session), &call);
        assert!(answer.body.contains(CANARY), "{answer:?}");
    }
    let db = sandbox.state_db();
    let files = [db.clone(), db.with_extension("db-wal"), db.with_extension("db-shm")];
    let on_disk = |file: &std::path::Path| {
        std::fs::read(file)
            .is_ok_and(|bytes| bytes.windows(CANARY.len()).any(|window| window == CANARY.as_bytes()))
    };
    assert!(files[1].exists(), "the write-ahead log holds the recent writes");
    for file in &files {
        assert!(!on_disk(file), "{} holds the canary in clear", file.display());
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert!(daemon.stop().success());
    assert!(!on_disk(&files[0]));
}

#[test]
fn sec45_sigterm_checkpoints_the_log_and_a_restart_follows_at_once() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let socket = sandbox.socket();
    let daemon = Daemon::start(&sandbox, &config);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    post(Target::Unix(&socket), "localhost", &session_headers(&session), LIST);
    assert!(daemon.stop().success());
    let wal = sandbox.state_db().with_extension("db-wal");
    let wal_size = std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
    assert_eq!(wal_size, 0, "everything is in the database file after a clean stop");
    // The lock went with the process: a new daemon starts at once.
    let restarted = Daemon::start(&sandbox, &config);
    assert!(restarted.stop().success());
}

#[test]
fn refused_databases_name_the_file_and_stay_untouched() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let data = sandbox.path().join("xdg-data").join("mcpsock");
    std::fs::create_dir_all(&data).unwrap();

    let garbage = vec![0x5au8; 8192];
    std::fs::write(sandbox.state_db(), &garbage).unwrap();
    let refused = serve_refused(&sandbox, &config, &[]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&sandbox.state_db().display().to_string()), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("damaged"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(sandbox.state_db()).unwrap(), garbage);
    std::fs::remove_file(sandbox.state_db()).unwrap();

    let daemon = Daemon::start(&sandbox, &config);
    assert!(daemon.stop().success());
    rusqlite::Connection::open(sandbox.state_db())
        .unwrap()
        .execute_batch("PRAGMA user_version = 42")
        .unwrap();
    let refused = serve_refused(&sandbox, &config, &[]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("schema version 42"), "{}", stderr(&refused));
}

#[test]
fn a_database_in_use_is_already_running() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}}));
    let daemon = Daemon::start(&sandbox, &config);
    // Another socket, the same database.
    let other_socket = sandbox.path().join("xdg-runtime").join("mcpsock").join("other.sock");
    let second = sandbox.serve_command(&config, &other_socket).output().unwrap();
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    assert!(stderr(&second).contains(&format!("pid {}", daemon.pid())), "{}", stderr(&second));
    // A daemon that keeps its sessions in memory does not need the file.
    let in_memory = Daemon::start_with(&sandbox, &config, &other_socket, |command| {
        command.arg("--memory");
    });
    assert!(in_memory.stop().success());
    assert!(daemon.stop().success());
}

#[test]
fn status_reports_the_store_and_full_durability_is_taken() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "durability": "full"}));
    let key = write_secret(&sandbox, "key", &"k".repeat(40), 0o600);
    let db = sandbox.path().join("elsewhere.db");
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.args(["--db", db.to_str().unwrap(), "--encryption-secret-file", key.to_str().unwrap()]);
    });
    let (code, body) = http_get(&sandbox.socket(), "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["storage"],
        json!({"mode": "sqlite", "path": db.to_str().unwrap(), "encrypted": true, "durability": "full"})
    );
    let text = stdout(&sandbox.client(&["status"]));
    let expected = format!("  sessions     sqlite {} (encrypted, durability full)\n", db.display());
    assert!(text.contains(&expected), "{text}");
    assert!(daemon.stop().success());

    // The flag wins over the config file.
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.args(["--memory"]);
    });
    let (_, body) = http_get(&sandbox.socket(), "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["storage"], json!({"mode": "memory", "encrypted": false}));
    let text = stdout(&sandbox.client(&["status"]));
    assert!(text.contains("  sessions     memory (a restart forgets them)\n"), "{text}");
    assert!(daemon.stop().success());
}

/// Records what its sessions asked for.
#[derive(Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
}

impl rmcp::ServerHandler for Recorder {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_logging()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
    }

    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        self.calls.lock().unwrap().push(format!("setLevel {}", serde_json::to_value(request.level).unwrap()));
        Ok(())
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        self.calls.lock().unwrap().push(format!("subscribe {}", request.uri));
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        self.calls.lock().unwrap().push(format!("unsubscribe {}", request.uri));
        Ok(())
    }
}

/// Serves a `Recorder` on `socket` with its sessions in `db`.
fn serve_recorder(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    db: &std::path::Path,
) -> (Arc<Mutex<Vec<String>>>, mcpsock_daemon::ServerHandle) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder { calls: calls.clone() };
    let server = mcpsock_daemon::Server::new(socket)
        .storage(mcpsock_daemon::Storage::Sqlite(mcpsock_daemon::SqliteOptions::new(db)));
    let handle = runtime.block_on(server.serve(move || recorder.clone())).unwrap();
    (calls, handle)
}

#[test]
fn a_restored_session_gets_its_log_level_and_subscriptions_back() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let db = sandbox.path().join("state.db");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let request = |session: &str, id: u32, method: &str, params: serde_json::Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let answer = post(Target::Unix(&socket), "localhost", &session_headers(session), &body);
        assert_eq!(answer.status, 200, "{method}: {answer:?}");
        answer
    };

    let (calls, server) = serve_recorder(&runtime, &socket, &db);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    request(&session, 2, "logging/setLevel", json!({"level": "debug"}));
    request(&session, 3, "resources/subscribe", json!({"uri": "file:///kept"}));
    request(&session, 4, "resources/subscribe", json!({"uri": "file:///dropped"}));
    request(&session, 5, "resources/unsubscribe", json!({"uri": "file:///dropped"}));
    request(&session, 6, "logging/setLevel", json!({"level": "warning"}));
    assert_eq!(calls.lock().unwrap().len(), 5);
    runtime.block_on(server.shutdown()).unwrap();

    // A new process (a new handler) on the same database: the session's
    // first request restores it, with the settings still in force.
    let (calls, server) = serve_recorder(&runtime, &socket, &db);
    let pinged = request(&session, 7, "ping", json!({}));
    assert!(pinged.body.contains(r#""id":7"#), "{pinged:?}");
    assert_eq!(*calls.lock().unwrap(), ["setLevel \"warning\"", "subscribe file:///kept"]);
    runtime.block_on(server.shutdown()).unwrap();
}
