//! Adversarial tests of the TCP listener, sessions and malformed input.
//! Each is named after its line in the project's list of adversarial tests
//! (`secNN_…`), so a reader can map one to the other.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::support::*;

const KEY: &str = "test-key-0123456789abcdef";

fn tcp_daemon(sandbox: &Sandbox, extra: Value) -> Daemon {
    let mut config =
        json!({"mcpServers": {"demo": {"command": demo_server()}}, "listen": "127.0.0.1:0", "api_key": KEY});
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let config = sandbox.write_config(&config);
    Daemon::start(sandbox, &config)
}

#[test]
fn sec15_tcp_listens_only_on_loopback_unless_told_otherwise() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    for address in ["0.0.0.0:0", "[::]:0", "0", "192.168.1.10:0", "10.1.2.3:8765"] {
        let output = sandbox.run(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            sandbox.socket().to_str().unwrap(),
            "--listen",
            address,
        ]);
        assert_eq!(output.status.code(), Some(2), "{address}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains("--dangerously-bind-non-loopback") || message.contains("is not IP:PORT"),
            "{address}: {message}"
        );
        assert!(!sandbox.socket().exists(), "{address}: nothing was started");
    }
    let daemon = tcp_daemon(&sandbox, json!({}));
    assert!(tcp_address(&daemon).ip().is_loopback());
    assert!(daemon.stop().success());
}

#[test]
fn sec16_tcp_requires_the_key_in_a_header_and_never_logs_it() {
    let sandbox = Sandbox::new();
    let daemon = tcp_daemon(&sandbox, json!({}));
    let address = tcp_address(&daemon);
    let host = format!("127.0.0.1:{}", address.port());
    let get = |path: &str, headers: &str| {
        let extra = if headers.is_empty() { String::new() } else { format!("\r\n{headers}") };
        raw_request(Target::Tcp(address), &format!("GET {path} HTTP/1.1\r\nHost: {host}{extra}"), b"")
    };
    let missing = get("/status", "");
    let wrong = get("/status", "Authorization: Bearer not-the-key-at-all");
    let in_query = get(&format!("/status?api_key={KEY}&key={KEY}"), "");
    let wrong_on_health = get("/health", "X-API-Key: not-the-key-at-all");
    for response in [&missing, &wrong, &in_query, &wrong_on_health] {
        assert_eq!(response.status, 401, "{response:?}");
        assert_eq!(response.body, missing.body, "the same answer whatever was wrong");
        assert_eq!(response.header("www-authenticate").as_deref(), Some("Bearer realm=\"mcpsock\""));
    }
    assert_eq!(get("/status", &format!("Authorization: Bearer {KEY}")).status, 200);
    assert_eq!(get("/status", &format!("X-API-Key: {KEY}")).status, 200);
    // Without a key, /health says only whether the daemon serves.
    let anonymous = get("/health", "");
    assert_eq!((anonymous.status, anonymous.body.as_str()), (200, r#"{"status":"ok"}"#));
    let call = post(Target::Tcp(address), &host, "", INITIALIZE);
    assert_eq!(call.status, 401, "MCP over TCP needs the key too");
    // The daemon's own user gets the key over the socket; TCP clients do not.
    let shown = sandbox.client(&["status", "--show-key"]);
    assert_eq!(stdout(&shown).trim(), KEY, "{}", stderr(&shown));
    let over_tcp = get(mcpsock_api_key_path(), &format!("X-API-Key: {KEY}"));
    assert_eq!(over_tcp.status, 403);
    assert!(daemon.stop().success());
    let log = std::fs::read_to_string(daemon_log(&sandbox)).unwrap();
    assert!(!log.contains(KEY), "the key never reaches the log");
}

fn mcpsock_api_key_path() -> &'static str {
    "/admin/api-key"
}

fn daemon_log(sandbox: &Sandbox) -> std::path::PathBuf {
    std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("daemon-"))
        .unwrap()
}

