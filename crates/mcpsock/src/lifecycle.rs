//! The daemon's lifecycle and admin commands: `socket`, `status`, `stop`,
//! `health`, `reload`, `enable`, `disable`, `restart` and `logs`.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use mcpsock_api::{HealthStatus, ReloadOutcome, Status};
use mcpsock_client::{ClientError, Endpoint};
use mcpsock_config::{Config, ProcessEnv};

use crate::exit::{Code, Failure};
use crate::flags::{DaemonFlags, LogsFlags, SocketFlags, StatusFlags};

/// What `serve` and `socket` hand to the daemon.
pub(crate) struct Serve<'a> {
    pub(crate) config: Config,
    pub(crate) config_source: Option<mcpsock_daemon::ConfigSource>,
    pub(crate) socket_path: PathBuf,
    pub(crate) listen: Option<String>,
    pub(crate) dangerously_bind_non_loopback: bool,
    pub(crate) no_socket: bool,
    pub(crate) watch_config: bool,
    pub(crate) daemon: &'a DaemonFlags,
    /// The state database unless flags, environment or config name one.
    pub(crate) default_db: PathBuf,
}

/// `path` made absolute against the working directory (unchanged when
/// that cannot be read).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The name `mcpsock socket` gives a server: `--name`, else the command's
/// file name, or for a runner (`npx`, `uvx`, `node`, …) the first argument
/// that is not an option, without its scope or version
/// (`@modelcontextprotocol/server-everything@1.0` → `server-everything`).
pub(crate) fn app_name(name: Option<&str>, command: &[String]) -> Result<String, Failure> {
    const RUNNERS: &[&str] =
        &["npx", "uvx", "bunx", "pnpx", "node", "python", "python3", "deno", "bun", "uv", "pipx", "docker"];
    let invalid = |name: &str| {
        Failure::config(anyhow!(
            "{name:?} cannot name a server: use --name with letters, digits, _ and - only"
        ))
    };
    if let Some(name) = name {
        return if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Ok(name.to_string())
        } else {
            Err(invalid(name))
        };
    }
    let Some(program) = command.first() else {
        return Err(Failure::config(anyhow!("give the server's command after --")));
    };
    let base = |text: &str| Path::new(text).file_name().map(|name| name.to_string_lossy().into_owned());
    let mut chosen = base(program).unwrap_or_default();
    if RUNNERS.contains(&chosen.as_str()) {
        let skip = ["run", "x", "exec", "tool", "-m"];
        if let Some(argument) =
            command[1..].iter().find(|arg| !arg.starts_with('-') && !skip.contains(&arg.as_str()))
        {
            let without_version = match argument.rsplit_once('@') {
                Some((head, _)) if !head.is_empty() => head,
                _ => argument.as_str(),
            };
            chosen = base(without_version).unwrap_or_default();
        }
    }
    let cleaned: String = chosen
        .trim_end_matches(".py")
        .trim_end_matches(".js")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.is_empty() { Err(invalid(&chosen)) } else { Ok(cleaned) }
}

/// `mcpsock socket -- COMMAND ARGS…`: one stdio server on its own socket.
pub(crate) async fn run_socket(flags: SocketFlags) -> Result<ExitCode, Failure> {
    let app = app_name(flags.name.as_deref(), &flags.command)?;
    // The config is written, and validated, exactly as a file would be;
    // relative commands resolve against the working directory.
    // One server on its own socket never shares it, so its tools keep their
    // own names: a client sees exactly what the server offers.
    let server = serde_json::json!({"command": flags.command[0], "args": flags.command[1..], "prefix": ""});
    let text = serde_json::json!({"mcpServers": {&app: server}}).to_string();
    let anchor = absolute(Path::new("command-line"));
    let config = Config::parse(&text, &anchor).map_err(Failure::config)?;
    let socket_path = absolute(&mcpsock_config::app_socket_path(flags.socket.as_deref(), &ProcessEnv, &app));
    let serve = Serve {
        config,
        config_source: None,
        socket_path,
        listen: flags.listen.clone(),
        dangerously_bind_non_loopback: false,
        no_socket: false,
        watch_config: false,
        daemon: &flags.daemon,
        default_db: mcpsock_config::app_db_path(&ProcessEnv, &app),
    };
    crate::serve_daemon(serve).await
}

