//! Config reloads (`POST /reload`, SIGHUP, `--watch-config`) and the
//! per-server actions (`enable`, `disable`, `restart`).
//!
//! A reload reads and validates the whole new config before anything
//! changes: a config that does not parse, names a command that cannot be
//! run, or is unsafe (writable by others) is refused with the old one left
//! in force, and the refusal is what `/status` reports. A valid config is
//! applied in the background, one change at a time: only upstreams whose
//! entry changed are restarted, each replaced upstream finishing its
//! requests first (up to `shutdown_grace`). Settings that cannot change
//! while the daemon runs (socket, TCP, limits) are reported as needing a
//! restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use mcpsock_api::{EffectiveConfig, EventBody, REDACTED, ReloadAccepted, ReloadOutcome, ReloadStatus};
use mcpsock_config as config;
use mcpsock_config::{Config, ServerTransport, UpstreamUrl};
use mcpsock_gateway::{HttpEndpoint, HttpSpec, Isolation, RequestLimits, ToolFilter, UpstreamSpec};
use mcpsock_transport::SystemdEnv;

use crate::admin::{Admin, AdminError};

/// Where reloads read the config from.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// The user named the file, so it must exist (see `Config::load`).
    pub explicit: bool,
}

/// The config in force and the record of reloads.
#[derive(Debug)]
pub(crate) struct Reloader {
    source: Option<ConfigSource>,
    current: Mutex<Config>,
    /// Upstreams turned off with `disable`, until `enable` (not kept across
    /// daemon restarts).
    disabled: Mutex<BTreeSet<String>>,
    /// Serializes reloads and server actions.
    changes: tokio::sync::Mutex<()>,
    record: Mutex<Record>,
    next_id: AtomicU64,
    /// Reloads accepted and not yet finished.
    pending: AtomicUsize,
    successes: AtomicU64,
    failures: AtomicU64,
    systemd: SystemdEnv,
}

#[derive(Debug)]
struct Record {
    last_reload: Option<SystemTime>,
    outcome: ReloadOutcome,
    error: Option<String>,
    request_id: Option<String>,
    restart_required: Vec<String>,
}

/// What `POST /servers/{name}/{action}` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerAction {
    Enable,
    Disable,
    Restart,
}

impl ServerAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Restart => "restart",
        }
    }
}

/// The upstreams a config asks for, minus the disabled ones.
pub(crate) fn specs_of(config: &Config, disabled: &BTreeSet<String>) -> Vec<UpstreamSpec> {
    config
        .servers
        .iter()
        .filter(|server| !disabled.contains(&server.name))
        .map(|server| {
            let spec = match &server.transport {
                ServerTransport::Stdio { command, args, env, cwd } => {
                    UpstreamSpec::new(&server.name, command)
                        .args(args.clone())
                        .env(env.iter().map(|(key, value)| (key.clone(), value.expose().to_string())))
                        .cwd(cwd.clone())
                }
                ServerTransport::Http { url, headers } => {
                    let endpoint = match url {
                        UpstreamUrl::Unix { socket, path } => {
                            HttpEndpoint::Unix { socket: socket.clone(), path: path.clone() }
                        }
                        UpstreamUrl::Tcp(url) => HttpEndpoint::Url(url.clone()),
                        other => unreachable!("a URL kind the daemon does not know: {other}"),
                    };
                    let headers =
                        headers.iter().map(|(name, value)| (name.clone(), value.expose().to_string()));
                    UpstreamSpec::http(&server.name, HttpSpec::new(endpoint).headers(headers))
                }
                other => unreachable!("a server kind the daemon does not know: {other:?}"),
            };
            spec.prefix(server.prefix.clone())
                .supervision(server.supervision)
                .tools(ToolFilter {
                    enabled: server.enabled_tools.clone(),
                    disabled: server.disabled_tools.clone(),
                })
                .limits(RequestLimits {
                    max_concurrent: server.max_concurrent_requests,
                    max_queued: server.max_queued_requests,
                    queue_timeout: server.queue_timeout,
                })
                .isolation(match server.isolation {
                    config::Isolation::PerSession { idle_timeout } => Isolation::PerSession { idle_timeout },
                    _ => Isolation::Shared,
                })
        })
        .collect()
}

