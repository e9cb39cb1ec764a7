//! `mcpsock serve` end to end: serving, routing, failures, shutdown, the
//! client commands and the bridge.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn serves_lists_and_calls_tools() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());

    let tools = sandbox.client(&["tools"]);
    assert!(tools.status.success(), "{}", stderr(&tools));
    let table = stdout(&tools);
    assert!(table.starts_with("TOOL"), "{table}");
    for name in ["demo__add", "demo__echo", "demo__now"] {
        assert!(table.contains(name), "{name} missing from\n{table}");
    }
    let json_tools: Value = serde_json::from_str(&stdout(&sandbox.client(&["tools", "--json"]))).unwrap();
    let names: Vec<&str> =
        json_tools.as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["demo__add", "demo__countdown", "demo__echo", "demo__now"], "deterministic order");

    let add = sandbox.client(&["call", "demo__add", "--arg", "a=2", "--arg", "b=40"]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert_eq!(stdout(&add).trim(), "42");
    // The schema says `text` is a string, so 007 stays text.
    let echo =
        sandbox.client(&["call", "demo__echo", "--json", r#"{"text": "ignored"}"#, "--arg", "text=007"]);
    assert_eq!(stdout(&echo).trim(), "007");
    let raw = sandbox.client(&["call", "demo__echo", "--arg", "text=hi", "--raw"]);
    let raw: Value = serde_json::from_str(&stdout(&raw)).unwrap();
    assert_eq!(raw["content"][0]["text"], "hi");

    let unknown = sandbox.client(&["call", "demo__nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no tool named \"demo__nope\"; run `mcpsock tools`"),
        "{}",
        stderr(&unknown)
    );
    let invalid = sandbox.client(&["call", "demo__add", "--arg", "a=x", "--arg", "b=1"]);
    assert_eq!(invalid.status.code(), Some(6), "a bad argument is the tool's error: {}", stderr(&invalid));

    let status = sandbox.client(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.starts_with("mcpsock is running at unix://") && text.contains(": ok\n"), "{text}");
    assert!(text.lines().any(|line| line.starts_with("demo") && line.contains("running")), "{text}");
    let status_json: Value = serde_json::from_str(&stdout(&sandbox.client(&["status", "--json"]))).unwrap();
    assert_eq!(status_json["upstreams"][0]["tools"], 4);
    let no_key = sandbox.client(&["status", "--show-key"]);
    assert_eq!(no_key.status.code(), Some(1));
    assert!(stderr(&no_key).contains("TCP is off"), "{}", stderr(&no_key));

    let health = daemon.health();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["upstreams"][0]["name"], "demo");
    assert_eq!(health["upstreams"][0]["state"], "running");
    assert_eq!(health["upstreams"][0]["tools"], 4);
    assert!(daemon.stop().success());
}

#[test]
fn a_failed_upstream_is_reported_and_the_others_serve() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {
        "broken": {"command": "/nonexistent/mcp-server"},
        "crashes": {"command": "/bin/sh", "args": ["-c", "echo boom >&2; exit 3"]},
        "demo": {"command": demo_server()},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let health = daemon.health();
    assert_eq!(health["status"], "degraded");
    let upstreams = health["upstreams"].as_array().unwrap();
    let by_name = |name: &str| upstreams.iter().find(|upstream| upstream["name"] == name).unwrap().clone();
    assert_eq!(by_name("broken")["state"], "failed");
    let error = by_name("broken")["error"].as_str().unwrap().to_string();
    assert!(error.contains("command not found: /nonexistent/mcp-server"), "{error}");
    assert_eq!(by_name("crashes")["state"], "failed");
    assert_eq!(by_name("demo")["state"], "running");
    let log = daemon.log_text();
    assert!(log.contains("upstream failed to start"), "{log}");
    assert!(log.contains("stderr: boom"), "the child's stderr reaches the log: {log}");

    let add = sandbox.client(&["call", "demo__add", "--arg", "a=1", "--arg", "b=1"]);
    assert_eq!(stdout(&add).trim(), "2", "{}", stderr(&add));
    assert!(daemon.stop().success());
}

#[test]
fn two_clients_share_one_upstream_process() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let socket = sandbox.socket();
            let mut command = sandbox.command(&[
                "call",
                "demo__echo",
                "--arg",
                &format!("text=client-{i}"),
                "--socket",
                socket.to_str().unwrap(),
            ]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let output = client.wait_with_output().unwrap();
        assert_eq!(stdout(&output).trim(), format!("client-{i}"), "{}", stderr(&output));
    }
    let children: Vec<u32> =
        processes().into_iter().filter(|&(_, ppid, _)| ppid == daemon.pid()).map(|(pid, _, _)| pid).collect();
    assert_eq!(children.len(), 1, "one upstream process for all clients: {children:?}");
    assert_eq!(daemon.health()["upstreams"][0]["pid"], json!(children[0]));
    assert!(daemon.stop().success());
}