#[test]
fn sec17_sec18_sec19_origin_and_host_are_checked_on_tcp() {
    let sandbox = Sandbox::new();
    let daemon = tcp_daemon(&sandbox, json!({}));
    let address = tcp_address(&daemon);
    let host = format!("127.0.0.1:{}", address.port());
    let auth = format!("Authorization: Bearer {KEY}");

    let session = open_session(Target::Tcp(address), &host, &auth);
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"demo__echo","arguments":{"text":"x"}}}"#;
    let with_origin = post(
        Target::Tcp(address),
        &host,
        &format!("{auth}\r\nOrigin: http://evil.example\r\nMcp-Session-Id: {session}"),
        call,
    );
    assert_eq!(with_origin.status, 403, "{with_origin:?}");
    assert!(!with_origin.body.contains("\"result\""), "the tool was not called");

    let evil_host = format!("evil.example:{}", address.port());
    assert_eq!(post(Target::Tcp(address), &evil_host, &auth, INITIALIZE).status, 403);
    // A tool call in the open session, the request mcpsock answers without
    // rmcp's HTTP layer, meets the same check.
    let from_evil_host =
        post(Target::Tcp(address), &evil_host, &format!("{auth}\r\nMcp-Session-Id: {session}"), call);
    assert_eq!(from_evil_host.status, 403, "{from_evil_host:?}");
    assert!(!from_evil_host.body.contains("\"result\""), "the tool was not called");
    let same_call = post(Target::Tcp(address), &host, &format!("{auth}\r\nMcp-Session-Id: {session}"), call);
    assert_eq!(same_call.status, 200, "{same_call:?}");
    assert!(same_call.body.contains("\"result\""), "{same_call:?}");
    let get = raw_request(
        Target::Tcp(address),
        &format!("GET /health HTTP/1.1\r\nHost: {evil_host}\r\n{auth}"),
        b"",
    );
    assert_eq!(get.status, 403);

    let preflight = raw_request(
        Target::Tcp(address),
        &format!(
            "OPTIONS /mcp HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST"
        ),
        b"",
    );
    assert_ne!(preflight.status / 100, 2, "{preflight:?}");
    assert!(
        !preflight.head.to_ascii_lowercase().contains("access-control-allow"),
        "no CORS grant: {preflight:?}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn sec20_a_browser_origin_on_the_socket_is_refused() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let response = post(Target::Unix(&socket), "localhost", "Origin: http://localhost:3000", INITIALIZE);
    assert_eq!(response.status, 403, "{response:?}");
    let health =
        raw_request(Target::Unix(&socket), "GET /health HTTP/1.1\r\nHost: localhost\r\nOrigin: null", b"");
    assert_eq!(health.status, 403);
    assert!(daemon.stop().success());
}

#[test]
fn sec21_session_ids_are_unique_random_and_printable() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "max_sessions_per_principal": 20000}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let mut ids = HashSet::new();
    let mut previous: Option<u128> = None;
    for _ in 0..10_000 {
        let id = open_session(Target::Unix(&socket), "localhost", "");
        assert_eq!(id.len(), 64, "256 bits, hex: {id}");
        assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()), "{id}");
        // Consecutive ids share no structure: not a counter.
        let head = u128::from_str_radix(&id[..32], 16).unwrap();
        if let Some(previous) = previous {
            assert!(head.abs_diff(previous) > 1 << 64, "ids look sequential");
        }
        previous = Some(head);
        assert!(ids.insert(id), "a session id repeated");
    }
    assert!(daemon.stop().success());
}