impl Reloader {
    pub(crate) fn new(config: Config, source: Option<ConfigSource>, systemd: SystemdEnv) -> Self {
        Self {
            source,
            current: Mutex::new(config),
            disabled: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            record: Mutex::new(Record {
                last_reload: None,
                outcome: ReloadOutcome::Never,
                error: None,
                request_id: None,
                restart_required: Vec::new(),
            }),
            next_id: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            systemd,
        }
    }

    pub(crate) fn current(&self) -> Config {
        lock(&self.current).clone()
    }

    pub(crate) fn disabled(&self) -> Vec<String> {
        lock(&self.disabled).iter().cloned().collect()
    }

    /// `"stdio"` or `"http"`: how the configured server `name` is reached.
    pub(crate) fn kind_of(&self, name: &str) -> String {
        let config = lock(&self.current);
        let server = config.servers.iter().find(|server| server.name == name);
        match server.map(|server| &server.transport) {
            Some(ServerTransport::Http { .. }) => "http".into(),
            _ => "stdio".into(),
        }
    }

    /// `"shared"` or `"per-session"`: the configured server's isolation.
    pub(crate) fn isolation_of(&self, name: &str) -> String {
        let per_session = lock(&self.current).servers.iter().any(|server| {
            server.name == name && matches!(server.isolation, config::Isolation::PerSession { .. })
        });
        if per_session { "per-session" } else { "shared" }.into()
    }

    /// The URL of the configured HTTP server `name` (a query redacted).
    pub(crate) fn url_of(&self, name: &str) -> Option<String> {
        let config = lock(&self.current);
        config.servers.iter().find(|server| server.name == name).and_then(|server| match &server.transport {
            ServerTransport::Http { url, .. } => Some(url.to_string()),
            _ => None,
        })
    }

    pub(crate) fn config_file(&self) -> Option<&Path> {
        self.source.as_ref().map(|source| source.path.as_path())
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.successes.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }

    pub(crate) fn status(&self, active_requests: usize, draining: bool) -> ReloadStatus {
        let record = lock(&self.record);
        ReloadStatus {
            in_progress: self.pending.load(Ordering::Acquire) > 0,
            draining,
            active_requests,
            last_reload: record.last_reload.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            last_reload_status: record.outcome,
            last_reload_error: record.error.clone(),
            last_reload_request_id: record.request_id.clone(),
            restart_required: record.restart_required.clone(),
        }
    }

