//! The socket's security facts, as an attacker on the same machine would
//! probe them (see SECURITY-TESTS.md 1, 2, 4-10).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use rustix::process::Signal;
use serde_json::json;

use crate::support::*;

/// Connects to `socket` as uid/gid 65534 `attempts` times and reports what
/// happened: `connect-error <ERRNO>`, or `closed <n> answered <m>`.
const PEER_PROBE: &str = r#"
import errno, socket, sys
path, attempts = sys.argv[1], int(sys.argv[2])
closed = answered = 0
for _ in range(attempts):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError as e:
        print("connect-error", errno.errorcode.get(e.errno, e.errno))
        sys.exit(0)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = s.recv(100)
    except OSError:
        data = b""
    if data:
        answered += 1
    else:
        closed += 1
    s.close()
print("closed", closed, "answered", answered)
"#;

fn probe_as_nobody(socket: &std::path::Path, attempts: u32) -> String {
    probe_as(&["--reuid=65534", "--regid=65534", "--clear-groups"], socket, attempts)
}

/// Runs the probe under `setpriv IDENTITY`.
fn probe_as(identity: &[&str], socket: &std::path::Path, attempts: u32) -> String {
    let output = Command::new("setpriv")
        .args(identity)
        .args(["/usr/bin/python3", "-c", PEER_PROBE])
        .arg(socket)
        .arg(attempts.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "probe failed: {}", stderr(&output));
    stdout(&output).trim().to_string()
}

fn open_up(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn sec10_modes_are_exact_whatever_the_umask() {
    for umask in ["000", "077"] {
        let sandbox = Sandbox::new();
        let config = sandbox.demo_config();
        let daemon = Daemon::start_with(&sandbox, &config, &sandbox.socket(), |command| {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
            let mut wrapped = Command::new("/bin/sh");
            wrapped.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(program).args(args);
            sandbox.isolate(&mut wrapped);
            wrapped.stdout(Stdio::null()).stderr(Stdio::null());
            *command = wrapped;
        });
        let socket = sandbox.socket();
        assert_eq!(mode(socket.parent().unwrap()), 0o700, "umask {umask}: directory");
        assert_eq!(mode(&socket), 0o600, "umask {umask}: socket");
        assert_eq!(mode(&socket.with_file_name("mcpsock.sock.pid")), 0o600, "umask {umask}: pid file");
        let uid = rustix::process::geteuid().as_raw();
        for path in [socket.parent().unwrap().to_path_buf(), socket.clone()] {
            assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid);
        }
        assert!(daemon.stop().success());
    }
}

#[test]
fn sec01_other_users_are_refused_by_the_filesystem() {
    let sandbox = Sandbox::new();
    open_up(sandbox.path());
    let daemon = Daemon::start(&sandbox, &sandbox.demo_config());
    assert_eq!(probe_as_nobody(&sandbox.socket(), 1), "connect-error EACCES");
    assert_eq!(daemon.health()["rejected_connections"], 0, "nothing reached the listener");
    assert!(daemon.stop().success());
}

#[test]
fn sec02_other_users_are_rejected_by_peer_credentials_and_the_listener_survives() {
    let sandbox = Sandbox::new();
    open_up(sandbox.path());
    let run = sandbox.path().join("run");
    std::fs::create_dir(&run).unwrap();
    open_up(&run);
    // A test-only loosening: the directory and socket let anyone connect,
    // so only the peer-credential check stands between them and the daemon.
    let config = sandbox
        .write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}, "socket_mode": "0666"}));
    let daemon = Daemon::start(&sandbox, &config);
    assert_eq!(mode(&sandbox.socket()), 0o666);
    assert_eq!(probe_as_nobody(&sandbox.socket(), 500), "closed 500 answered 0");
    assert_eq!(daemon.health()["rejected_connections"], 500);
    let log = daemon.log_text();
    assert!(log.contains("rejected a connection from a user that is not allowed"), "{log}");
    assert!(log.contains("uid=65534") && log.contains("pid="), "the log names uid and pid: {log}");
    // Still serving: a fresh authorised connection answers.
    assert_eq!(http_get(&sandbox.socket(), "/health").unwrap().0, 200);
    assert!(daemon.stop().success());
}

#[test]
fn sec03_allowed_groups_admit_by_primary_gid_only() {
    let sandbox = Sandbox::new();
    open_up(sandbox.path());
    let run = sandbox.path().join("run");
    std::fs::create_dir(&run).unwrap();
    open_up(&run);
    let config = sandbox.write_config(&json!({
        "mcpServers": {}, "socket_mode": "0666", "allow_gids": [65534],
    }));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    // Primary gid allowed: admitted, and answered.
    assert_eq!(
        probe_as(&["--reuid=65534", "--regid=65534", "--clear-groups"], &socket, 1),
        "closed 0 answered 1"
    );
    // The allowed group only as a supplementary group: SO_PEERCRED reports the
    // primary gid alone, so the peer is refused (the documented behaviour).
    assert_eq!(
        probe_as(&["--reuid=65534", "--regid=65533", "--groups=65534"], &socket, 1),
        "closed 1 answered 0"
    );
    assert_eq!(daemon.health()["rejected_connections"], 1);
    assert!(daemon.stop().success());
}