#[test]
fn sec14_sec36_sigterm_stops_upstream_groups_and_removes_socket_and_pid_file() {
    let sandbox = Sandbox::new();
    // The upstream leaves a long-lived grandchild in its process group.
    let script = format!("sleep 600 & exec {}", demo_server().display());
    let config = sandbox
        .write_config(&json!({"mcpServers": {"demo": {"command": "/bin/sh", "args": ["-c", script]}}}));
    let daemon = Daemon::start(&sandbox, &config);
    let upstream = daemon.health()["upstreams"][0]["pid"].as_u64().unwrap() as u32;
    let group: Vec<u32> =
        processes().into_iter().filter(|&(_, _, pgid)| pgid == upstream).map(|(pid, _, _)| pid).collect();
    assert_eq!(group.len(), 2, "the upstream and its grandchild share a group: {group:?}");
    let grandchild = *group.iter().find(|&&pid| pid != upstream).unwrap();
    // The grandchild inherited no descriptor of the daemon: only 0, 1, 2.
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{grandchild}/fd"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);

    let socket = sandbox.socket();
    let pid_file = socket.with_file_name("mcpsock.sock.pid");
    assert!(pid_file.exists());
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed");
    assert!(!pid_file.exists(), "pid file removed");
    assert!(!process_exists(upstream), "upstream stopped");
    assert!(!process_exists(grandchild), "the whole process group stopped");
}

#[test]
fn sigint_is_a_clean_stop_too() {
    let sandbox = Sandbox::new();
    let mut daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    daemon.signal(rustix::process::Signal::INT);
    assert!(daemon.wait_exit().success());
    assert!(!sandbox.socket().exists());
}

#[test]
fn sec31_sec32_sec39_upstreams_get_a_cleared_environment_and_literal_arguments() {
    let sandbox = Sandbox::new();
    let env_dump = sandbox.path().join("env.txt");
    let script = format!("env > {}; exec \"$0\" \"$@\"", env_dump.display());
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {
        "command": "/bin/sh",
        "args": ["-c", script, demo_server(), "; touch /tmp/pwn"],
        "env": {"DEMO_TOKEN": "configured-secret"},
    }}}));
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command
            .env("MCPSOCK_API_KEY", "daemon-key")
            .env("LISTEN_FDS", "1")
            .env("NOTIFY_SOCKET", "/x")
            .env("SECRET_X", "1");
    });
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(env.contains("DEMO_TOKEN=configured-secret"), "{env}");
    for leaked in ["MCPSOCK_API_KEY", "LISTEN_FDS", "NOTIFY_SOCKET", "SECRET_X", "XDG_RUNTIME_DIR"] {
        assert!(!env.contains(leaked), "{leaked} leaked into the upstream:\n{env}");
    }
    let upstream = daemon.health()["upstreams"][0]["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{upstream}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("configured-secret"));
    assert!(!std::path::Path::new("/tmp/pwn").exists());
    assert!(!daemon.log_text().contains("configured-secret"), "secrets never reach the log");
    assert!(daemon.stop().success());
}

