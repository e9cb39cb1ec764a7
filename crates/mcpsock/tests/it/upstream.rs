//! Fault injection with a misbehaving upstream: garbage on stdout, hangs,
//! crashes, stderr floods and terminal escapes (adversarial tests 33–38).

use serde_json::{Value, json};

use crate::support::*;

fn fake_daemon(sandbox: &Sandbox, server: Value, extra: Value) -> Daemon {
    let mut config = json!({"mcpServers": {"fake": server}});
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let config = sandbox.write_config(&config);
    Daemon::start(sandbox, &config)
}

fn upstream_health(daemon: &Daemon) -> Value {
    daemon.health()["upstreams"][0].clone()
}

#[test]
fn sec33_invalid_upstream_output_is_dropped_counted_and_never_forwarded() {
    let sandbox = Sandbox::new();
    let daemon = fake_daemon(&sandbox, json!({"command": fake_upstream()}), json!({}));
    let output = sandbox.client(&["call", "fake__garbage", "--raw"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let result: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(result["content"][0]["text"], "after the garbage");
    assert!(!stdout(&output).contains("not json"), "raw upstream bytes reached the client");
    // Text, a wrong jsonrpc version and a batch are dropped; the answer to an
    // unknown id and the duplicate answer are valid JSON-RPC that rmcp
    // matches to no request and ignores.
    assert_eq!(upstream_health(&daemon)["dropped_messages"], 3);
    let again = sandbox.client(&["call", "fake__echo", "--arg", "text=still fine"]);
    assert_eq!(stdout(&again).trim(), "still fine");
    assert!(daemon.stop().success());
}

#[test]
fn sec34_an_upstream_that_never_answers_times_out_and_is_told_so() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let daemon = fake_daemon(
        &sandbox,
        json!({"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received}}),
        json!({"request_timeout": "1s"}),
    );
    let output = sandbox.client(&["call", "fake__hang"]);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(stderr(&output).contains("did not answer within 1s"), "{}", stderr(&output));
    wait_until("the upstream is sent notifications/cancelled", || {
        std::fs::read_to_string(&received).unwrap_or_default().contains("notifications/cancelled")
    });
    let again = sandbox.client(&["call", "fake__echo", "--arg", "text=next"]);
    assert_eq!(stdout(&again).trim(), "next", "{}", stderr(&again));
    assert!(daemon.stop().success());
}

#[test]
fn sec35_an_upstream_that_crashes_mid_request_is_reaped_and_restarted() {
    let sandbox = Sandbox::new();
    let daemon = fake_daemon(&sandbox, json!({"command": fake_upstream()}), json!({}));
    let first = upstream_health(&daemon)["pid"].as_u64().unwrap() as u32;
    let output = sandbox.client(&["call", "fake__crash"]);
    assert_eq!(output.status.code(), Some(6), "the client gets an error: {}", stderr(&output));
    wait_until("the crashed process is reaped", || !process_exists(first));
    wait_until("the upstream runs again", || {
        let health = upstream_health(&daemon);
        health["state"] == "running" && health["restarts"] == 1
    });
    assert_ne!(upstream_health(&daemon)["pid"].as_u64().unwrap() as u32, first);
    let again = sandbox.client(&["call", "fake__echo", "--arg", "text=back"]);
    assert_eq!(stdout(&again).trim(), "back", "{}", stderr(&again));
    assert!(daemon.log_text().contains("restarting the upstream"));
    assert!(daemon.stop().success());
}

#[test]
fn sec37_an_upstream_flooding_stderr_and_ignoring_stdin_cannot_stall_the_daemon() {
    let sandbox = Sandbox::new();
    let daemon = fake_daemon(
        &sandbox,
        json!({"command": fake_upstream(), "env": {"FAKE_UPSTREAM_FLOOD_MB": "8"}}),
        json!({"request_timeout": "1s"}),
    );
    let output = sandbox.client(&["call", "fake__flood"]);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    // It no longer reads stdin: further requests time out instead of hanging.
    let stuck = sandbox.client(&["call", "fake__echo", "--arg", "text=x"]);
    assert!(stderr(&stuck).contains("did not answer within 1s"), "{}", stderr(&stuck));
    assert_eq!(daemon.health()["status"], "ok", "the daemon still serves");
    wait_until("the flood is cut short in the log", || {
        daemon.log_text().contains("stderr lines beyond 50 a second are not logged")
    });
    let logged = daemon.log_text().lines().filter(|line| line.contains("stderr: xxx")).count();
    assert!(logged < 1000, "{logged} of 8192 flood lines were logged");
    assert!(daemon.stop().success());
}

#[test]
fn sec38_terminal_escapes_and_newlines_cannot_forge_log_lines() {
    let sandbox = Sandbox::new();
    let daemon =
        fake_daemon(&sandbox, json!({"command": fake_upstream(), "args": ["--ansi-tool-name"]}), json!({}));
    let output = sandbox.client(&["call", "fake__ansi"]);
    assert_eq!(stdout(&output).trim(), "ansi done", "{}", stderr(&output));
    let tools = sandbox.client(&["tools", "--json"]);
    // Offered tool names follow the MCP tool-name rules: the escape and the
    // newline become `_`.
    assert!(stdout(&tools).contains(r#""fake__evil__31m_name""#), "{}", stdout(&tools));
    assert!(!stdout(&tools).contains(r"\u001b"), "{}", stdout(&tools));
    wait_until("the escaped stderr line is logged", || daemon.log_text().contains(r"\u{1b}[31mred"));
    let log = daemon.log_text();
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    // A line the child printed stays marked as the child's.
    for line in log.lines().filter(|line| line.contains("forged")) {
        assert!(
            line.contains("mcpsock_gateway::spawn: stderr: ") && line.contains("upstream=fake"),
            "{line}"
        );
    }
    assert!(log.contains(r"\rINFO forged: admin logged in"), "a carriage return is escaped: {log}");
    assert!(daemon.stop().success());
}

#[test]
fn requests_beyond_max_concurrent_requests_wait_then_are_shed_with_a_clear_error() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let daemon = fake_daemon(
        &sandbox,
        json!({"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received},
               "max_concurrent_requests": 1, "max_queued_requests": 1, "queue_timeout": "300ms"}),
        json!({"request_timeout": "3s"}),
    );
    let socket = sandbox.socket();
    let mut hanging = sandbox.command(&["call", "fake__hang", "--socket", socket.to_str().unwrap()]);
    hanging.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut hanging = hanging.spawn().unwrap();
    wait_until("the hanging call holds the only slot", || upstream_health(&daemon)["in_flight"] == 1);
    let shed = sandbox.client(&["call", "fake__echo", "--arg", "text=queued"]);
    assert_eq!(shed.status.code(), Some(6), "{}", stderr(&shed));
    assert!(
        stderr(&shed).contains("is busy: no slot freed within 0.3s of queue_timeout"),
        "{}",
        stderr(&shed)
    );
    assert!(
        !std::fs::read_to_string(&received).unwrap().contains("queued"),
        "a shed request reached the upstream"
    );
    let health = upstream_health(&daemon);
    assert_eq!((health["shed"].as_u64(), health["queued"].as_u64()), (Some(1), Some(0)), "{health}");
    // When the hanging call times out, its slot is free again.
    wait_for_exit("the hanging call ends at request_timeout", &mut hanging);
    let served = sandbox.client(&["call", "fake__echo", "--arg", "text=served"]);
    assert_eq!(stdout(&served).trim(), "served", "{}", stderr(&served));
    assert_eq!(upstream_health(&daemon)["in_flight"], 0);
    assert!(daemon.stop().success());
}

fn fake_status(daemon: &Daemon) -> Value {
    upstream_in(&status_of(&daemon.socket), "fake").expect("upstream fake in /status")
}

#[test]
fn an_upstream_that_stops_answering_pings_is_restarted() {
    let sandbox = Sandbox::new();
    let daemon = fake_daemon(
        &sandbox,
        json!({"command": fake_upstream(), "args": ["--hang-on-ping"], "ping_interval": "100ms"}),
        json!({"request_timeout": "300ms", "restart_backoff": {"initial": "50ms", "max": "100ms"}}),
    );
    let first_pid = fake_status(&daemon)["pid"].as_u64().unwrap();
    wait_until("the hung upstream is restarted", || fake_status(&daemon)["restarts"].as_u64() >= Some(1));
    let status = fake_status(&daemon);
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("did not answer a ping within 0.3s (request_timeout)"), "{status}");
    assert_eq!(status["supervision"]["ping_interval"], "100ms", "{status}");
    assert_eq!(status["supervision"]["ping_failures_before_restart"], 3, "{status}");
    // The hung process was stopped, not left behind.
    wait_until("the hung process is gone", || !process_exists(first_pid as u32));
    let log = daemon.log_text();
    assert!(log.contains("did not answer a ping") && log.contains("restarting it"), "{log}");
}

#[test]
fn pings_are_answered_and_reported() {
    let sandbox = Sandbox::new();
    let daemon =
        fake_daemon(&sandbox, json!({"command": fake_upstream(), "ping_interval": "50ms"}), json!({}));
    // The fake server answers `ping` with "method not found": an answer all
    // the same, so it is alive.
    wait_until("a ping is answered", || fake_status(&daemon)["supervision"]["last_ping"].is_string());
    let status = fake_status(&daemon);
    assert_eq!(
        (status["restarts"].as_u64(), status["supervision"]["ping_failures"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(status["supervision"]["last_ping_us"].is_u64(), "{status}");
    let table = stdout(&sandbox.client(&["status"]));
    assert!(table.contains("ping every 50ms (restart after 3 failures or one unanswered)"), "{table}");
    assert!(table.contains("restarts 500ms doubling to 30s, at most 5 within 1m"), "{table}");
}

#[test]
fn the_crash_loop_cap_comes_from_the_config() {
    let sandbox = Sandbox::new();
    let daemon = fake_daemon(
        &sandbox,
        json!({"command": fake_upstream(), "args": ["--exit-after-ms", "200"], "ping_interval": "off"}),
        json!({"max_restarts": 2, "restart_window": "1m", "restart_backoff": {"initial": "10ms", "max": "20ms"}}),
    );
    wait_until("the crashing upstream is given up", || fake_status(&daemon)["state"] == "failed");
    let status = fake_status(&daemon);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("restarted 2 times within 60s"), "{status}");
    assert!(error.contains("max_restarts") && error.contains("mcpsock restart fake"), "{status}");
    assert_eq!(status["supervision"]["max_restarts"], 2, "{status}");
    assert_eq!(status["supervision"]["ping_interval"], Value::Null, "{status}");
    assert_eq!(daemon.health()["status"], "degraded");
    // `mcpsock restart` gives it a fresh start, as the message says.
    let output = sandbox.client(&["restart", "fake"]);
    assert!(output.status.success(), "{}", stderr(&output));
}