    fn finish(&self, id: &str, result: Result<Vec<String>, String>) {
        let mut record = lock(&self.record);
        record.last_reload = Some(SystemTime::now());
        record.request_id = Some(id.to_string());
        match result {
            Ok(restart_required) => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                record.outcome = ReloadOutcome::Success;
                record.error = None;
                record.restart_required = restart_required;
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                record.outcome = ReloadOutcome::Failed;
                record.error = Some(error);
            }
        }
    }

    pub(crate) fn effective_config(
        &self,
        socket: Option<&Path>,
        tcp: Option<std::net::SocketAddr>,
    ) -> EffectiveConfig {
        let config = self.current();
        let disabled = lock(&self.disabled).clone();
        let human = |duration: Duration| humantime::format_duration(duration).to_string();
        EffectiveConfig {
            config_file: self.config_file().map(|path| path.display().to_string()),
            socket: socket.map(|path| path.display().to_string()),
            socket_mode: format!("{:04o}", config.socket_mode),
            listen: tcp.map(|address| address.to_string()),
            api_key: tcp.map(|_| REDACTED.to_string()),
            tool_separator: config.tool_separator.clone(),
            shutdown_grace: human(config.shutdown_grace),
            init_timeout: human(config.init_timeout),
            request_timeout: human(config.request_timeout),
            header_timeout: human(config.header_timeout),
            session_idle_ttl: human(config.session_idle_ttl),
            stream_stall_timeout: human(config.stream_stall_timeout),
            max_connections: config.max_connections,
            max_sessions_per_principal: config.max_sessions_per_principal,
            allow_uids: config.allow_uids.clone(),
            allow_gids: config.allow_gids.clone(),
            allow_root: config.allow_root,
            list_page_size: config.list_page_size,
            servers: config
                .servers
                .iter()
                .map(|server| mcpsock_api::ServerConfigView {
                    name: server.name.clone(),
                    command: match &server.transport {
                        ServerTransport::Stdio { command, .. } => Some(command.display().to_string()),
                        _ => None,
                    },
                    url: match &server.transport {
                        ServerTransport::Http { url, .. } => Some(url.to_string()),
                        _ => None,
                    },
                    headers: match &server.transport {
                        ServerTransport::Http { headers, .. } => {
                            headers.iter().map(|(name, _)| (name.clone(), REDACTED.to_string())).collect()
                        }
                        _ => Default::default(),
                    },
                    args: match &server.transport {
                        ServerTransport::Stdio { args, .. } => args.clone(),
                        _ => Vec::new(),
                    },
                    env: match &server.transport {
                        ServerTransport::Stdio { env, .. } => {
                            env.iter().map(|(key, _)| (key.clone(), REDACTED.to_string())).collect()
                        }
                        _ => Default::default(),
                    },
                    cwd: match &server.transport {
                        ServerTransport::Stdio { cwd, .. } => {
                            cwd.as_ref().map(|cwd| cwd.display().to_string())
                        }
                        _ => None,
                    },
                    enabled: !disabled.contains(&server.name),
                    prefix: server.prefix.clone(),
                    enabled_tools: server.enabled_tools.clone(),
                    disabled_tools: server.disabled_tools.clone(),
                    max_concurrent_requests: server.max_concurrent_requests,
                    max_queued_requests: server.max_queued_requests,
                    queue_timeout: human(server.queue_timeout),
                    isolation: match server.isolation {
                        config::Isolation::PerSession { .. } => "per-session".into(),
                        _ => "shared".into(),
                    },
                    idle_timeout: match server.isolation {
                        config::Isolation::PerSession { idle_timeout } => Some(human(idle_timeout)),
                        _ => None,
                    },
                })
                .collect(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Settings that changed between `old` and `new` but only take effect when
/// the daemon restarts.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |key: &str, differs: bool| {
        if differs {
            changed.push(key.to_string());
        }
    };
    check("socket", old.socket != new.socket);
    check("list_page_size", old.list_page_size != new.list_page_size);
    check("socket_mode", old.socket_mode != new.socket_mode);
    check("socket_group", old.socket_group != new.socket_group);
    check("enable_socket", old.enable_socket != new.enable_socket);
    check("listen", old.listen != new.listen);
    check("api_key", old.api_key != new.api_key);
    check("allow_uids", old.allow_uids != new.allow_uids);
    check("allow_gids", old.allow_gids != new.allow_gids);
    check("allow_root", old.allow_root != new.allow_root);
    check("tool_separator", old.tool_separator != new.tool_separator);
    check("shutdown_grace", old.shutdown_grace != new.shutdown_grace);
    check("init_timeout", old.init_timeout != new.init_timeout);
    check("request_timeout", old.request_timeout != new.request_timeout);
    check("max_connections", old.max_connections != new.max_connections);
    check("max_sessions_per_principal", old.max_sessions_per_principal != new.max_sessions_per_principal);
    check("header_timeout", old.header_timeout != new.header_timeout);
    check("session_idle_ttl", old.session_idle_ttl != new.session_idle_ttl);
    check("stream_stall_timeout", old.stream_stall_timeout != new.stream_stall_timeout);
    changed
}

/// Refuses a command that cannot be started: a path that is not an
/// executable file, or a bare name not found in `PATH`. Only new or changed
/// servers are checked; the others keep running as they are.
fn check_commands(old: &Config, new: &Config) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    for server in &new.servers {
        // Only programs can be checked ahead; a URL is tried when applied.
        let ServerTransport::Stdio { command, .. } = &server.transport else { continue };
        let unchanged = old
            .servers
            .iter()
            .any(|before| before.name == server.name && before.transport == server.transport);
        if unchanged {
            continue;
        }
        let found = if command.components().count() > 1 || command.is_absolute() {
            executable(command)
        } else {
            std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(command))))
        };
        if !found {
            return Err(format!(
                "mcpServers.{}: command {} cannot be run (not found, or not executable); fix the path or install it",
                server.name,
                command.display()
            ));
        }
    }
    Ok(())
}