fn word<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|value| value.as_str().map(str::to_string)).unwrap_or_default()
}

/// `mcpsock status`: the daemon's full status (exit 3 when none runs).
pub(crate) async fn status(endpoint: &Endpoint, flags: &StatusFlags) -> Result<ExitCode, Failure> {
    if flags.show_key {
        let key = mcpsock_client::api_key(endpoint).await.map_err(Failure::client)?;
        outln!("{key}");
        return Ok(ExitCode::SUCCESS);
    }
    let status = match mcpsock_client::status(endpoint).await {
        Ok(status) => status,
        Err(error @ ClientError::NotRunning { .. }) => {
            if flags.json {
                outln!("{}", serde_json::json!({"status": "not_running", "endpoint": endpoint.to_string()}));
            }
            return Err(Failure::monitoring(error));
        }
        Err(error) => return Err(Failure::monitoring(error)),
    };
    if flags.json {
        outln!("{}", serde_json::to_string_pretty(&status).map_err(|error| Failure::internal(error.into()))?);
        return Ok(ExitCode::SUCCESS);
    }
    out!("{}", status_text(endpoint, &status));
    Ok(ExitCode::SUCCESS)
}

fn status_text(endpoint: &Endpoint, status: &Status) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(text, "mcpsock is running at {endpoint}: {}", word(status.status));
    let _ = writeln!(text, "  pid          {}", status.pid);
    let _ = writeln!(text, "  version      {} (admin API {})", status.version, status.admin_protocol);
    let _ = writeln!(text, "  uptime       {} (since {})", status.uptime, status.started_at);
    if let Some(socket) = &status.socket {
        let _ = writeln!(text, "  socket       {socket}");
    }
    if let Some(tcp) = &status.tcp {
        let _ = writeln!(text, "  tcp          {tcp}");
    }
    if let Some(config) = &status.config_file {
        let _ = writeln!(text, "  config       {config}");
    }
    if let Some(log) = &status.log_file {
        let _ = writeln!(text, "  log          {log}");
    }
    let storage = &status.storage;
    let _ = match &storage.path {
        Some(path) => writeln!(
            text,
            "  sessions     {} {path} ({}, durability {})",
            storage.mode,
            if storage.encrypted { "encrypted" } else { "not encrypted" },
            storage.durability.as_deref().unwrap_or("normal")
        ),
        None => writeln!(text, "  sessions     {} (a restart forgets them)", storage.mode),
    };
    let _ = writeln!(
        text,
        "  offers       {} tools, {} prompts, {} resources; {} sessions open",
        status.endpoints.tools, status.endpoints.prompts, status.endpoints.resources, status.sessions
    );
    let reload = &status.reload;
    let last = match (reload.last_reload_status, &reload.last_reload) {
        (ReloadOutcome::Never, _) => "never".to_string(),
        (outcome, at) => format!("{} at {}", word(outcome), at.as_deref().unwrap_or("?")),
    };
    let _ =
        writeln!(text, "  last reload  {last}{}", if reload.in_progress { " (one in progress)" } else { "" });
    if let Some(error) = &reload.last_reload_error {
        let _ = writeln!(text, "  reload error {error}");
    }
    if !reload.restart_required.is_empty() {
        let _ = writeln!(text, "  restart to apply: {}", reload.restart_required.join(", "));
    }
    if status.rejected_connections > 0 {
        let _ = writeln!(text, "  rejected connections: {}", status.rejected_connections);
    }
    if !status.upstreams.is_empty() {
        let width = status.upstreams.iter().map(|upstream| upstream.name.len()).max().unwrap_or(0).max(8);
        let _ = writeln!(
            text,
            "{:width$}  {:10}  {:5}  {:>8}  {:>5}  {:>8}  {:>9}  ERROR",
            "UPSTREAM", "STATE", "KIND", "PID", "TOOLS", "RESTARTS", "PING"
        );
        for upstream in &status.upstreams {
            let state = if upstream.enabled { word(upstream.state) } else { "disabled".into() };
            let pid = upstream.pid.map(|pid| pid.to_string()).unwrap_or_else(|| "-".into());
            let error = upstream.error.as_deref().or(upstream.last_error.as_deref()).unwrap_or("");
            let ping = match &upstream.supervision {
                Some(supervision) if supervision.ping_failures > 0 => {
                    format!("{} failed", supervision.ping_failures)
                }
                Some(supervision) => match supervision.last_ping_us {
                    Some(micros) => format!("{:.1}ms", micros as f64 / 1000.0),
                    None if supervision.ping_interval.is_none() => "off".into(),
                    None => "-".into(),
                },
                None => "-".into(),
            };
            let _ = writeln!(
                text,
                "{:width$}  {state:10}  {:5}  {pid:>8}  {:>5}  {:>8}  {ping:>9}  {error}",
                upstream.name, upstream.kind, upstream.tools, upstream.restarts
            );
            if let Some(url) = &upstream.url {
                let _ = writeln!(text, "{:width$}  url {url}", "");
            }
            if upstream.isolation == "per-session" {
                let pids: Vec<String> = upstream
                    .instances
                    .iter()
                    .map(|instance| instance.pid.map(|pid| pid.to_string()).unwrap_or_else(|| "-".into()))
                    .collect();
                let _ = writeln!(
                    text,
                    "{:width$}  per-session: {} running{}{}; idle ones stop after {}",
                    "",
                    upstream.instances.len(),
                    if pids.is_empty() { "" } else { ", pids " },
                    pids.join(" "),
                    upstream.idle_timeout.as_deref().unwrap_or("-")
                );
            }
            if let Some(supervision) = &upstream.supervision {
                let ping = match &supervision.ping_interval {
                    Some(interval) => format!(
                        "ping every {interval} (restart after {} failures or one unanswered)",
                        supervision.ping_failures_before_restart
                    ),
                    None => "no pings".into(),
                };
                let _ = writeln!(
                    text,
                    "{:width$}  {ping}; restarts {} doubling to {}, at most {} within {}",
                    "",
                    supervision.restart_backoff_initial,
                    supervision.restart_backoff_max,
                    supervision.max_restarts,
                    supervision.restart_window
                );
            }
        }
    }
    text
}

