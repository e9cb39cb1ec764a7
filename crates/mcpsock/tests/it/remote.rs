//! Upstreams reached by URL: an mcpsock daemon fronting another mcpsock
//! daemon over its Unix socket (`unix://`), its secret header, what status
//! says while the inner one is away, and reconnection when it is back.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{
    Daemon, McpSession, Sandbox, demo_server, http_get, status_of, stderr, upstream_in, wait_until,
};

const SECRET: &str = "Bearer hunter2-inner";

/// The inner daemon: the demo server on `socket`, sessions in memory (two
/// daemons of one sandbox must not share the state database).
fn start_inner(sandbox: &Sandbox, socket: &Path) -> Daemon {
    let config = sandbox.path().join("inner.json");
    std::fs::write(&config, json!({"mcpServers": {"demo": {"command": demo_server()}}}).to_string()).unwrap();
    Daemon::start_with(sandbox, &config, socket, memory)
}

fn memory(command: &mut Command) {
    command.arg("--memory");
}

fn inner_socket(sandbox: &Sandbox) -> PathBuf {
    sandbox.path().join("inner.sock")
}

fn upstream(daemon: &Daemon) -> Value {
    upstream_in(&status_of(&daemon.socket), "inner").expect("upstream inner in /status")
}

#[test]
fn a_daemon_fronts_another_daemon_over_its_socket_and_reconnects() {
    let sandbox = Sandbox::new();
    let inner_socket = inner_socket(&sandbox);
    let url = format!("unix://{}", inner_socket.display());
    let config = sandbox.write_config(&json!({
        "mcpServers": {"inner": {"url": url, "headers": {"Authorization": SECRET}}},
        "ping_interval": "200ms",
        "restart_backoff": {"initial": "50ms", "max": "200ms"},
    }));
    // The inner daemon is not there yet: the outer one starts regardless
    // and says what is wrong.
    let outer = Daemon::start_with(&sandbox, &config, &sandbox.socket(), memory);
    let down = upstream(&outer);
    assert_eq!((down["kind"].as_str(), down["url"].as_str()), (Some("http"), Some(url.as_str())), "{down}");
    assert_ne!(down["state"], "running", "{down}");
    let error = down["error"].as_str().unwrap_or_default();
    assert!(error.contains(&url) && error.contains("No such file or directory"), "{down}");
    assert_eq!(outer.health()["status"], "degraded");

    // It comes up: the outer daemon connects and serves its tools.
    let inner = start_inner(&sandbox, &inner_socket);
    wait_until("the outer daemon connects to the inner one", || upstream(&outer)["state"] == "running");
    let client = McpSession::open(&outer.socket);
    let sum = client.call("inner__demo__add", json!({"a": 2, "b": 40})).unwrap();
    assert_eq!(sum["content"][0]["text"], "42", "{sum}");
    let running = upstream(&outer);
    assert_eq!(running["pid"], Value::Null, "{running}");
    wait_until("a ping is answered", || upstream(&outer)["supervision"]["last_ping_us"].is_u64());

    // It goes away: noticed by ping, reported, and reconnected once back.
    let _ = inner.stop();
    wait_until("the outer daemon notices", || upstream(&outer)["state"] != "running");
    assert!(client.call("inner__demo__add", json!({"a": 1, "b": 1})).is_err());
    let restarts = upstream(&outer)["restarts"].as_u64().unwrap();
    let _inner = start_inner(&sandbox, &inner_socket);
    wait_until("the outer daemon reconnects", || upstream(&outer)["state"] == "running");
    assert!(upstream(&outer)["restarts"].as_u64().unwrap() > restarts);
    let sum = client.call("inner__demo__add", json!({"a": 20, "b": 22})).unwrap();
    assert_eq!(sum["content"][0]["text"], "42", "{sum}");

    // The header value is a secret: nowhere in what the daemon shows.
    let (_, config_view) = http_get(&outer.socket, "/config").unwrap();
    assert!(config_view.contains("\"Authorization\":\"<redacted>\""), "{config_view}");
    let table = sandbox.client(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains(&format!("url {url}")), "{table}");
    for text in [config_view, table, status_of(&outer.socket).to_string(), outer.log_text()] {
        assert!(!text.contains("hunter2"), "the header value leaked: {text}");
    }
}