#[test]
fn sec03_a_socket_group_admits_its_members_and_keeps_others_out() {
    let sandbox = Sandbox::new();
    open_up(sandbox.path());
    let run = sandbox.path().join("run");
    std::fs::create_dir(&run).unwrap();
    open_up(&run);
    let config = sandbox.write_config(&json!({"mcpServers": {}, "socket_group": "65534"}));
    let daemon = Daemon::start(&sandbox, &config);
    let socket = sandbox.socket();
    let metadata = std::fs::metadata(&socket).unwrap();
    assert_eq!((metadata.gid(), mode(&socket)), (65534, 0o660));
    assert_eq!(
        probe_as(&["--reuid=65533", "--regid=65534", "--clear-groups"], &socket, 1),
        "closed 0 answered 1"
    );
    assert_eq!(
        probe_as(&["--reuid=65533", "--regid=65533", "--clear-groups"], &socket, 1),
        "connect-error EACCES"
    );
    assert!(daemon.stop().success());
}

#[test]
fn sec07_a_second_instance_is_refused_and_the_first_keeps_serving() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let daemon = Daemon::start(&sandbox, &config);
    let inode = std::fs::metadata(sandbox.socket()).unwrap().ino();
    let started = std::time::Instant::now();
    let second = sandbox.run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        sandbox.socket().to_str().unwrap(),
    ]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused quickly");
    assert_eq!(second.status.code(), Some(3));
    let message = stderr(&second);
    assert!(
        message.contains("already running") && message.contains(&format!("(pid {})", daemon.pid())),
        "{message}"
    );
    assert_eq!(std::fs::metadata(sandbox.socket()).unwrap().ino(), inode, "the socket was not touched");
    assert_eq!(daemon.health()["status"], "ok");
    assert!(daemon.stop().success());
}

#[test]
fn sec08_a_stale_socket_after_kill_9_is_recovered() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let mut first = Daemon::start(&sandbox, &config);
    first.signal(Signal::KILL);
    first.wait_exit();
    assert!(sandbox.socket().exists(), "kill -9 leaves the socket behind");
    let second = Daemon::start(&sandbox, &config);
    assert!(second.log_text().contains("removed a stale socket"), "{}", second.log_text());
    assert_eq!(second.health()["status"], "ok");
    assert!(second.stop().success());
}

#[test]
fn sec09_of_ten_concurrent_starts_exactly_one_runs() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let socket = sandbox.socket();
    let mut children: Vec<_> = (0..10)
        .map(|_| {
            let mut command = sandbox.serve_command(&config, &socket);
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    let mut refused = 0;
    wait_until("nine of ten starts are refused", || {
        refused =
            children.iter_mut().map(|child| child.try_wait().unwrap().is_some()).filter(|&done| done).count();
        refused >= 9
    });
    let mut winner = None;
    for mut child in children {
        match child.try_wait().unwrap() {
            Some(status) => {
                assert_eq!(status.code(), Some(3));
                let output = child.wait_with_output().unwrap();
                assert!(stderr(&output).contains("already running"), "{}", stderr(&output));
            }
            None => {
                assert!(winner.is_none(), "two instances run at once");
                winner = Some(child);
            }
        }
    }
    let child = winner.expect("one instance runs");
    let mut daemon = Daemon { child, socket: socket.clone(), log: sandbox.path().join("none") };
    wait_until("the winner serves", || http_get(&socket, "/health").is_ok_and(|(status, _)| status == 200));
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit().success());
}