#[test]
fn sec22_sessions_are_required_closable_and_bound_to_their_principal() {
    let sandbox = Sandbox::new();
    let daemon = tcp_daemon(&sandbox, json!({}));
    let socket = sandbox.socket();
    let address = tcp_address(&daemon);
    let host = format!("127.0.0.1:{}", address.port());
    let auth = format!("Authorization: Bearer {KEY}");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let version = "MCP-Protocol-Version: 2025-06-18";

    let without = post(Target::Unix(&socket), "localhost", version, list);
    assert_eq!(without.status, 400, "{without:?}");

    let session = open_session(Target::Unix(&socket), "localhost", "");
    let own =
        post(Target::Unix(&socket), "localhost", &format!("{version}\r\nMcp-Session-Id: {session}"), list);
    assert_eq!(own.status, 200, "{own:?}");
    // The holder of the API key is another principal: the id means nothing to it.
    let stolen =
        post(Target::Tcp(address), &host, &format!("{auth}\r\n{version}\r\nMcp-Session-Id: {session}"), list);
    assert_eq!(stolen.status, 404, "{stolen:?}");
    let unknown = post(
        Target::Unix(&socket),
        "localhost",
        &format!("{version}\r\nMcp-Session-Id: {}", "0".repeat(64)),
        list,
    );
    assert_eq!(unknown.status, 404);

    let delete = raw_request(
        Target::Unix(&socket),
        &format!("DELETE /mcp HTTP/1.1\r\nHost: localhost\r\n{version}\r\nMcp-Session-Id: {session}"),
        b"",
    );
    assert!(delete.status / 100 == 2, "{delete:?}");
    let after =
        post(Target::Unix(&socket), "localhost", &format!("{version}\r\nMcp-Session-Id: {session}"), list);
    assert_eq!(after.status, 404, "{after:?}");
    assert!(daemon.stop().success());
}

#[test]
fn sec23_garbage_or_overlong_last_event_ids_are_harmless() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let overlong = "9".repeat(16 * 1024);
    for last_event_id in ["garbage", "-1/-1", "18446744073709551616/0", "0/999999", overlong.as_str()] {
        let response = raw_request(
            Target::Unix(&socket),
            &format!(
                "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}\r\nLast-Event-ID: {last_event_id}"
            ),
            b"",
        );
        let short = &last_event_id[..last_event_id.len().min(24)];
        match response.status {
            400 | 404 => {}
            200 => assert!(
                !response.body.contains("\"jsonrpc\""),
                "{short}: replayed something: {}",
                response.body
            ),
            other => panic!("{short}: unexpected status {other}: {}", response.head),
        }
        assert_eq!(daemon.health()["status"], "ok", "{short}: still serving");
    }
    assert!(daemon.stop().success());
}

#[test]
fn sec24_sessions_per_principal_are_capped() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "max_sessions_per_principal": 3}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let sessions: Vec<String> =
        (0..3).map(|_| open_session(Target::Unix(&socket), "localhost", "")).collect();
    let refused = post(Target::Unix(&socket), "localhost", "", INITIALIZE);
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.body.contains("max_sessions_per_principal"), "{}", refused.body);
    // Closing one makes room again.
    let delete = raw_request(
        Target::Unix(&socket),
        &format!("DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {}", sessions[0]),
        b"",
    );
    assert!(delete.status / 100 == 2, "{delete:?}");
    open_session(Target::Unix(&socket), "localhost", "");
    assert!(daemon.stop().success());
}

