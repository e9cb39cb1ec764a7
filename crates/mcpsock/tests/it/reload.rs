//! Reloading the config while clients call tools: `mcpsock reload`,
//! SIGHUP and `--watch-config`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::support::*;

fn pid_of(socket: &std::path::Path, name: &str) -> Option<u64> {
    upstream_in(&status_of(socket), name)?["pid"].as_u64()
}

#[test]
fn reload_under_load_loses_no_request_on_a_kept_upstream() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {
        "changed": {"command": demo_server()},
        "kept": {"command": demo_server()},
        "removed": {"command": demo_server()},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = daemon.socket.clone();
    let (changed_pid, kept_pid) = (pid_of(&socket, "changed").unwrap(), pid_of(&socket, "kept").unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = ["changed__echo", "kept__echo", "changed__echo", "kept__echo"]
        .into_iter()
        .map(|tool| {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let session = McpSession::open(&socket);
                let mut results = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("{tool} {n}");
                    let result = session.call(tool, json!({"text": text}));
                    results.push((text, result));
                    n += 1;
                }
                results
            })
        })
        .collect();
    wait_until("calls are flowing", || {
        let metrics = http_get(&socket, "/metrics").unwrap().1;
        metrics.contains("mcpsock_request_duration_seconds_count{method=\"tools/call\"}")
    });

    rewrite_config(
        &config,
        &json!({"mcpServers": {
            "changed": {"command": demo_server(), "env": {"CHANGED": "1"}},
            "kept": {"command": demo_server()},
            "added": {"command": demo_server()},
        }}),
    );
    let reload = sandbox.client(&["reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    assert!(stdout(&reload).starts_with("reloaded"), "{}", stdout(&reload));
    // Calls keep flowing after the reload, on the new process.
    let new_session = McpSession::open(&socket);
    assert_eq!(new_session.call("added__echo", json!({"text": "new"})).unwrap()["content"][0]["text"], "new");
    assert!(new_session.call("removed__echo", json!({"text": "gone"})).is_err());
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for caller in callers {
        for (text, result) in caller.join().unwrap() {
            let result = result.unwrap_or_else(|error| panic!("{text} was lost: {error}"));
            assert_eq!(result["content"][0]["text"], text);
            total += 1;
        }
    }
    assert!(total > 20, "too few calls ({total}) to have overlapped the reload");
    let status = status_of(&socket);
    assert_ne!(pid_of(&socket, "changed").unwrap(), changed_pid, "the changed upstream restarted");
    assert_eq!(pid_of(&socket, "kept").unwrap(), kept_pid, "the unchanged upstream was not touched");
    assert!(upstream_in(&status, "removed").is_none());
    assert!(!process_exists(changed_pid as u32));
    assert_eq!(status["reload"]["last_reload_status"], "success");
    assert_eq!(status["reload"]["draining"], false);
    assert!(daemon.stop().success());
}

#[test]
fn a_request_in_flight_on_a_changed_upstream_finishes_before_it_stops() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let config = sandbox.write_config(&json!({"mcpServers": {
        "slow": {"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received}},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = daemon.socket.clone();
    let old_pid = pid_of(&socket, "slow").unwrap();
    let in_flight =
        std::thread::spawn(move || McpSession::open(&socket).call("slow__slow", json!({"ms": 3000})));
    wait_until("the slow call reached the upstream", || {
        std::fs::read_to_string(&received).unwrap_or_default().contains("\"slow\"")
    });
    rewrite_config(
        &config,
        &json!({"mcpServers": {
            "slow": {"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received, "CHANGED": "1"}},
        }}),
    );
    let reload = sandbox.client(&["reload", "--no-wait"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    wait_until("the reload is draining the old upstream", || {
        status_of(&daemon.socket)["reload"]["draining"] == true
    });
    let status = status_of(&daemon.socket);
    assert!(status["reload"]["active_requests"].as_u64().unwrap() >= 1, "{status}");
    // New calls already go to the new process while the old one drains.
    let echo = McpSession::open(&daemon.socket).call("slow__echo", json!({"text": "meanwhile"}));
    assert_eq!(echo.unwrap()["content"][0]["text"], "meanwhile");
    let result = in_flight.join().unwrap().expect("the in-flight call was drained, not cut off");
    assert_eq!(result["content"][0]["text"], "slept 3000 ms");
    wait_until("the old process stopped", || !process_exists(old_pid as u32));
    assert_ne!(pid_of(&daemon.socket, "slow").unwrap(), old_pid);
    assert!(daemon.stop().success());
}

#[test]
fn sighup_and_watch_config_reload() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    let mut daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.arg("--watch-config");
    });
    let socket = daemon.socket.clone();
    let mut events = std::process::Command::new("curl")
        .args(["-sN", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    // The stream opens with a status event: once it is here, the
    // subscription is live and no later event can be missed.
    for line in lines.by_ref() {
        if line.unwrap() == "event: status" {
            break;
        }
    }

    // An edit is picked up by the watcher.
    rewrite_config(
        &config,
        &json!({"mcpServers": {
            "demo": {"command": demo_server()},
            "second": {"command": demo_server()},
        }}),
    );
    wait_until("the watcher reloaded", || upstream_in(&status_of(&socket), "second").is_some());
    // The reload's own events and the upstream's come from different
    // sources; each is in order, not the two together.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(kind) = line.strip_prefix("event: ") {
            seen.push(kind.to_string());
            if seen.iter().any(|kind| kind == "reload.finished")
                && seen.iter().any(|kind| kind == "upstream.started")
            {
                break;
            }
        }
    }
    let position = |kind: &str| seen.iter().position(|seen| seen == kind).unwrap();
    assert!(position("reload.started") < position("reload.finished"), "{seen:?}");

    // A broken edit is refused; the daemon keeps the old config.
    std::fs::write(&config, "{\"mcpServers\": ").unwrap();
    for line in lines.by_ref() {
        if line.unwrap() == "event: reload.failed" {
            break;
        }
    }
    let status = status_of(&socket);
    assert_eq!(status["reload"]["last_reload_status"], "failed");
    assert!(upstream_in(&status, "second").is_some());

    // SIGHUP reloads the same way.
    rewrite_config(&config, &json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    wait_until("the watcher applied the fixed file", || upstream_in(&status_of(&socket), "second").is_none());
    daemon.signal(rustix::process::Signal::HUP);
    wait_until("SIGHUP reloaded", || {
        status_of(&socket)["reload"]["last_reload_request_id"] != Value::Null
            && daemon.log_text().contains("why=SIGHUP")
    });
    assert!(daemon.child.try_wait().unwrap().is_none(), "SIGHUP does not end the daemon");
    let _ = events.kill();
    let _ = events.wait();
    assert!(daemon.stop().success());
}
