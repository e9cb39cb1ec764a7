//! The daemon's lifecycle as a user drives it: `serve --background`,
//! `stop`, `status`, `health`, `logs` and `socket` (adversarial tests 45
//! and 46 among them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::*;

/// The link target of `/proc/PID/{entry}`.
fn proc_link(pid: u32, entry: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/{entry}")).unwrap()
}

/// Fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().split_whitespace().map(str::to_string).collect()
}

/// Pids holding a `flock` on `path`, from /proc/locks.
fn flock_holders(path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).unwrap();
    let (major, minor) = (rustix::fs::major(metadata.dev()), rustix::fs::minor(metadata.dev()));
    let device = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|line| line.contains("FLOCK") && !line.contains("->") && line.contains(&device))
        .filter_map(|line| line.split_whitespace().nth(4)?.parse().ok())
        .collect()
}

fn pid_file(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap().to_os_string();
    name.push(".pid");
    socket.with_file_name(name)
}

#[test]
fn sec46_background_returns_once_ready_detached_and_locked() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let socket = sandbox.socket();
    let log = sandbox.path().join("logs").join("daemon.log");
    let output = sandbox
        .command(&["serve", "-b", "--config", config.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
        .args(["--log-file", log.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("running in the background"), "{}", stdout(&output));
    // The parent's exit means the socket answers: no waiting here.
    let (code, body) = http_get(&socket, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let status = status_of(&socket);
    assert_eq!(upstream_in(&status, "demo").unwrap()["state"], "running", "upstreams started before ready");
    let pid = status["pid"].as_u64().unwrap() as u32;

    let fields = stat_fields(pid);
    // state ppid pgrp session tty_nr …
    assert_eq!(fields[3], pid.to_string(), "the daemon leads its own session");
    assert_eq!(fields[4], "0", "no controlling terminal");
    assert_eq!(proc_link(pid, "cwd"), PathBuf::from("/"));
    assert_eq!(proc_link(pid, "fd/0"), PathBuf::from("/dev/null"));
    assert_eq!(proc_link(pid, "fd/1"), PathBuf::from("/dev/null"));
    assert_eq!(proc_link(pid, "fd/2"), log);
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(log.parent().unwrap()), 0o700);
    let pid_path = pid_file(&socket);
    assert_eq!(std::fs::read_to_string(&pid_path).unwrap().trim(), pid.to_string());
    assert_eq!(flock_holders(&pid_path), [pid], "the PID file is written under the lock the daemon holds");
    assert_eq!(status["log_file"], log.to_str().unwrap());
    let logs = sandbox.client(&["logs", "-n", "100"]);
    assert!(stdout(&logs).contains("upstream started"), "{}", stdout(&logs));

    let stop = sandbox.client(&["stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(!process_exists(pid));
    assert!(!socket.exists() && !pid_path.exists());
    // Nothing runs: stop and status say so with the LSB "not running" code.
    let again = sandbox.client(&["stop"]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(stderr(&again).contains("not running"), "{}", stderr(&again));
    assert_eq!(sandbox.client(&["status"]).status.code(), Some(3));
    // The log outlives the daemon.
    let logs = sandbox.client(&["logs", "--log-file", log.to_str().unwrap()]);
    assert!(stdout(&logs).contains("stopped"), "{}", stdout(&logs));
}

#[test]
fn background_failures_come_back_with_the_daemons_error() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let daemon = Daemon::start(&sandbox, &config);
    let socket = daemon.socket.to_str().unwrap();
    let second = sandbox.run(&["serve", "-b", "--config", config.to_str().unwrap(), "--socket", socket]);
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    assert!(stderr(&second).contains("already running"), "{}", stderr(&second));

    let broken = sandbox.path().join("broken.json");
    std::fs::write(&broken, "{").unwrap();
    let invalid = sandbox.run(&["serve", "-b", "--config", broken.to_str().unwrap(), "--socket", socket]);
    assert_eq!(invalid.status.code(), Some(2), "{}", stderr(&invalid));
    assert!(stderr(&invalid).contains("EOF while parsing"), "{}", stderr(&invalid));
    assert!(daemon.stop().success());
}

#[test]
fn stop_never_signals_a_process_that_does_not_hold_the_lock() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A crashed daemon's PID file, now naming an unrelated live process.
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(pid_file(&socket), format!("{}\n", bystander.id())).unwrap();
    let stop = sandbox.client(&["stop"]);
    assert_eq!(stop.status.code(), Some(3), "{}", stderr(&stop));
    assert!(stderr(&stop).contains("not running"), "{}", stderr(&stop));
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was not signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn stop_kills_a_daemon_that_ignores_sigterm_after_the_timeout() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // Holds the instance lock as a daemon does, but ignores SIGTERM.
    let script = "import fcntl, os, signal, sys, time\n\
                  f = open(sys.argv[1], 'w')\n\
                  fcntl.flock(f, fcntl.LOCK_EX)\n\
                  f.write(str(os.getpid())); f.flush()\n\
                  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                  print('locked', flush=True)\n\
                  time.sleep(600)\n";
    let mut stubborn = Command::new("python3")
        .args(["-c", script])
        .arg(pid_file(&socket))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stubborn.stdout.take().unwrap()), &mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let stop = sandbox.client(&["stop", "--timeout", "300ms"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(stderr(&stop).contains("did not stop within 300ms; killing it"), "{}", stderr(&stop));
    assert!(wait_for_exit("the stubborn process is killed", &mut stubborn).code().is_none());
}

#[test]
fn sec45_sigterm_cleans_up_and_an_immediate_restart_succeeds() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let daemon = Daemon::start(&sandbox, &config);
    let upstream_pid = status_of(&daemon.socket)["upstreams"][0]["pid"].as_u64().unwrap() as u32;
    let socket = daemon.socket.clone();
    assert!(daemon.stop().success());
    assert!(!socket.exists() && !pid_file(&socket).exists());
    assert!(!process_exists(upstream_pid), "the upstream was stopped");
    let again = Daemon::start(&sandbox, &config);
    assert!(again.stop().success());
}

#[test]
fn health_exits_0_ok_1_degraded_2_down() {
    let sandbox = Sandbox::new();
    let down = sandbox.client(&["health"]);
    assert_eq!(down.status.code(), Some(2));
    assert!(stdout(&down).starts_with("down: "), "{}", stdout(&down));
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    let daemon = Daemon::start(&sandbox, &config);
    let ok = sandbox.client(&["health"]);
    assert_eq!((ok.status.code(), stdout(&ok).trim()), (Some(0), "ok"));
    drop(daemon);
    let config = sandbox.write_config(&json!({"mcpServers": {
        "demo": {"command": demo_server()},
        "broken": {"command": "/nonexistent/server"},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let degraded = sandbox.client(&["health"]);
    assert_eq!(degraded.status.code(), Some(1));
    assert_eq!(stdout(&degraded).trim(), "degraded: not running: broken");
    assert!(daemon.stop().success());
}

#[test]
fn enable_disable_restart_one_upstream() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {
        "demo": {"command": demo_server()},
        "other": {"command": demo_server()},
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let pid_of = |name: &str| upstream_in(&status_of(&daemon.socket), name).unwrap()["pid"].as_u64();
    let other_pid = pid_of("other").unwrap() as u32;
    let disable = sandbox.client(&["disable", "other"]);
    assert_eq!(stdout(&disable).trim(), "other: disabled", "{}", stderr(&disable));
    assert!(!process_exists(other_pid));
    let health = daemon.health();
    assert_eq!(health["status"], "ok", "a disabled upstream does not degrade the daemon");
    let tools = stdout(&sandbox.client(&["tools"]));
    assert!(!tools.contains("other__") && tools.contains("demo__echo"), "{tools}");
    let restart_disabled = sandbox.client(&["restart", "other"]);
    assert_eq!(restart_disabled.status.code(), Some(1));
    assert!(stderr(&restart_disabled).contains("is disabled; enable it"), "{}", stderr(&restart_disabled));
    assert!(sandbox.client(&["enable", "other"]).status.success());
    assert!(stdout(&sandbox.client(&["tools"])).contains("other__echo"));

    let demo_pid = pid_of("demo").unwrap();
    let restart = sandbox.client(&["restart", "demo"]);
    assert_eq!(stdout(&restart).trim(), "demo: running", "{}", stderr(&restart));
    assert_ne!(pid_of("demo").unwrap(), demo_pid);
    let unknown = sandbox.client(&["restart", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no upstream named \"nope\""), "{}", stderr(&unknown));
    assert!(daemon.stop().success());
}

#[test]
fn socket_serves_one_stdio_server_on_its_own_socket() {
    let sandbox = Sandbox::new();
    let demo = demo_server();
    let start = sandbox.run(&["socket", "-b", "--", demo.to_str().unwrap()]);
    assert!(start.status.success(), "{}", stderr(&start));
    let socket = sandbox.path().join("xdg-runtime/mcpsock/sockets/mcpsock-demo-server.sock");
    assert!(socket.exists(), "{}", stdout(&start));
    let target = ["--socket", socket.to_str().unwrap()];
    let tools = sandbox.run(&[&["tools"][..], &target].concat());
    // One server on its own socket keeps its own tool names.
    let table = stdout(&tools);
    let names: Vec<&str> = table.lines().skip(1).filter_map(|line| line.split_whitespace().next()).collect();
    assert_eq!(names, ["add", "countdown", "echo", "now"], "{table}");
    let status = status_of(&socket);
    assert_eq!(status["config_file"], serde_json::Value::Null);
    // Each app keeps its sessions in a database of its own.
    let app_db = sandbox.path().join("xdg-data/mcpsock/sockets/mcpsock-demo-server.db");
    assert_eq!(status["storage"]["mode"], "sqlite");
    assert_eq!(status["storage"]["path"], app_db.to_str().unwrap());
    assert!(app_db.exists());
    let reload = sandbox.run(&[&["reload"][..], &target].concat());
    assert_eq!(reload.status.code(), Some(1));
    assert!(stderr(&reload).contains("no config file to reload"), "{}", stderr(&reload));
    let stop = sandbox.run(&[&["stop"][..], &target].concat());
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(!socket.exists());

    // In the foreground, with --name.
    let mut child = sandbox
        .command(&["socket", "--name", "echoes", "--", demo.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let named = sandbox.path().join("xdg-runtime/mcpsock/sockets/echoes.sock");
    wait_until("the named socket answers", || http_get(&named, "/health").is_ok_and(|(code, _)| code == 200));
    let call = sandbox.run(&["call", "echo", "--arg", "text=one line", "--socket", named.to_str().unwrap()]);
    assert_eq!(stdout(&call).trim(), "one line", "{}", stderr(&call));
    assert!(sandbox.path().join("xdg-data/mcpsock/sockets/echoes.db").exists());
    rustix::process::kill_process(pid(child.id()), rustix::process::Signal::TERM).unwrap();
    assert!(wait_for_exit("the socket server exits", &mut child).success());
}

#[test]
fn sd_notify_ready_reloading_watchdog_and_stopping() {
    let sandbox = Sandbox::new();
    let notify_path = sandbox.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let config = sandbox.demo_config();
    let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
        command.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "200000");
    });
    let mut message = [0u8; 256];
    let mut next = |skip_watchdog: bool| loop {
        let length = notify.recv(&mut message).unwrap();
        let text = String::from_utf8_lossy(&message[..length]).into_owned();
        if !(skip_watchdog && text == "WATCHDOG=1") {
            return text;
        }
    };
    assert_eq!(next(true), "READY=1");
    assert_eq!(next(false), "WATCHDOG=1", "the watchdog is fed");
    assert!(sandbox.client(&["reload"]).status.success());
    let reloading = next(true);
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert!(reloading["RELOADING=1\nMONOTONIC_USEC=".len()..].parse::<u64>().is_ok(), "{reloading}");
    assert_eq!(next(true), "READY=1");
    assert!(daemon.stop().success());
    assert_eq!(next(true), "STOPPING=1");
}