#[test]
fn sec24_idle_sessions_expire() {
    let sandbox = Sandbox::new();
    // Long enough that a loaded machine still opens the stream below before
    // the session expires.
    let config = sandbox.write_config(&json!({"mcpServers": {}, "session_idle_ttl": "1s"}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let headers = format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}");
    // Any request would keep the session alive, so wait on its standalone
    // stream instead: it ends when the session expires.
    {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(stream, "GET /mcp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: text/event-stream\r\n{headers}\r\n\r\n").unwrap();
        let mut seen = Vec::new();
        stream.read_to_end(&mut seen).expect("the stream ends when the session expires");
        assert!(
            String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }
    // The stream ends as the session expires, a moment before rmcp's service
    // closes it: a request even in that moment is answered 404.
    assert_eq!(post(Target::Unix(&socket), "localhost", &headers, list).status, 404);
    wait_until("the expired session's row is gone", || sandbox.stored_sessions() == 0);
    assert_eq!(post(Target::Unix(&socket), "localhost", &headers, list).status, 404);
    assert!(daemon.stop().success());
}

#[test]
fn sec24_a_session_does_not_expire_while_its_client_waits_for_an_answer() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({
        "mcpServers": {"demo": {"command": demo_server()}},
        "session_idle_ttl": "1s",
    }));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let headers = format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}");
    // Without a progress token the tool sends nothing while it counts: for
    // 2.5 s the session sees no message either way, well past its idle time.
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"demo__countdown","arguments":{"steps":1,"interval_ms":2500}}}"#;
    let answered = raw_request_waiting(
        Target::Unix(&socket),
        &format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\n{headers}"),
        call.as_bytes(),
        TIMEOUT,
    );
    assert_eq!(answered.status, 200, "{answered:?}");
    assert!(answered.body.contains(r#""text":"done""#), "the call is answered: {}", answered.body);
    let list = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    assert_eq!(
        post(Target::Unix(&socket), "localhost", &headers, list).status,
        200,
        "the session is still open"
    );
    assert!(daemon.stop().success());
}

#[test]
fn sec24_sessions_that_expire_while_stopped_are_purged_on_the_next_run() {
    let sandbox = Sandbox::new();
    let config = sandbox
        .write_config(&json!({"mcpServers": {}, "session_idle_ttl": "1s", "ttl_cleanup_interval": "100ms"}));
    let socket = sandbox.socket();
    let daemon = Daemon::start(&sandbox, &config);
    let session = open_session(Target::Unix(&socket), "localhost", "");
    assert!(daemon.stop().success());
    assert_eq!(sandbox.stored_sessions(), 1, "a clean stop keeps the session for the next run");

    let daemon = Daemon::start(&sandbox, &config);
    // The cleanup runs every 100 ms and removes the row once it is 1 s old.
    wait_until("the cleanup removes the expired session", || sandbox.stored_sessions() == 0);
    let headers = format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(post(Target::Unix(&socket), "localhost", &headers, list).status, 404);
    assert!(daemon.stop().success());
}

#[test]
fn sec26_oversized_bodies_are_refused_and_the_daemon_keeps_serving() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let big = vec![b'['; 10 * 1024 * 1024];
    let with_length = raw_request(
        Target::Unix(&socket),
        &format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}"),
        &big,
    );
    assert_eq!(with_length.status, 413, "{}", with_length.head);

    // Without Content-Length: chunked.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{Read, Write};
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes());
    for _ in 0..10 {
        let chunk = vec![b' '; 1024 * 1024];
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{}", response.lines().next().unwrap_or(""));
    assert_eq!(daemon.health()["status"], "ok", "still serving");
    assert!(daemon.stop().success());
}

#[test]
fn sec29_malformed_json_gets_a_4xx_and_the_daemon_keeps_serving() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let nested = "[".repeat(100_000);
    let huge_key = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","{}":1}}"#, "k".repeat(1024 * 1024));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}".to_vec()),
        ("BOM", "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".as_bytes().to_vec()),
        ("deep nesting", nested.into_bytes()),
        ("1 MB key", huge_key.into_bytes()),
        ("1e400", br#"{"jsonrpc":"2.0","id":1e400,"method":"initialize"}"#.to_vec()),
        ("batch", format!("[{INITIALIZE},{INITIALIZE}]").into_bytes()),
        ("a response", br#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_vec()),
        ("no jsonrpc", br#"{"id":1,"method":"initialize","params":{}}"#.to_vec()),
        ("not JSON", b"hello".to_vec()),
    ];
    for (what, body) in bodies {
        let response = raw_request(
            Target::Unix(&socket),
            &format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}"),
            &body,
        );
        assert!(response.status / 100 == 4, "{what}: {} {}", response.status, response.body);
        assert_eq!(daemon.health()["status"], "ok", "{what}: still serving");
    }
    assert!(daemon.stop().success());
}