/// Bad input: one actionable message, the documented exit code, and
/// nothing left behind.
#[test]
fn sec11_sec12_bad_config_is_refused_with_a_clear_message() {
    let long_socket = format!("/tmp/{}/s.sock", "d".repeat(120));
    let cases: &[(&str, &str, &str)] = &[
        ("{\"mcpServers\": {", "", "config.json:1:16: EOF while parsing"),
        (r#"{"mcpServerz": {}}"#, "", "unknown field `mcpServerz`"),
        (r#"{"mcpServers": {"a": {"args": []}}}"#, "", "mcpServers.a: \"command\" is missing"),
        (r#"{"socket": "@hidden"}"#, "", "abstract socket addresses are not supported"),
        ("{}", &long_socket, "this platform allows at most 107"),
    ];
    for (text, socket, expected) in cases {
        let sandbox = Sandbox::new();
        let config = sandbox.path().join("config.json");
        std::fs::write(&config, text).unwrap();
        let socket = if socket.is_empty() {
            sandbox.socket().to_str().unwrap().to_string()
        } else {
            socket.to_string()
        };
        let output = sandbox.run(&["serve", "--config", config.to_str().unwrap(), "--socket", &socket]);
        assert_eq!(output.status.code(), Some(2), "{text}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{text}: expected {expected:?} in {}", stderr(&output));
        assert!(!sandbox.path().join("run").exists(), "{text}: nothing was created");
    }

    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("missing.json");
    let output = sandbox.run(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("does not exist; create it or pass another with --config"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bridge_relays_a_stdio_session_and_exits_with_stdin() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let mut bridge = sandbox.command(&["bridge", "--socket", socket.to_str().unwrap()]);
    bridge.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut bridge = bridge.spawn().unwrap();
    let mut stdin = bridge.stdin.take().unwrap();
    let mut lines = BufReader::new(bridge.stdout.take().unwrap()).lines();
    let send = |stdin: &mut std::process::ChildStdin, message: Value| writeln!(stdin, "{message}").unwrap();

    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}),
    );
    let initialized: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(initialized["id"], 1);
    assert_eq!(initialized["result"]["serverInfo"]["name"], "mcpsock");
    send(&mut stdin, json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "demo__echo", "arguments": {"text": "through the bridge"}}}),
    );
    let called: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(called["id"], 2);
    assert_eq!(called["result"]["content"][0]["text"], "through the bridge");

    drop(stdin);
    assert!(wait_for_exit("the bridge exits after stdin closes", &mut bridge).success());
    assert!(daemon.stop().success());
}

#[test]
fn bridge_exits_when_its_client_hangs_up_right_after_initialize() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let mut bridge = sandbox.command(&["bridge", "--socket", socket.to_str().unwrap()]);
    bridge.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut bridge = bridge.spawn().unwrap();
    let mut stdin = bridge.stdin.take().unwrap();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    writeln!(stdin, "{initialize}").unwrap();
    let mut lines = BufReader::new(bridge.stdout.take().unwrap()).lines();
    let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(answer["id"], 1);
    drop(stdin);
    assert!(wait_for_exit("the bridge exits", &mut bridge).success());
    assert!(daemon.stop().success());
}

#[test]
fn client_commands_without_a_daemon_say_so() {
    let sandbox = Sandbox::new();
    // Client commands exit 5; the monitoring commands follow the LSB
    // `status` convention: 3, "not running".
    for (args, code) in
        [(&["bridge"][..], 5), (&["tools"], 5), (&["call", "demo__echo"], 5), (&["status"], 3)]
    {
        let output = sandbox.client(args);
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert!(
            stderr(&output).contains("no mcpsock daemon is running at unix://"),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("start one with `mcpsock serve`"), "{}", stderr(&output));
    }
}