#[test]
fn sec04_sec06_whatever_is_not_a_socket_at_the_path_is_refused_and_left_alone() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let run = sandbox.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = sandbox.socket();
    let victim = sandbox.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();

    let serve = || {
        sandbox.run(&["serve", "--config", config.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
    };
    let check = |what: &str| {
        let output = serve();
        assert_eq!(output.status.code(), Some(4), "{what}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("is {what}, not a socket; it was left untouched")),
            "{}",
            stderr(&output)
        );
        assert!(std::fs::symlink_metadata(&socket).is_ok(), "{what} was not deleted");
        assert!(!socket.with_file_name("mcpsock.sock.pid").exists(), "no pid file is left behind");
    };

    std::os::unix::fs::symlink(&victim, &socket).unwrap();
    check("a symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(mode(&victim), 0o600);
    std::fs::remove_file(&socket).unwrap();

    std::fs::write(&socket, "data").unwrap();
    check("a regular file");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "data");
    std::fs::remove_file(&socket).unwrap();

    assert!(Command::new("mkfifo").arg(&socket).status().unwrap().success());
    check("a FIFO");
    std::fs::remove_file(&socket).unwrap();

    std::fs::create_dir(&socket).unwrap();
    check("a directory");
}

#[test]
fn sec05_unsafe_socket_directories_are_refused() {
    let sandbox = Sandbox::new();
    let config = sandbox.demo_config();
    let serve = |dir: &std::path::Path| {
        let socket = dir.join("s.sock");
        sandbox.run(&["serve", "--config", config.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
    };

    let open = sandbox.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = serve(&open);
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).contains("has mode 0777, so other users can write to it; run `chmod 700"),
        "{}",
        stderr(&output)
    );
    assert_eq!(mode(&open), 0o777, "an existing directory is never changed");

    let foreign = sandbox.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let output = serve(&foreign);
    assert_eq!(output.status.code(), Some(4));
    assert!(stderr(&output).contains("belongs to uid 65534"), "{}", stderr(&output));

    let real = sandbox.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = sandbox.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let output = serve(&link);
    assert_eq!(output.status.code(), Some(4));
    assert!(stderr(&output).contains("is a symbolic link; refusing to use it"), "{}", stderr(&output));
    assert!(std::fs::read_dir(&real).unwrap().next().is_none(), "nothing was created through the link");
}

/// Binds and listens on `argv[1]`, puts the listener on fd 3 and execs the
/// rest of the argument list as systemd would: with `LISTEN_FDS=1` and
/// `LISTEN_PID` naming the new program (`ours`) or another process.
const ACTIVATE: &str = r#"
import os, socket, sys
path, pid_mode, program = sys.argv[1], sys.argv[2], sys.argv[3:]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(16)
if listener.fileno() != 3:
    os.dup2(listener.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()) if pid_mode == "ours" else "1")
os.execve(program[0], program, env)
"#;

/// Starts the daemon under [`ACTIVATE`] with the socket `activated`, and
/// `--socket serve_socket`.
fn activated_daemon(
    sandbox: &Sandbox,
    pid_mode: &'static str,
    notify: Option<&std::path::Path>,
    activated: &std::path::Path,
    serve_socket: &std::path::Path,
) -> Daemon {
    let config = sandbox.demo_config();
    std::fs::create_dir_all(activated.parent().unwrap()).unwrap();
    Daemon::start_with(sandbox, &config, serve_socket, |command| {
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
        let mut wrapped = Command::new("/usr/bin/python3");
        wrapped.arg("-c").arg(ACTIVATE).arg(activated).arg(pid_mode).arg(program).args(args);
        sandbox.isolate(&mut wrapped);
        if let Some(notify) = notify {
            wrapped.env("NOTIFY_SOCKET", notify);
        }
        let log = std::fs::File::create(sandbox.path().join("activated.log")).unwrap();
        wrapped.stdout(Stdio::null()).stderr(log);
        *command = wrapped;
    })
}

#[test]
fn sec13_socket_activation_serves_the_passed_socket_and_notifies() {
    let sandbox = Sandbox::new();
    let notify_path = sandbox.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let socket = sandbox.socket();
    let daemon = activated_daemon(&sandbox, "ours", Some(&notify_path), &socket, &socket);
    let inode = std::fs::metadata(&socket).unwrap().ino();
    let mut message = [0u8; 64];
    let length = notify.recv(&mut message).unwrap();
    assert_eq!(&message[..length], b"READY=1");
    assert_eq!(daemon.health()["status"], "ok");
    assert!(
        !socket.with_file_name("mcpsock.sock.pid").exists(),
        "systemd owns the socket; no lock file of ours"
    );

    // The upstream inherited neither the passed socket nor the variables.
    let upstream = daemon.health()["upstreams"][0]["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{upstream}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for variable in ["LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET"] {
        assert!(!environ.contains(variable), "{variable} reached the upstream");
    }
    let passed = std::fs::read_link(format!("/proc/{}/fd/3", daemon.pid())).unwrap();
    assert!(passed.to_string_lossy().starts_with("socket:"), "the daemon serves fd 3: {passed:?}");
    let upstream_fds: Vec<_> = std::fs::read_dir(format!("/proc/{upstream}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.unwrap().path()).ok())
        .collect();
    assert!(!upstream_fds.contains(&passed), "the upstream inherited the passed socket: {upstream_fds:?}");

    assert!(daemon.stop().success());
    let length = notify.recv(&mut message).unwrap();
    assert_eq!(&message[..length], b"STOPPING=1");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        inode,
        "the passed socket was neither unlinked nor rebound"
    );
}

#[test]
fn sec13_descriptors_meant_for_another_process_are_ignored() {
    let sandbox = Sandbox::new();
    let activated = sandbox.path().join("run").join("activated.sock");
    let daemon = activated_daemon(&sandbox, "other", None, &activated, &sandbox.socket());
    // It left fd 3 alone and bound its own socket.
    assert_eq!(daemon.health()["status"], "ok");
    assert_eq!(mode(&sandbox.socket()), 0o600);
    assert!(daemon.stop().success());
    let log = std::fs::read_to_string(sandbox.path().join("activated.log")).unwrap();
    assert!(log.contains("ignoring LISTEN_FDS: LISTEN_PID names another process"), "{log}");
}
