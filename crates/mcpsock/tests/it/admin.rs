//! The admin API over the real socket and over TCP, read with curl as a
//! monitoring script would (adversarial test 44 among them).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::*;

const KEY: &str = "admin-test-key-0123456789";

#[test]
fn status_servers_config_metrics_and_openapi_with_curl() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {
        "demo": {"command": demo_server(), "env": {"DEMO_TOKEN": "hunter2-secret"}},
        "broken": {"command": "/nonexistent/server"},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = &daemon.socket;

    let (code, health) = curl(socket, &[], "/health");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&health).unwrap()["status"], "degraded");

    let (code, status) = curl(socket, &[], "/status");
    assert_eq!(code, 200, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], "degraded");
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["admin_protocol"], 1);
    assert_eq!(status["socket"], socket.to_str().unwrap());
    assert_eq!(status["storage"]["mode"], "sqlite");
    assert_eq!(status["storage"]["encrypted"], false);
    assert_eq!(status["storage"]["durability"], "normal");
    assert!(status["storage"]["path"].as_str().is_some_and(|path| path.ends_with("mcpsock/state.db")));
    assert_eq!(status["endpoints"]["tools"], 4);
    assert!(
        status["uptime_seconds"].is_u64() && status["uptime"].is_string() && status["started_at"].is_string()
    );
    assert_eq!(status["reload"]["last_reload_status"], "never");
    assert_eq!(status["reload"]["in_progress"], false);
    let demo = upstream_in(&status, "demo").unwrap();
    assert_eq!((demo["state"].as_str(), demo["tools"].as_u64()), (Some("running"), Some(4)));
    assert!(demo["pid"].as_u64().is_some_and(|pid| process_exists(pid as u32)));
    let broken = upstream_in(&status, "broken").unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(broken["last_error"].as_str().unwrap().contains("command not found"), "{broken}");

    let (code, servers) = curl(socket, &[], "/servers");
    assert_eq!(code, 200);
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&servers)
        .unwrap()
        .iter()
        .map(|server| server["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["broken", "demo"]);

    let (code, config_text) = curl(socket, &[], "/config");
    assert_eq!(code, 200);
    assert!(!config_text.contains("hunter2-secret"), "{config_text}");
    let effective: Value = serde_json::from_str(&config_text).unwrap();
    let demo_config =
        effective["servers"].as_array().unwrap().iter().find(|server| server["name"] == "demo").unwrap();
    assert_eq!(demo_config["env"]["DEMO_TOKEN"], "<redacted>");
    // The per-server keys of tool control and request limits, at their defaults.
    assert_eq!(demo_config["prefix"], "demo");
    assert_eq!(demo_config["enabled_tools"], Value::Null);
    assert_eq!(demo_config["disabled_tools"], json!([]));
    assert_eq!(demo_config["max_concurrent_requests"], Value::Null);
    assert_eq!(demo_config["max_queued_requests"], 100);
    assert_eq!(demo_config["queue_timeout"], "30s");

    let session = McpSession::open(socket);
    assert_eq!(session.call("demo__echo", json!({"text": "hi"})).unwrap()["content"][0]["text"], "hi");
    assert!(session.call("demo__nope", json!({})).is_err());
    let (code, metrics) = curl(socket, &[], "/metrics");
    assert_eq!(code, 200);
    for line in [
        "mcpsock_requests_total{method=\"tools/call\",outcome=\"ok\"} 1",
        "mcpsock_requests_total{method=\"tools/call\",outcome=\"error\"} 1",
        "mcpsock_requests_total{method=\"initialize\",outcome=\"ok\"} 1",
        "mcpsock_request_duration_seconds_count{method=\"tools/call\"} 2",
        "mcpsock_sessions 1",
        "mcpsock_upstream_up{upstream=\"demo\"} 1",
        "mcpsock_upstream_up{upstream=\"broken\"} 0",
        "mcpsock_rejected_connections_total 0",
        "# TYPE mcpsock_request_duration_seconds histogram",
    ] {
        assert!(metrics.lines().any(|got| got == line), "{line} missing from\n{metrics}");
    }

    let (code, openapi) = curl(socket, &["-i"], "/admin/openapi.json");
    assert_eq!(code, 200);
    assert!(openapi.to_ascii_lowercase().contains("mcpsock-admin-protocol: 1"), "{openapi}");
    let document: Value = serde_json::from_str(openapi.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(document["paths"]["/status"]["get"].is_object());

    // The CLI reads the same API.
    let text = stdout(&sandbox.client(&["status"]));
    assert!(text.contains(&format!("pid          {}", daemon.pid())), "{text}");
    assert!(text.lines().any(|line| line.starts_with("broken") && line.contains("failed")), "{text}");
    let json: Value = serde_json::from_str(&stdout(&sandbox.client(&["status", "--json"]))).unwrap();
    assert_eq!(json["pid"], daemon.pid());
    assert!(daemon.stop().success());
}

#[test]
fn tools_and_call_reach_the_daemon_over_tcp_with_the_key() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.args(["--listen", "127.0.0.1:0"]).env("MCPSOCK_API_KEY", KEY);
    });
    let endpoint = format!("http://{}/mcp", tcp_address(&daemon));
    let run = |args: &[&str], key: Option<&str>| {
        let mut command = sandbox.command(args);
        command.args(["--endpoint", &endpoint]);
        match key {
            Some(key) => command.env("MCPSOCK_API_KEY", key),
            None => command.env_remove("MCPSOCK_API_KEY"),
        };
        command.output().unwrap()
    };

    let tools = run(&["tools"], Some(KEY));
    assert!(tools.status.success(), "{}", stderr(&tools));
    assert!(stdout(&tools).contains("demo__echo"), "{}", stdout(&tools));
    let call = run(&["call", "demo__add", "--arg", "a=2", "--arg", "b=40"], Some(KEY));
    assert!(call.status.success(), "{}", stderr(&call));
    assert_eq!(stdout(&call).trim(), "42");

    let refused = run(&["tools"], None);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("MCPSOCK_API_KEY"), "{}", stderr(&refused));
    assert!(daemon.stop().success());
}

