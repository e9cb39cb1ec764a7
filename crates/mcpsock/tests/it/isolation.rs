//! `isolation: "per-session"`: a connection (a process) of its own per
//! downstream session, stopped with the session or when idle; shared servers
//! keep one process for everyone.

use serde_json::{Value, json};

use crate::support::*;

fn isolation_daemon(sandbox: &Sandbox, idle_timeout: &str) -> (Daemon, std::path::PathBuf) {
    let config = sandbox.write_config(&json!({"mcpServers": {
        "own": {"command": fake_upstream(), "isolation": "per-session", "idle_timeout": idle_timeout},
        "shared": {"command": fake_upstream()},
    }}));
    (Daemon::start(sandbox, &config), config)
}

fn server_status(daemon: &Daemon, name: &str) -> Value {
    upstream_in(&status_of(&daemon.socket), name).unwrap_or_else(|| panic!("{name} in /status"))
}

fn instance_pids(daemon: &Daemon) -> Vec<u32> {
    let mut pids: Vec<u32> = server_status(daemon, "own")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["pid"].as_u64().unwrap() as u32)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn each_session_gets_its_own_process_and_loses_it_when_it_closes() {
    let sandbox = Sandbox::new();
    let (daemon, _) = isolation_daemon(&sandbox, "10m");
    let first = McpSession::open(&daemon.socket);
    let second = McpSession::open(&daemon.socket);
    assert!(instance_pids(&daemon).is_empty(), "started before first use");

    let first_pid: u32 = first.call_text("own__pid", json!({})).parse().unwrap();
    let second_pid: u32 = second.call_text("own__pid", json!({})).parse().unwrap();
    let catalog_pid = server_status(&daemon, "own")["pid"].as_u64().unwrap() as u32;
    assert_ne!(first_pid, second_pid, "two sessions share a per-session server");
    assert!(first_pid != catalog_pid && second_pid != catalog_pid, "a session got the catalog's process");
    assert_eq!(first.call_text("own__pid", json!({})), first_pid.to_string(), "a session keeps its process");
    let mut both = vec![first_pid, second_pid];
    both.sort_unstable();
    assert_eq!(instance_pids(&daemon), both);
    let status = server_status(&daemon, "own");
    assert_eq!(status["isolation"], "per-session", "{status}");
    assert_eq!(status["idle_timeout"], "10m", "{status}");

    // State stays in its session.
    first.call_text("own__remember", json!({"text": "first's secret"}));
    assert_eq!(second.call_text("own__recall", json!({})), "");
    assert_eq!(first.call_text("own__recall", json!({})), "first's secret");

    // A shared server is one process for both.
    let shared_first = first.call_text("shared__pid", json!({}));
    assert_eq!(second.call_text("shared__pid", json!({})), shared_first);
    assert_eq!(server_status(&daemon, "shared")["pid"].to_string(), shared_first);
    assert_eq!(server_status(&daemon, "shared")["instances"], json!([]));

    let text = stdout(&sandbox.client(&["status"]));
    assert!(text.contains("per-session: 2 running, pids"), "{text}");

    first.close();
    wait_until("the closed session's process is gone", || !process_exists(first_pid));
    wait_until("status forgets it", || instance_pids(&daemon) == [second_pid]);
    assert!(process_exists(second_pid), "the other session's process was stopped too");
    assert_eq!(second.call_text("own__recall", json!({})), "");
    assert!(daemon.stop().success());
    assert!(!process_exists(second_pid), "shutdown left a per-session process behind");
}

#[test]
fn an_idle_per_session_process_is_reaped_and_started_again_on_use() {
    let sandbox = Sandbox::new();
    let (daemon, _) = isolation_daemon(&sandbox, "300ms");
    let session = McpSession::open(&daemon.socket);
    let pid: u32 = session.call_text("own__pid", json!({})).parse().unwrap();
    wait_until("the idle process is stopped", || !process_exists(pid));
    wait_until("status forgets it", || instance_pids(&daemon).is_empty());
    // A request in flight is not idleness.
    let slow = session.call_text("own__slow", json!({"ms": 700}));
    assert_eq!(slow, "slept 700 ms");
    let again: u32 = session.call_text("own__pid", json!({})).parse().unwrap();
    assert_ne!(again, pid);
    assert!(daemon.log_text().contains("per-session upstream idle; stopping it"));
    assert!(daemon.stop().success());
}

#[test]
fn a_2026_request_to_a_per_session_server_is_refused_with_a_reason() {
    let sandbox = Sandbox::new();
    let (daemon, _) = isolation_daemon(&sandbox, "10m");
    let refused = modern_request(&daemon.socket, "tools/call", json!({"name": "own__pid", "arguments": {}}));
    let message = refused["error"]["message"].as_str().unwrap_or_else(|| panic!("{refused}"));
    assert!(
        message.contains("\"isolation\": \"per-session\"") && message.contains("no session"),
        "{message}"
    );
    assert!(instance_pids(&daemon).is_empty());
    let served = modern_request(
        &daemon.socket,
        "tools/call",
        json!({"name": "shared__echo", "arguments": {"text": "hi"}}),
    );
    assert_eq!(served["result"]["content"][0]["text"], "hi", "{served}");
    assert!(daemon.stop().success());
}

#[test]
fn a_reload_that_changes_a_per_session_server_replaces_the_sessions_processes() {
    let sandbox = Sandbox::new();
    let (daemon, config) = isolation_daemon(&sandbox, "10m");
    let session = McpSession::open(&daemon.socket);
    let pid: u32 = session.call_text("own__pid", json!({})).parse().unwrap();
    rewrite_config(
        &config,
        &json!({"mcpServers": {
            "own": {"command": fake_upstream(), "isolation": "per-session", "idle_timeout": "20m"},
            "shared": {"command": fake_upstream()},
        }}),
    );
    let reload = sandbox.client(&["reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    wait_until("the old per-session process is stopped", || !process_exists(pid));
    wait_until("the reload is in force", || server_status(&daemon, "own")["idle_timeout"] == "20m");
    let again: u32 = session.call_text("own__pid", json!({})).parse().unwrap();
    assert_ne!(again, pid);
    assert!(daemon.stop().success());
}

#[test]
fn a_session_that_expires_takes_its_process_with_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({
        "mcpServers": {"own": {"command": fake_upstream(), "isolation": "per-session", "idle_timeout": "10m"}},
        "session_idle_ttl": "500ms",
    }));
    let daemon = Daemon::start(&sandbox, &config);
    let session = McpSession::open(&daemon.socket);
    let pid: u32 = session.call_text("own__pid", json!({})).parse().unwrap();
    // Well before its own idle_timeout, the session's expiry stops it.
    wait_until("the expired session's process is gone", || !process_exists(pid));
    wait_until("status forgets it", || instance_pids(&daemon).is_empty());
    assert!(daemon.stop().success());
}