#[test]
fn clients_find_the_default_socket_like_the_daemon() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let mut serve = sandbox.command(&["serve", "--config", config.to_str().unwrap()]);
    serve.stderr(Stdio::null());
    let child = serve.spawn().unwrap();
    let socket = sandbox.path().join("xdg-runtime/mcpsock/mcpsock.sock");
    let mut daemon = Daemon { child, socket: socket.clone(), log: sandbox.path().join("none") };
    wait_until("the default socket answers", || http_get(&socket, "/health").is_ok());
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    let output = sandbox.run(&["call", "demo__add", "-a", "a=1", "-a", "b=2"]);
    assert_eq!(stdout(&output).trim(), "3", "{}", stderr(&output));
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait_exit().success());
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    // Like `mcpsock tools | head -0`: the reader is gone before we print.
    let mut tools = sandbox.command(&["tools", "--socket", socket.to_str().unwrap()]);
    tools.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = tools.spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    assert!(daemon.stop().success());
}

#[test]
fn bench_measures_the_daemon_and_a_stdio_server() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let pid = daemon.pid().to_string();
    for era in ["legacy", "2026-07-28"] {
        let output = sandbox.client(&[
            "bench",
            "--tool",
            "demo__echo",
            "--arg",
            "text=hi",
            "--connections",
            "2",
            "--requests",
            "50",
            "--warmup",
            "0s",
            "--era",
            era,
            "--server-pid",
            &pid,
            "--json",
        ]);
        assert!(output.status.success(), "{era}: {}", stderr(&output));
        let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(report["requests"], 50, "{era}: {report}");
        assert_eq!(report["errors"], 0);
        assert_eq!(report["era"], era);
        assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
        assert!(report["server"]["peak_rss_kib"].as_u64().unwrap() > 0);
    }
    let failing = sandbox.client(&[
        "bench",
        "--tool",
        "demo__add",
        "--arg",
        "a=x",
        "--requests",
        "5",
        "--warmup",
        "0s",
    ]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(
        stderr(&failing).contains("no request succeeded; the first error: the tool reported an error"),
        "{}",
        stderr(&failing)
    );

    let stdio = sandbox.run(&[
        "bench",
        "--stdio",
        "--tool",
        "echo",
        "--arg",
        "text=hi",
        "--requests",
        "20",
        "--warmup",
        "0s",
        "--json",
        "--",
        demo_server().to_str().unwrap(),
    ]);
    assert!(stdio.status.success(), "{}", stderr(&stdio));
    let report: Value = serde_json::from_str(&stdout(&stdio)).unwrap();
    assert_eq!(report["requests"], 20);
    assert!(daemon.stop().success());
}

/// The events of one reply stream (its chunked framing skipped), each as
/// (data, whether it has an id, retry), with the JSON-RPC id of the data
/// left out.
fn events_of(body: &str) -> Vec<(Value, bool, Option<String>)> {
    body.split("\n\n")
        .filter_map(|event| {
            let field =
                |name: &str| event.lines().find_map(|line| line.strip_prefix(name)).map(str::to_string);
            let mut data: Value = serde_json::from_str(&field("data: ")?).unwrap_or(Value::Null);
            if let Some(message) = data.as_object_mut() {
                message.remove("id");
            }
            Some((data, field("id: ").is_some(), field("retry: ")))
        })
        .collect()
}