fn tools_offered(admin: &Admin) -> usize {
    admin.gateway.report().iter().map(|report| report.tools).sum()
}

/// Validates the config file now and, when it is valid, applies it in the
/// background (after any reload still running). An invalid config is
/// refused (422) and recorded; nothing changes.
pub(crate) fn request_reload(admin: &Arc<Admin>, why: &str) -> Result<ReloadAccepted, AdminError> {
    let reloader = &admin.reloader;
    let id = format!("reload-{}", reloader.next_id.fetch_add(1, Ordering::Relaxed) + 1);
    let Some(source) = &reloader.source else {
        return Err(AdminError(
            StatusCode::CONFLICT,
            "this daemon serves the command given on its command line and has no config file to reload"
                .into(),
        ));
    };
    tracing::info!(reload_request_id = %id, %why, config = %source.path.display(), "reloading the config");
    let validated = Config::load(&source.path, source.explicit)
        .map_err(|error| chain(&error))
        .and_then(|new| check_commands(&reloader.current(), &new).map(|()| new));
    let new = match validated {
        Ok(new) => new,
        Err(error) => {
            tracing::warn!(reload_request_id = %id, "the new config was refused; the old one stays in force: {error}");
            reloader.finish(&id, Err(error.clone()));
            admin.events.publish(EventBody::ReloadFailed { reload_request_id: id, error: error.clone() });
            return Err(AdminError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the new config was refused and the old one stays in force: {error}"),
            ));
        }
    };
    let queued = reloader.pending.fetch_add(1, Ordering::AcqRel) > 0;
    tokio::spawn(apply(admin.clone(), id.clone(), new));
    Ok(ReloadAccepted { status: "reload_initiated".into(), reload_request_id: id, queued })
}

async fn apply(admin: Arc<Admin>, id: String, new: Config) {
    let reloader = &admin.reloader;
    let _serial = reloader.changes.lock().await;
    admin.events.publish(EventBody::ReloadStarted { reload_request_id: id.clone() });
    reloader.systemd.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    let old = reloader.current();
    let restart_required = restart_required(&old, &new);
    let disabled = {
        let mut disabled = lock(&reloader.disabled);
        disabled.retain(|name| new.servers.iter().any(|server| &server.name == name));
        disabled.clone()
    };
    let tools_before = tools_offered(&admin);
    let report = admin.gateway.apply(specs_of(&new, &disabled), new.shutdown_grace).await;
    let mut effective = old;
    effective.servers = new.servers;
    effective.source = new.source;
    *lock(&reloader.current) = effective;
    tracing::info!(
        reload_request_id = %id,
        added = ?report.added,
        removed = ?report.removed,
        restarted = ?report.restarted,
        restart_required = ?restart_required,
        "config reloaded"
    );
    reloader.finish(&id, Ok(restart_required.clone()));
    reloader.pending.fetch_sub(1, Ordering::AcqRel);
    admin.events.publish(EventBody::ReloadFinished {
        reload_request_id: id,
        added: report.added,
        removed: report.removed,
        restarted: report.restarted,
        restart_required,
    });
    let tools_after = tools_offered(&admin);
    if tools_after != tools_before {
        admin.events.publish(EventBody::ToolsChanged { tools: tools_after });
    }
    reloader.systemd.notify("READY=1");
}