#[test]
fn sec30_header_abuse_is_refused() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

    let many: String = (0..200).map(|i| format!("\r\nX-Filler-{i}: {i}")).collect();
    let response =
        raw_request(Target::Unix(&socket), &format!("GET /health HTTP/1.1\r\nHost: localhost{many}"), b"");
    assert_eq!(response.status, 431, "200 headers: {}", response.head);
    let long = "v".repeat(64 * 1024);
    let response = raw_request(
        Target::Unix(&socket),
        &format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Long: {long}"),
        b"",
    );
    assert_eq!(response.status, 431, "a 64 KB header: {}", response.head);

    let twice =
        format!("Mcp-Session-Id: {session}\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-06-18");
    assert_eq!(post(Target::Unix(&socket), "localhost", &twice, list).status, 400);
    let versions = format!(
        "Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-06-18\r\nMCP-Protocol-Version: 2025-06-18"
    );
    assert_eq!(post(Target::Unix(&socket), "localhost", &versions, list).status, 400);
    let unsupported = format!("Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: 1999-01-01");
    assert_eq!(post(Target::Unix(&socket), "localhost", &unsupported, list).status, 400);
    assert_eq!(daemon.health()["status"], "ok");
    assert!(daemon.stop().success());
}

#[test]
fn sec39_a_config_file_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = sandbox.run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        sandbox.socket().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("lets other users change it"), "{}", stderr(&output));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    let output = sandbox.run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        sandbox.socket().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("belongs to uid 65534"), "{}", stderr(&output));
    assert!(!sandbox.socket().exists());
}

/// Lets this test process hold thousands of connections.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap();
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn sec27_slowloris_connections_are_closed_at_the_header_timeout() {
    use std::io::{Read, Write};
    raise_descriptor_limit();
    let sandbox = Sandbox::new();
    let config =
        sandbox.write_config(&json!({"mcpServers": {}, "header_timeout": "1s", "max_connections": 2000}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let mut slow: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .map(|_| {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: loc").unwrap();
            stream
        })
        .collect();
    // Still serving while they dangle.
    assert_eq!(http_get(&socket, "/health").unwrap().0, 200);
    // Each is closed once its head is late; none got an answer.
    for stream in &mut slow {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "a partial request was answered");
    }
    assert_eq!(http_get(&socket, "/health").unwrap().0, 200);
    assert!(daemon.stop().success());
}

#[test]
fn sec28_idle_connections_are_capped_and_new_clients_still_get_in() {
    raise_descriptor_limit();
    let sandbox = Sandbox::new();
    // Sessions in memory: the state database opens its log file a moment
    // after the socket is ready, which would move the baseline.
    let config = sandbox.write_config(&json!({"mcpServers": {}, "max_connections": 64, "storage": "memory"}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let baseline = open_descriptors(daemon.pid());
    let idle: Vec<_> = (0..5000).map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap()).collect();
    // A new client still gets in: the oldest idle connection makes room.
    assert_eq!(http_get(&socket, "/health").unwrap().0, 200);
    let open = open_descriptors(daemon.pid());
    assert!(open <= baseline + 64 + 1, "descriptors stay under the cap: {open} open, {baseline} at rest");
    drop(idle);
    assert!(daemon.stop().success());
}

#[test]
fn tcp_only_serves_without_a_socket() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "enable_socket": false}));
    let refused = sandbox.run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        sandbox.socket().to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("add --listen 127.0.0.1:PORT"), "{}", stderr(&refused));

    let log = sandbox.path().join("tcp-only.log");
    let mut serve = sandbox.command(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        sandbox.socket().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    serve.env("MCPSOCK_API_KEY", KEY).stderr(std::fs::File::create(&log).unwrap());
    let child = serve.spawn().unwrap();
    let mut daemon = Daemon { child, socket: sandbox.socket(), log: log.clone() };
    wait_until("the TCP listener is up", || daemon.log_text().contains("serving loopback TCP"));
    let address = tcp_address(&daemon);
    let host = format!("127.0.0.1:{}", address.port());
    let health = raw_request(
        Target::Tcp(address),
        &format!("GET /health HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}"),
        b"",
    );
    assert_eq!(health.status, 200, "{health:?}");
    assert!(!sandbox.socket().exists(), "no Unix socket");
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait_exit().success());
}
