//! The one place that starts child processes.
//!
//! Children get a cleared environment (an allowlist plus their own
//! configured variables), their own process group so that stopping them
//! reaches any grandchildren too, piped stdio, and no inherited file
//! descriptors beyond 0, 1 and 2 (everything mcpsock opens is close-on-exec).

use std::io;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

use crate::StdioSpec;

/// Variables a child inherits from the daemon; everything else is dropped,
/// so the daemon's own secrets and systemd's `LISTEN_*`/`NOTIFY_SOCKET`
/// never reach an upstream.
const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TERM",
    "TMPDIR",
    "TZ",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
];

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Longest stderr line logged in full; the rest of a longer line is cut.
const MAX_STDERR_LINE: usize = 4096;

/// A running child with its pipes, before they are handed to the MCP client.
pub(crate) struct StdioChild {
    pub(crate) pid: u32,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    /// Becomes `Some` with a description of how the child ended once it has
    /// exited and been reaped.
    pub(crate) exited: watch::Receiver<Option<String>>,
}

/// Starts `spec` as a child process in its own process group. Its stderr is
/// drained into the log, escaped, so that it can neither block the child nor
/// forge log lines; a task reaps it when it exits.
pub(crate) fn spawn_stdio(name: &str, spec: &StdioSpec) -> io::Result<StdioChild> {
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A safety net for paths that forget to stop a child: dropping it
        // kills the leader. Normal stops signal the whole group first.
        .kill_on_drop(true);
    for key in ENV_ALLOWLIST {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    close_inherited_descriptors(&mut command);
    let mut child = command.spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("the child exited before its pid could be read"))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("the child's pipes were not set up"));
    };
    tokio::spawn(drain_stderr(name.to_string(), stderr));
    let (exit_sender, exited) = watch::channel(None);
    tokio::spawn(reap(name.to_string(), child, exit_sender));
    Ok(StdioChild { pid, stdin, stdout, exited })
}

/// Descriptors mcpsock opens are close-on-exec, but the daemon may itself
/// have inherited open descriptors from whoever started it (a shell, a
/// service manager, a test runner). None of them belong to an upstream, so
/// the child marks everything above stderr close-on-exec before it runs
/// the program. (Marking rather than closing keeps the pipe through which
/// the standard library reports a failed exec, such as a missing program.)
#[allow(unsafe_code)]
fn close_inherited_descriptors(command: &mut Command) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: the hook runs in the forked child before exec and calls only
    // close_range(2), sysconf(3) and fcntl(2), which are async-signal-safe,
    // allocate nothing and take no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC)
                != 0
            {
                // Kernels before 5.11 lack the flag: mark one by one.
                let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(3, 65_536) as libc::c_int;
                for fd in 3..max {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

async fn reap(name: String, mut child: Child, exit_sender: watch::Sender<Option<String>>) {
    let how = match child.wait().await {
        Ok(status) => status.to_string(),
        Err(error) => format!("could not be waited for: {error}"),
    };
    tracing::info!(upstream = %name, status = %how, "upstream process ended");
    let _ = exit_sender.send(Some(how));
}

/// Stops a child started by [`spawn_stdio`]: `SIGTERM` to its process group,
/// then, after `grace` or as soon as the leader is gone, `SIGKILL` to the
/// group so that no grandchild outlives it. Returns once the leader is reaped
/// (or a last short wait ran out).
pub(crate) async fn stop_group(pid: u32, exited: &mut watch::Receiver<Option<String>>, grace: Duration) {
    let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = rustix::process::kill_process_group(group, Signal::TERM);
    let _ = tokio::time::timeout(grace, exited.wait_for(Option::is_some)).await;
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
    let _ = tokio::time::timeout(Duration::from_secs(2), exited.wait_for(Option::is_some)).await;
}

/// Sends `SIGKILL` to a process group at once, for a group whose leader has
/// already exited.
pub(crate) fn kill_group_now(pid: u32) {
    if let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// Stderr lines logged per second at most; the rest are counted and
/// summarised, so a chatty or hostile child cannot flood the log.
const STDERR_LINES_PER_SECOND: u32 = 50;

async fn drain_stderr(name: String, stderr: ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut window = tokio::time::Instant::now();
    let (mut logged, mut suppressed) = (0u32, 0u64);
    while read_bounded_line(&mut reader, &mut line, MAX_STDERR_LINE).await {
        if line.is_empty() {
            continue;
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if suppressed > 0 {
                tracing::warn!(upstream = %name, suppressed, "stderr lines not logged (more than {STDERR_LINES_PER_SECOND} a second)");
            }
            window = tokio::time::Instant::now();
            (logged, suppressed) = (0, 0);
        }
        if logged >= STDERR_LINES_PER_SECOND {
            if suppressed == 0 {
                tracing::warn!(upstream = %name, "stderr lines beyond {STDERR_LINES_PER_SECOND} a second are not logged");
            }
            suppressed += 1;
            continue;
        }
        logged += 1;
        // escape_debug turns ESC, CR, NUL and friends into visible escapes.
        let text = String::from_utf8_lossy(&line);
        tracing::info!(upstream = %name, "stderr: {}", text.escape_debug());
    }
    if suppressed > 0 {
        tracing::warn!(upstream = %name, suppressed, "stderr lines not logged (more than {STDERR_LINES_PER_SECOND} a second)");
    }
}

/// What a valid line is, as far as the stdout filter cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A progress or log notification: its handler relays it to a client
    /// (see `Ledger`).
    Relayed,
    /// A response that carries a `result` (and no `error`).
    Result,
    /// Any other request, notification or error response.
    Other,
}

#[cfg(test)]
fn is_json_rpc(line: &[u8]) -> bool {
    json_rpc_kind(line).is_some()
}

/// Whether a member is present, whatever its value (even `null`).
#[derive(Default)]
pub(crate) struct Seen(pub(crate) bool);

impl<'de> serde::Deserialize<'de> for Seen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Self(true))
    }
}