/// Enables, disables or restarts one upstream of the config; answers once
/// it is done (a restarted upstream is running or failed).
pub(crate) async fn server_action(admin: &Admin, name: &str, action: ServerAction) -> Result<(), AdminError> {
    let reloader = &admin.reloader;
    let _serial = reloader.changes.lock().await;
    let config = reloader.current();
    if !config.servers.iter().any(|server| server.name == name) {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("the config has no upstream named {name:?}; `mcpsock status` lists them"),
        ));
    }
    let tools_before = tools_offered(admin);
    let grace = config.shutdown_grace;
    match action {
        ServerAction::Restart => {
            if lock(&reloader.disabled).contains(name) {
                return Err(AdminError(
                    StatusCode::CONFLICT,
                    format!("upstream {name} is disabled; enable it instead"),
                ));
            }
            admin.gateway.restart(name, grace).await;
        }
        ServerAction::Enable | ServerAction::Disable => {
            let disabled = {
                let mut disabled = lock(&reloader.disabled);
                let changed = match action {
                    ServerAction::Enable => disabled.remove(name),
                    _ => disabled.insert(name.to_string()),
                };
                if !changed {
                    return Ok(());
                }
                disabled.clone()
            };
            admin.gateway.apply(specs_of(&config, &disabled), grace).await;
        }
    }
    tracing::info!(upstream = %name, action = action.name(), "upstream changed by the admin API");
    let tools_after = tools_offered(admin);
    if tools_after != tools_before {
        admin.events.publish(EventBody::ToolsChanged { tools: tools_after });
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// Polls the config file every `every` and reloads when its content
/// changed. Polling (rather than inotify) follows editors that replace the
/// file by renaming a new one over it, needs no dependency, and a second's
/// delay does not matter for a file a person edits.
pub(crate) async fn watch_config(
    admin: Arc<Admin>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(path) = admin.reloader.config_file().map(Path::to_path_buf) else { return };
    let read = |path: &Path| std::fs::read(path).ok();
    let mut seen = read(&path);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = read(&path);
        if now == seen {
            continue;
        }
        seen = now;
        // The outcome is logged and recorded either way.
        let _ = request_reload(&admin, "the config file changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/mcpsock/config.json")).unwrap()
    }

    #[test]
    fn only_live_settings_avoid_a_restart() {
        let old = parse(r#"{"mcpServers": {"a": {"command": "/bin/true"}}}"#);
        let new = parse(
            r#"{"mcpServers": {"b": {"command": "/bin/true"}}, "listen": "127.0.0.1:9", "request_timeout": 5}"#,
        );
        assert_eq!(restart_required(&old, &new), ["listen", "request_timeout"]);
        assert!(restart_required(&old, &old).is_empty());
    }

    #[test]
    fn commands_of_changed_servers_must_exist() {
        let old = parse(r#"{"mcpServers": {"a": {"command": "/nonexistent/a"}}}"#);
        // Unchanged: left alone even though it cannot run.
        assert_eq!(check_commands(&old, &old), Ok(()));
        let new = parse(
            r#"{"mcpServers": {"a": {"command": "/nonexistent/a"}, "b": {"command": "/nonexistent/b"}}}"#,
        );
        let error = check_commands(&old, &new).unwrap_err();
        assert!(error.contains("mcpServers.b: command /nonexistent/b cannot be run"), "{error}");
        let fine = parse(r#"{"mcpServers": {"sh": {"command": "sh"}, "true": {"command": "/bin/sh"}}}"#);
        assert_eq!(check_commands(&old, &fine), Ok(()));
    }
}