#[test]
fn changing_a_url_restarts_that_upstream_only() {
    let sandbox = Sandbox::new();
    let first = sandbox.path().join("a.sock");
    let second = sandbox.path().join("b.sock");
    let _a = start_inner(&sandbox, &first);
    let _b = start_inner(&sandbox, &second);
    let servers = |url: &Path| {
        json!({"mcpServers": {
            "inner": {"url": format!("unix://{}", url.display())},
            "local": {"command": demo_server()},
        }})
    };
    let config = sandbox.write_config(&servers(&first));
    let outer = Daemon::start_with(&sandbox, &config, &sandbox.socket(), memory);
    wait_until("both upstreams run", || {
        ["inner", "local"].iter().all(|name| {
            upstream_in(&status_of(&outer.socket), name).is_some_and(|up| up["state"] == "running")
        })
    });
    let local_pid = upstream_in(&status_of(&outer.socket), "local").unwrap()["pid"].clone();
    crate::support::rewrite_config(&config, &servers(&second));
    let output = sandbox.client(&["reload"]);
    assert!(output.status.success(), "{}", stderr(&output));
    wait_until("the inner upstream uses the new URL", || {
        let inner = upstream(&outer);
        inner["state"] == "running" && inner["url"] == format!("unix://{}", second.display())
    });
    assert_eq!(upstream_in(&status_of(&outer.socket), "local").unwrap()["pid"], local_pid);
}

#[test]
fn bad_urls_and_headers_are_refused_at_start_with_their_position() {
    let sandbox = Sandbox::new();
    for (server, expected) in [
        (json!({"command": "x", "url": "http://h/mcp"}), "give either \"command\""),
        (json!({"type": "http"}), "\"url\" is missing"),
        (json!({"url": "gopher://h/"}), "the scheme \"gopher\" is not supported"),
        (json!({"url": "unix://relative.sock"}), "needs an absolute socket path"),
        (json!({"url": "http://h/mcp", "headers": {"X-Key": "a\nb"}}), "not a valid HTTP header value"),
    ] {
        let config = sandbox.write_config(&json!({"mcpServers": {"r": server}}));
        let output = sandbox.serve_command(&config, &sandbox.socket()).output().unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{server}: {message}");
        let at = format!("{}:", config.display());
        assert!(message.contains(&at) && message.contains("mcpServers.r: "), "{server}: {message}");
        assert!(message.contains(expected), "{server}: {message}");
    }
}

/// With `isolation: per-session`, each outer session gets an MCP session of
/// its own on the inner daemon, deleted when the outer session closes.
#[test]
fn a_per_session_url_upstream_opens_one_upstream_session_per_client_session() {
    let sandbox = Sandbox::new();
    let inner_socket = inner_socket(&sandbox);
    let inner = start_inner(&sandbox, &inner_socket);
    let url = format!("unix://{}", inner_socket.display());
    let config =
        sandbox.write_config(&json!({"mcpServers": {"inner": {"url": url, "isolation": "per-session"}}}));
    let outer = Daemon::start_with(&sandbox, &config, &sandbox.socket(), memory);
    wait_until("the outer daemon connects", || upstream(&outer)["state"] == "running");
    let inner_sessions = || status_of(&inner.socket)["sessions"].as_u64().unwrap();
    // The shared connection, which tells the catalog.
    assert_eq!(inner_sessions(), 1);
    let first = McpSession::open(&outer.socket);
    let second = McpSession::open(&outer.socket);
    for session in [&first, &second] {
        assert_eq!(session.call_text("inner__demo__echo", json!({"text": "hi"})), "hi");
    }
    assert_eq!(inner_sessions(), 3);
    assert_eq!(upstream(&outer)["instances"].as_array().unwrap().len(), 2);
    first.close();
    wait_until("the closed session's upstream session is deleted", || inner_sessions() == 2);
    assert_eq!(second.call_text("inner__demo__echo", json!({"text": "still"})), "still");
    assert!(outer.stop().success());
    assert!(inner.stop().success());
}