/// `mcpsock health`: one word and an exit code a monitor can use.
pub(crate) async fn health(endpoint: &Endpoint, json: bool) -> Result<ExitCode, Failure> {
    match mcpsock_client::health(endpoint).await {
        Ok(health) => {
            if json {
                outln!("{}", serde_json::to_string(&health).unwrap_or_default());
            } else {
                let failing: Vec<&str> = health
                    .upstreams
                    .iter()
                    .filter(|upstream| upstream.state != mcpsock_api::UpstreamState::Running)
                    .map(|upstream| upstream.name.as_str())
                    .collect();
                match health.status {
                    HealthStatus::Ok => outln!("ok"),
                    HealthStatus::Degraded => outln!("degraded: not running: {}", failing.join(", ")),
                }
            }
            Ok(ExitCode::from(match health.status {
                HealthStatus::Ok => 0,
                HealthStatus::Degraded => 1,
            }))
        }
        Err(error) => {
            if json {
                outln!("{}", serde_json::json!({"status": "down", "error": error.to_string()}));
            } else {
                outln!("down: {error}");
            }
            Ok(ExitCode::from(2))
        }
    }
}

/// `mcpsock reload`: asks for a reload and, unless `no_wait`, waits for its
/// outcome.
pub(crate) async fn reload(endpoint: &Endpoint, no_wait: bool) -> Result<ExitCode, Failure> {
    let accepted = mcpsock_client::reload(endpoint).await.map_err(Failure::client)?;
    if no_wait {
        outln!("reload {} accepted", accepted.reload_request_id);
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let status = mcpsock_client::status(endpoint).await.map_err(Failure::client)?;
        let reload = status.reload;
        // Ours, or a later one (which then says how the config stands).
        let number = |id: &str| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
        let finished = match (
            reload.last_reload_request_id.as_deref().and_then(number),
            number(&accepted.reload_request_id),
        ) {
            (Some(last), Some(ours)) => last >= ours,
            _ => reload.last_reload_request_id.as_deref() == Some(accepted.reload_request_id.as_str()),
        };
        if finished && !reload.in_progress {
            return match reload.last_reload_status {
                ReloadOutcome::Success => {
                    outln!("reloaded ({})", accepted.reload_request_id);
                    if !reload.restart_required.is_empty() {
                        eprintln!(
                            "mcpsock: these settings changed but take effect only after a restart: {}",
                            reload.restart_required.join(", ")
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(Failure::new(
                    Code::Usage,
                    anyhow!("the reload failed: {}", reload.last_reload_error.unwrap_or_default()),
                )),
            };
        }
        // A person waits on this; a tenth of a second is fine-grained enough.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `mcpsock enable|disable|restart NAME`.
pub(crate) async fn server_action(
    endpoint: &Endpoint,
    name: &str,
    action: &str,
) -> Result<ExitCode, Failure> {
    let reply = mcpsock_client::server_action(endpoint, name, action).await.map_err(|error| match error {
        // An unknown name is the user's mistake, like an unknown flag.
        ClientError::Refused { status: 404, .. } => Failure::new(Code::Usage, error),
        error => Failure::client(error),
    })?;
    let server = &reply.server;
    let state = if server.enabled { word(server.state) } else { "disabled".into() };
    match &server.error {
        Some(error) if server.enabled => outln!("{}: {state} ({error})", reply.name),
        _ => outln!("{}: {state}", reply.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// `mcpsock stop`: SIGTERM to the process that holds the instance lock,
/// then SIGKILL after `timeout`. The PID file alone is never trusted: a
/// process is signalled only while it holds the lock on that file, and
/// through a pidfd opened before the check, so a reused PID is never hit.
pub(crate) async fn stop(endpoint: &Endpoint, timeout: Duration) -> Result<ExitCode, Failure> {
    use rustix::process::{PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let Endpoint::Unix(socket) = endpoint else {
        return Err(Failure::config(anyhow!("stop needs the daemon's socket (a unix:// endpoint)")));
    };
    let holder = |socket: &Path| {
        mcpsock_daemon::lock_holder(socket).map_err(|error| {
            Failure::internal(anyhow::Error::new(error).context("cannot tell whether mcpsock runs"))
        })
    };
    let Some(pid) = holder(socket)? else {
        if mcpsock_client::health(endpoint).await.is_ok() {
            return Err(Failure::internal(anyhow!(
                "the daemon at {endpoint} holds no PID file lock (started by systemd socket activation?); stop it with its service manager, e.g. systemctl --user stop mcpsock"
            )));
        }
        eprintln!("mcpsock: not running at {endpoint}");
        return Ok(ExitCode::from(Code::NotRunning.value()));
    };
    let raw = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| Failure::internal(anyhow!("invalid pid {pid}")))?;
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(rustix::io::Errno::SRCH) => {
            eprintln!("mcpsock: not running at {endpoint}");
            return Ok(ExitCode::from(Code::NotRunning.value()));
        }
        Err(error) => {
            return Err(Failure::internal(
                anyhow::Error::new(error).context(format!("cannot open process {pid}")),
            ));
        }
    };
    // The pidfd pins the process we checked; check again that it is the one
    // holding the lock.
    if holder(socket)? != Some(pid) {
        eprintln!("mcpsock: not running at {endpoint}");
        return Ok(ExitCode::from(Code::NotRunning.value()));
    }
    if let Err(error) = pidfd_send_signal(&pidfd, Signal::TERM) {
        return Err(Failure::internal(
            anyhow::Error::new(error).context(format!("cannot signal mcpsock (pid {pid})")),
        ));
    }
    let pidfd = std::sync::Arc::new(pidfd);
    if wait_for_exit(pidfd.clone(), timeout).await {
        outln!("mcpsock stopped (pid {pid})");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "mcpsock: the daemon (pid {pid}) did not stop within {}; killing it",
        humantime::format_duration(timeout)
    );
    let _ = pidfd_send_signal(&*pidfd, Signal::KILL);
    if wait_for_exit(pidfd, Duration::from_secs(5)).await {
        outln!("mcpsock killed (pid {pid})");
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::internal(anyhow!("the daemon (pid {pid}) survived SIGKILL")))
}

/// Waits until the process behind `pidfd` exits (its pidfd turns
/// readable), at most `timeout`; says whether it did.
async fn wait_for_exit(pidfd: std::sync::Arc<std::os::fd::OwnedFd>, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    tokio::task::spawn_blocking(move || {
        let timeout = Timespec::try_from(timeout).ok();
        let mut fds = [PollFd::new(&*pidfd, PollFlags::IN)];
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Ok(ready) => return ready > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// `mcpsock logs`: the daemon's log file, its end, and with `-f` what
/// follows.
pub(crate) async fn logs(endpoint: &Endpoint, flags: &LogsFlags) -> Result<ExitCode, Failure> {
    let path = match &flags.log_file {
        Some(path) => path.clone(),
        None => match mcpsock_client::status(endpoint).await {
            Ok(status) => match status.log_file {
                Some(path) => PathBuf::from(path),
                None => {
                    return Err(Failure::config(anyhow!(
                        "the daemon at {endpoint} logs to its standard error, not to a file (start it with --background or --log-file)"
                    )));
                }
            },
            Err(_) => {
                let Endpoint::Unix(socket) = endpoint else {
                    return Err(Failure::config(anyhow!("give the log file with --log-file")));
                };
                mcpsock_config::log_file(None, &ProcessEnv, socket)
            }
        },
    };
    let mut file = std::fs::File::open(&path).map_err(|error| {
        Failure::config(anyhow::Error::new(error).context(format!(
            "cannot read the log {} (a daemon in the foreground logs to its standard error)",
            path.display()
        )))
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|error| Failure::internal(error.into()))?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(flags.lines);
    {
        let mut stdout = std::io::stdout().lock();
        for line in &lines[start..] {
            if writeln!(stdout, "{line}").is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if !flags.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut position = file.stream_position().map_err(|error| Failure::internal(error.into()))?;
    loop {
        // Following a file is polling it; a quarter second is what tail -f does.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let length = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        if length < position {
            // Truncated or replaced: start over from its beginning.
            file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(_) => continue,
            };
            position = 0;
        }
        let mut chunk = Vec::new();
        file.seek(std::io::SeekFrom::Start(position)).map_err(|error| Failure::internal(error.into()))?;
        let read = file.read_to_end(&mut chunk).map_err(|error| Failure::internal(error.into()))?;
        position += read as u64;
        if read > 0
            && std::io::stdout().lock().write_all(&chunk).and_then(|()| std::io::stdout().flush()).is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_come_from_the_command() {
        let check = |command: &[&str], expected: &str| {
            let command: Vec<String> = command.iter().map(|arg| arg.to_string()).collect();
            assert_eq!(
                app_name(None, &command).map_err(|failure| failure.error.to_string()).unwrap(),
                expected
            );
        };
        check(&["npx", "-y", "@modelcontextprotocol/server-everything"], "server-everything");
        check(&["uvx", "mcp-server-time"], "mcp-server-time");
        check(&["uvx", "mcp-server-fetch@2025.1.1"], "mcp-server-fetch");
        check(&["/usr/local/bin/github-mcp", "--stdio"], "github-mcp");
        check(&["python3", "-m", "my_server"], "my_server");
        check(&["node", "build/index.js"], "index");
        check(&["./weird name!"], "weird-name");
        assert_eq!(app_name(Some("mine"), &[]).unwrap(), "mine");
        assert!(app_name(Some("a/b"), &[]).is_err());
        assert!(app_name(None, &[]).is_err());
    }
}