/// Sends `notifications/initialized` in `session` and returns the headers
/// of a request in it.
fn initialized(socket: &std::path::Path, session: &str) -> String {
    let in_session = format!("Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18");
    let initialized = post(
        Target::Unix(socket),
        "localhost",
        &in_session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(initialized.status, 202, "{initialized:?}");
    in_session
}

#[test]
fn a_session_opens_alike_through_mcpsock_s_path_and_rmcp_s() {
    // mcpsock answers a plain `initialize` itself; with weights in Accept
    // the same request is rmcp's. The replies must match (the priming
    // event, then the answer), and each session must work and close alike.
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let open = |accept: &str| {
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: {accept}"
        );
        raw_request_waiting(Target::Unix(&socket), &head, INITIALIZE.as_bytes(), TIMEOUT)
    };
    let ours = open("application/json, text/event-stream");
    let rmcp = open("application/json;q=0.9, text/event-stream;q=1");
    let mut sessions = Vec::new();
    for reply in [&ours, &rmcp] {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("content-type").as_deref(), Some("text/event-stream"), "{reply:?}");
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"), "{reply:?}");
        let id = reply.header("mcp-session-id").expect("a session id");
        assert_eq!(id.len(), 64, "{id}");
        sessions.push(id);
    }
    assert_ne!(sessions[0], sessions[1]);
    let (ours_events, rmcp_events) = (events_of(&ours.body), events_of(&rmcp.body));
    assert_eq!(ours_events, rmcp_events, "mcpsock's reply:\n{}\nrmcp's reply:\n{}", ours.body, rmcp.body);
    assert_eq!(ours_events.len(), 2, "{}", ours.body);
    assert_eq!(ours_events[0], (Value::Null, true, Some("3000".to_string())), "{}", ours.body);
    assert_eq!(ours_events[1].0["result"]["serverInfo"]["name"], "mcpsock", "{}", ours.body);
    assert!(ours.body.contains("id: 0\n"), "{}", ours.body);

    for session in &sessions {
        let in_session = initialized(&socket, session);
        let head = format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\n{in_session}");
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "demo__echo", "arguments": {"text": "hi"}}});
        let reply = raw_request_waiting(Target::Unix(&socket), &head, call.to_string().as_bytes(), TIMEOUT);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body.contains(r#""text":"hi""#), "{reply:?}");

        let delete = raw_request(
            Target::Unix(&socket),
            &format!("DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {session}"),
            b"",
        );
        assert_eq!(delete.status / 100, 2, "{delete:?}");
        let after = raw_request_waiting(Target::Unix(&socket), &head, call.to_string().as_bytes(), TIMEOUT);
        assert_eq!(after.status, 404, "{after:?}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_tool_call_gets_the_same_reply_from_mcpsock_s_path_and_rmcp_s() {
    // mcpsock answers a plain tool call in an open session itself; with
    // weights in Accept the same call is rmcp's. The replies must match:
    // the priming event, each progress notification and the answer.
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    let socket = sandbox.socket();
    let session = open_session(Target::Unix(&socket), "localhost", "");
    let in_session = initialized(&socket, &session);

    let call = |id: u32, extra: &str| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "demo__countdown", "arguments": {"steps": 2, "interval_ms": 1},
            "_meta": {"progressToken": format!("p{id}")}}});
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n{in_session}"
        );
        raw_request_waiting(Target::Unix(&socket), &head, body.to_string().as_bytes(), TIMEOUT)
    };
    let ours = call(2, "Accept: application/json, text/event-stream");
    let rmcp = call(3, "Accept: application/json;q=0.9, text/event-stream;q=1");
    for reply in [&ours, &rmcp] {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("content-type").as_deref(), Some("text/event-stream"), "{reply:?}");
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"), "{reply:?}");
    }
    let (ours_events, mut rmcp_events) = (events_of(&ours.body), events_of(&rmcp.body));
    // Each stream's progress carries its own token.
    for (data, _, _) in &mut rmcp_events {
        if data["params"]["progressToken"] == "p3" {
            data["params"]["progressToken"] = json!("p2");
        }
    }
    assert_eq!(ours_events, rmcp_events, "mcpsock's reply:\n{}\nrmcp's reply:\n{}", ours.body, rmcp.body);
    let kinds: Vec<&str> = ours_events
        .iter()
        .map(|(data, _, retry)| match (&data["method"], &data["result"], retry) {
            (Value::Null, Value::Null, Some(_)) => "priming",
            (method, Value::Null, _) if method == "notifications/progress" => "progress",
            (_, result, _) if result["content"][0]["text"] == "done" => "answer",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["priming", "progress", "progress", "answer"], "{}", ours.body);
    assert!(
        ours_events.iter().all(|(_, has_id, _)| *has_id),
        "every event can be resumed from: {}",
        ours.body
    );
    assert!(daemon.stop().success());
}