#[test]
fn sec44_admin_over_tcp_needs_the_key_and_anonymous_health_reveals_nothing() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.args(["--listen", "127.0.0.1:0"]).env("MCPSOCK_API_KEY", KEY);
    });
    let address = tcp_address(&daemon);
    let url = |path: &str| format!("http://{address}{path}");
    let curl_tcp = |args: &[&str], path: &str| {
        let output = Command::new("curl")
            .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url(path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/config"),
        ("GET", "/servers"),
        ("GET", "/metrics"),
        ("GET", "/events"),
        ("GET", "/admin/openapi.json"),
        ("POST", "/reload"),
        ("POST", "/servers/demo/restart"),
    ] {
        let (code, body) = curl_tcp(&["-X", method], path);
        assert_eq!(code, 401, "{method} {path}: {body}");
    }
    let (code, body) = curl_tcp(&[], "/health");
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    for secret in [env!("CARGO_PKG_VERSION"), sandbox.path().to_str().unwrap(), KEY, "admin_protocol", "demo"]
    {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    let auth = format!("Authorization: Bearer {KEY}");
    let (code, body) = curl_tcp(&["-H", &auth], "/status");
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["tcp"], address.to_string());
    let (code, _) = curl_tcp(&["-H", &auth], "/health");
    assert_eq!(code, 200);

    // A reload with an invalid config: 4xx, the old config stays live,
    // nothing is half-applied, and /status says why.
    rewrite_config(
        &config,
        &json!({"mcpServers": {"demo": {"command": demo_server()}, "new": {"command": "/nonexistent/x"}}}),
    );
    let (code, body) = curl_tcp(&["-X", "POST", "-H", &auth], "/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("the old one stays in force") && body.contains("/nonexistent/x"), "{body}");
    let status = status_of(&daemon.socket);
    assert_eq!(status["reload"]["last_reload_status"], "failed");
    assert!(status["reload"]["last_reload_error"].as_str().unwrap().contains("/nonexistent/x"));
    assert!(upstream_in(&status, "new").is_none());
    assert_eq!(upstream_in(&status, "demo").unwrap()["state"], "running");
    let still = sandbox.client(&["call", "demo__echo", "--arg", "text=still"]);
    assert_eq!(stdout(&still).trim(), "still");
    let cli = sandbox.client(&["reload"]);
    assert_eq!(cli.status.code(), Some(2), "{}", stderr(&cli));
    assert!(stderr(&cli).contains("the old one stays in force"), "{}", stderr(&cli));
    let log = daemon.log.clone();
    assert!(daemon.stop().success());
    assert!(!std::fs::read_to_string(log).unwrap().contains(KEY));
}

/// Reads SSE frames from a running `curl -N` into `(id, event, data)`.
struct EventReader {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl EventReader {
    fn start(socket: &std::path::Path, last_event_id: Option<u64>) -> Self {
        let mut command = Command::new("curl");
        command.args(["-sN", "--unix-socket"]).arg(socket);
        if let Some(id) = last_event_id {
            command.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = command.arg("http://localhost/events").stdout(Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next event: `(id, event, data)`.
    fn next(&mut self) -> (Option<u64>, String, Value) {
        let (mut id, mut event, mut data) = (None, String::new(), Value::Null);
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if line.is_empty() {
                return (id, event, data);
            }
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse().ok();
            } else if let Some(value) = line.strip_prefix("event: ") {
                event = value.to_string();
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = serde_json::from_str(value).unwrap();
            }
        }
        panic!("the event stream ended");
    }

    /// Skips events until one of `kind` arrives.
    fn until(&mut self, kind: &str) -> (Option<u64>, Value) {
        loop {
            let (id, event, data) = self.next();
            if event == kind {
                return (id, data);
            }
        }
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_have_ids_and_resume_with_last_event_id() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {
        "demo": {"command": demo_server()},
        "other": {"command": demo_server()},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let mut events = EventReader::start(&daemon.socket, None);
    let (status_id, status) = events.until("status");
    assert_eq!(status["socket"], daemon.socket.to_str().unwrap());
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["upstreams"], 2);
    let status_id = status_id.expect("the status event carries the id to resume from");

    assert!(sandbox.client(&["disable", "other"]).status.success());
    let (stopped_id, stopped) = events.until("upstream.stopped");
    assert_eq!(stopped["name"], "other");
    let stopped_id = stopped_id.unwrap();
    assert!(stopped_id > status_id);
    let _session = McpSession::open(&daemon.socket);
    let (_, opened) = events.until("session.opened");
    assert_eq!(opened["sessions"], 1);
    drop(events);

    // While nobody listens: more events.
    assert!(sandbox.client(&["enable", "other"]).status.success());
    let mut resumed = EventReader::start(&daemon.socket, Some(stopped_id));
    let (id, event, _) = resumed.next();
    assert_ne!(event, "status", "a resumed stream starts without a status");
    assert_eq!(id, Some(stopped_id + 1), "the first event after {stopped_id} comes first");
    // The disable's `tools.changed` is published as the command returns;
    // `upstream.stopped` comes through the upstreams' event channel, so it
    // may land on either side of it. The session opened after both.
    let (id, event) = if event == "tools.changed" {
        let (id, event, _) = resumed.next();
        (id, event)
    } else {
        (id, event)
    };
    assert_eq!(event, "session.opened");
    assert!(id.is_some_and(|id| id <= stopped_id + 2), "{id:?}");
    let (started_id, started) = resumed.until("upstream.started");
    assert_eq!(started["name"], "other");
    assert!(started_id.unwrap() > stopped_id + 1);

    let garbage = curl(&daemon.socket, &["-H", "Last-Event-ID: not-a-number"], "/events");
    assert_eq!(garbage.0, 400, "{}", garbage.1);
    assert!(daemon.stop().success());
}

#[test]
fn session_closed_is_announced_for_a_delete_and_for_an_expiry() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {}, "session_idle_ttl": "300ms"}));
    let daemon = Daemon::start(&sandbox, &config);
    let mut events = EventReader::start(&daemon.socket, None);
    events.until("status");

    let deleted = open_session(Target::Unix(&daemon.socket), "localhost", "");
    events.until("session.opened");
    let delete = raw_request(
        Target::Unix(&daemon.socket),
        &format!("DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {deleted}"),
        b"",
    );
    assert!(delete.status / 100 == 2, "{delete:?}");
    let (_, closed) = events.until("session.closed");
    assert_eq!(closed["sessions"], 0);

    // A session left alone expires: that is announced too. (And the
    // deleted one was announced once: the next event is this opening.)
    open_session(Target::Unix(&daemon.socket), "localhost", "");
    let (_, kind, opened) = events.next();
    assert_eq!(kind, "session.opened");
    assert_eq!(opened["sessions"], 1);
    let (_, expired) = events.until("session.closed");
    assert_eq!(expired["sessions"], 0);
    drop(events);
    assert!(daemon.stop().success());
}