/// Whether `line` starts as a JSON object: serde would also read a struct
/// from an array, and a message is an object.
pub(crate) fn is_object(line: &[u8]) -> bool {
    line.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{')
}

/// One JSON-RPC 2.0 request, notification or response, and its kind.
/// Checked without building the message: this runs on every upstream line,
/// before rmcp parses it for real.
pub(crate) fn json_rpc_kind(line: &[u8]) -> Option<Kind> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        id: Seen,
        #[serde(default)]
        result: Seen,
        #[serde(default)]
        error: Seen,
    }

    if !is_object(line) {
        return None;
    }
    let message = serde_json::from_slice::<Envelope<'_>>(line).ok()?;
    if message.jsonrpc.as_deref() != Some("2.0") {
        return None;
    }
    match message.method.as_deref() {
        Some("notifications/progress" | "notifications/message") if !message.id.0 => Some(Kind::Relayed),
        Some(_) => Some(Kind::Other),
        None if message.id.0 && message.result.0 != message.error.0 => {
            Some(if message.result.0 { Kind::Result } else { Kind::Other })
        }
        None => None,
    }
}

/// Reads one line into `line` (without its newline), keeping at most `max`
/// bytes of it. Returns false at end of input.
async fn read_bounded_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
    max: usize,
) -> bool {
    line.clear();
    let mut saw_any = false;
    loop {
        let buffer = match reader.fill_buf().await {
            Ok([]) | Err(_) => return saw_any,
            Ok(buffer) => buffer,
        };
        saw_any = true;
        let (chunk, consumed, complete) = match buffer.iter().position(|&byte| byte == b'\n') {
            Some(index) => (&buffer[..index], index + 1, true),
            None => (buffer, buffer.len(), false),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(consumed);
        if complete {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines() {
        let long = "x".repeat(MAX_STDERR_LINE + 100);
        let input = format!("one\n{long}\nlast");
        let mut reader = BufReader::new(input.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_bounded_line(&mut reader, &mut line, MAX_STDERR_LINE).await {
            lines.push(line.len());
        }
        assert_eq!(lines, [3, MAX_STDERR_LINE, 4]);
    }

    #[test]
    fn progress_notifications_log_notifications_and_results_are_told_apart() {
        let kind = |line: &str| json_rpc_kind(line.as_bytes());
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#),
            Some(Kind::Relayed)
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#),
            Some(Kind::Relayed)
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#),
            Some(Kind::Other)
        );
        // A request that happens to carry the name is not a notification.
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":3,"method":"notifications/progress"}"#), Some(Kind::Other));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#), Some(Kind::Result));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#), Some(Kind::Other));
        // A request whose params are named `result` is still a request.
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":3,"method":"x","result":{}}"#), Some(Kind::Other));
        assert_eq!(kind("not json"), None);
    }

    #[test]
    fn only_json_rpc_messages_pass() {
        let check = |line: &str, expected: bool| assert_eq!(is_json_rpc(line.as_bytes()), expected, "{line}");
        check(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, true);
        check(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#, true);
        check(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#, true);
        check(r#"{"jsonrpc":"2.0","id":2,"method":"roots/list"}"#, true);
        check(r#"{"jsonrpc":"1.0","id":1,"result":{}}"#, false);
        check(r#"{"id":1,"result":{}}"#, false);
        check(r#"{"jsonrpc":"2.0","id":1}"#, false);
        check(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#, false);
        check(r#"{"jsonrpc":"2.0","method":5}"#, false);
        check(r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#, false);
        check(r#"{"jsonrpc":"2.0","id":1,"result":null}"#, true);
        check(r#"{"jsonrpc":"2.0","method":null}"#, false);
        check(r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#, false);
        check("hello", false);
        check("", false);
    }
}
