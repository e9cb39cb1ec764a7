//! The `mcpsock` command: parses flags, runs one command, and turns its
//! outcome into a message and an exit code. This is the only place in the
//! workspace that prints or exits.

// The binary is where output belongs.
#![allow(clippy::print_stdout, clippy::print_stderr)]
// The flag structs' doc comments are the `--help` text, written for a
// terminal: `[default: …]` and `<app>` there are not rustdoc links or tags.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

/// Prints a line to stdout. A closed stdout (`mcpsock tools | head -1`)
/// is not an error worth a panic: the line is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// mimalloc instead of the C library's allocator: a request allocates and
/// frees many small objects on one thread, which glibc's malloc pays for in
/// bin consolidation and locking (a sixth of the daemon's instructions per
/// gateway call). Figures in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod background;
mod bench;
mod call;
mod exit;
mod flags;
mod lifecycle;

use std::process::ExitCode;

use clap::Parser;
use mcpsock_client::Endpoint;
use mcpsock_config::{Config, ProcessEnv};

use crate::exit::Failure;
use crate::flags::{Command, Flags, ServeFlags};

fn main() -> ExitCode {
    let flags = Flags::parse();
    let daemon_flags = match &flags.command {
        Command::Serve(serve) => Some(&serve.daemon),
        Command::Socket(socket) => Some(&socket.daemon),
        _ => None,
    };
    if let Some(daemon) = daemon_flags {
        if daemon.daemonized {
            background::detach();
        } else if daemon.background {
            return background::launch(&flags);
        }
    }
    let daemonized = daemon_flags.is_some_and(|daemon| daemon.daemonized);
    if let Err(failure) = init_logging(&flags) {
        eprintln!("mcpsock: {:#}", failure.error);
        return ExitCode::from(failure.code.value());
    }
    match run(flags) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("mcpsock: {:#}", failure.error);
            if daemonized {
                background::report_failure(&failure);
            }
            ExitCode::from(failure.code.value())
        }
    }
}

fn init_logging(flags: &Flags) -> Result<(), Failure> {
    use std::io::IsTerminal;
    // rmcp logs every handshake at info; that is noise in a daemon's log.
    let (default, daemon) = match &flags.command {
        Command::Serve(serve) => ("info,rmcp=warn", Some(&serve.daemon)),
        Command::Socket(socket) => ("info,rmcp=warn", Some(&socket.daemon)),
        _ => ("warn", None),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCPSOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A detached daemon's standard error already is its log file.
    match daemon.filter(|daemon| !daemon.daemonized).and_then(|daemon| daemon.log_file.as_deref()) {
        Some(path) => {
            let file = background::open_log(path).map_err(|error| {
                Failure::config(
                    anyhow::Error::new(error).context(format!("cannot open the log file {}", path.display())),
                )
            })?;
            builder.with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
        }
        None => builder.with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

fn run(flags: Flags) -> Result<ExitCode, Failure> {
    let runtime = match flags.command {
        Command::Serve(_) | Command::Socket(_) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .map_err(|error| {
        Failure::internal(anyhow::Error::new(error).context("cannot start the async runtime"))
    })?;
    runtime.block_on(async {
        match flags.command {
            Command::Serve(serve) => run_serve(serve).await,
            Command::Socket(socket) => lifecycle::run_socket(socket).await,
            Command::Stop(stop) => lifecycle::stop(&resolve_endpoint(&stop.target)?, stop.timeout).await,
            Command::Health(health) => {
                lifecycle::health(&resolve_endpoint(&health.target)?, health.json).await
            }
            Command::Reload(reload) => {
                lifecycle::reload(&resolve_endpoint(&reload.target)?, reload.no_wait).await
            }
            Command::Enable(server) => {
                lifecycle::server_action(&resolve_endpoint(&server.target)?, &server.name, "enable").await
            }
            Command::Disable(server) => {
                lifecycle::server_action(&resolve_endpoint(&server.target)?, &server.name, "disable").await
            }
            Command::Restart(server) => {
                lifecycle::server_action(&resolve_endpoint(&server.target)?, &server.name, "restart").await
            }
            Command::Logs(logs) => lifecycle::logs(&resolve_endpoint(&logs.target)?, &logs).await,
            Command::Tools(tools) => {
                let endpoint = resolve_endpoint(&tools.target)?;
                call::list_tools(&endpoint, tools.json).await
            }
            Command::Call(call) => {
                let endpoint = resolve_endpoint(&call.target)?;
                call::call_tool(&endpoint, &call).await
            }
            Command::Status(status) => {
                let endpoint = resolve_endpoint(&status.target)?;
                lifecycle::status(&endpoint, &status).await
            }
            Command::Bench(bench) => {
                let target = if bench.stdio {
                    mcpsock_client::bench::BenchTarget::Stdio(bench.command.clone())
                } else {
                    mcpsock_client::bench::BenchTarget::Endpoint(resolve_endpoint(&bench.target)?)
                };
                bench::run(target, &bench).await
            }
            Command::Bridge(bridge) => {
                let endpoint = resolve_endpoint(&bridge.target)?;
                mcpsock_client::bridge(&endpoint).await.map_err(Failure::client)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn run_serve(flags: ServeFlags) -> Result<ExitCode, Failure> {
    let env = ProcessEnv;
    let mut location = mcpsock_config::config_location(flags.config.as_deref(), &env);
    // Absolute, so reloads and relative commands still resolve after a
    // detached daemon moved to `/`.
    location.path = lifecycle::absolute(&location.path);
    let config = Config::load(&location.path, location.explicit).map_err(Failure::config)?;
    if config.source.is_none() {
        tracing::warn!(
            config = %location.path.display(),
            "no config file found: serving no upstream servers; write one in the mcpServers format there or pass --config"
        );
    }
    let socket_path = lifecycle::absolute(&mcpsock_config::socket_path(
        flags.socket.as_deref(),
        &env,
        config.socket.as_deref(),
    ));
    let source = mcpsock_daemon::ConfigSource { path: location.path, explicit: location.explicit };
    let serve = lifecycle::Serve {
        config,
        config_source: Some(source),
        socket_path,
        listen: flags.listen.clone(),
        dangerously_bind_non_loopback: flags.dangerously_bind_non_loopback,
        no_socket: flags.no_socket,
        watch_config: flags.watch_config,
        daemon: &flags.daemon,
        default_db: mcpsock_config::default_db_path(&ProcessEnv),
    };
    serve_daemon(serve).await
}

/// Runs the daemon `serve` or `socket` prepared.
async fn serve_daemon(serve: lifecycle::Serve<'_>) -> Result<ExitCode, Failure> {
    let env = ProcessEnv;
    let lifecycle::Serve {
        config,
        config_source,
        socket_path,
        listen,
        dangerously_bind_non_loopback,
        no_socket,
        watch_config,
        daemon,
        default_db,
    } = serve;
    let flags = ServeLike { listen, dangerously_bind_non_loopback, no_socket };
    mcpsock_config::check_socket_path(&socket_path)
        .map_err(|message| Failure::config(anyhow::Error::msg(message)))?;
    let listen =
        flags.listen.clone().or_else(|| env_string("MCPSOCK_LISTEN")).or_else(|| config.listen.clone());
    let tcp = match listen {
        Some(text) => {
            let address = mcpsock_config::parse_listen(&text, flags.dangerously_bind_non_loopback)
                .map_err(|message| Failure::config(anyhow::Error::msg(message)))?;
            let key = match env_string("MCPSOCK_API_KEY")
                .or_else(|| config.api_key.as_ref().map(|key| key.expose().to_string()))
            {
                Some(key) if key.len() < 16 => {
                    return Err(Failure::config(anyhow::anyhow!(
                        "the API key must be at least 16 characters long"
                    )));
                }
                Some(key) => mcpsock_config::Secret::new(key),
                None => mcpsock_daemon::api_key::load_or_create_key(&mcpsock_config::data_dir(&env))
                    .map_err(|error| Failure::new(exit::Code::Socket, error))?,
            };
            Some((address, key))
        }
        None => None,
    };
    let enable_socket = config.enable_socket && !flags.no_socket;
    if !enable_socket && tcp.is_none() {
        return Err(Failure::config(anyhow::anyhow!(
            "with the Unix socket off (--no-socket or enable_socket: false) there is nothing to serve on; add --listen 127.0.0.1:PORT"
        )));
    }
    let shutdown = mcpsock_daemon::shutdown_signal().await.map_err(Failure::internal)?;
    let storage = storage(&daemon.storage, &config, &env, default_db)?;
    let log_file = daemon.log_file.as_deref().map(lifecycle::absolute);
    let mut options = mcpsock_daemon::DaemonOptions::new(config, socket_path);
    options.storage = storage;
    options.enable_socket = enable_socket;
    options.tcp = tcp;
    options.systemd = mcpsock_daemon::SystemdEnv::from_process();
    options.config_source = config_source;
    options.log_file = log_file;
    options.watch_config = watch_config.then_some(std::time::Duration::from_secs(1));
    if daemon.daemonized {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        options.ready = Some(ready);
        tokio::spawn(async move {
            if let Ok(ready) = is_ready.await {
                background::report_ready(ready.pid);
            }
        });
        // Every path is resolved by now.
        std::env::set_current_dir("/")
            .map_err(|error| Failure::internal(anyhow::Error::new(error).context("cannot change to /")))?;
    }
    mcpsock_daemon::run(options, shutdown).await.map_err(Failure::daemon)?;
    Ok(ExitCode::SUCCESS)
}

/// Where sessions are kept: `--memory` > `--db` > `MCPSOCK_DB` > the
/// config's `storage`/`db` > the default database. The encryption secret:
/// `--encryption-secret-file` > `MCPSOCK_ENCRYPTION_SECRET` > the config's
/// `encryption_secret_file`.
fn storage(
    flags: &flags::StorageFlags,
    config: &Config,
    env: &ProcessEnv,
    default_db: std::path::PathBuf,
) -> Result<mcpsock_daemon::Storage, Failure> {
    use mcpsock_daemon::{Durability, EncryptionSecret, SqliteOptions};
    let db_from_outside = flags.db.is_some() || env_string("MCPSOCK_DB").is_some();
    if flags.memory || (!db_from_outside && config.storage == mcpsock_config::StorageKind::Memory) {
        return Ok(mcpsock_daemon::Storage::Memory);
    }
    let path = lifecycle::absolute(&mcpsock_config::db_path(
        flags.db.as_deref(),
        env,
        config.db.as_deref(),
        default_db,
    ));
    let secret = match (&flags.encryption_secret_file, env_string("MCPSOCK_ENCRYPTION_SECRET")) {
        (Some(file), _) => Some(EncryptionSecret::from_file(file)),
        (None, Some(secret)) => Some(EncryptionSecret::new(secret)),
        (None, None) => config.encryption_secret_file.as_deref().map(EncryptionSecret::from_file),
    }
    .transpose()
    .map_err(Failure::state)?;
    let durability = match flags.durability {
        Some(flags::DurabilityFlag::Full) => Durability::Full,
        Some(flags::DurabilityFlag::Normal) => Durability::Normal,
        None => match config.durability {
            mcpsock_config::Durability::Full => Durability::Full,
            mcpsock_config::Durability::Normal => Durability::Normal,
        },
    };
    Ok(mcpsock_daemon::Storage::Sqlite(SqliteOptions::new(path).durability(durability).secret(secret)))
}

/// The listener flags `serve` and `socket` share.
struct ServeLike {
    listen: Option<String>,
    dangerously_bind_non_loopback: bool,
    no_socket: bool,
}

/// A non-empty environment variable.
fn env_string(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}

/// Finds the daemon: `--endpoint` > `--socket` > `MCPSOCK_ENDPOINT` >
/// `MCPSOCK_SOCKET` > the config's `socket` > the default socket.
fn resolve_endpoint(target: &flags::TargetFlags) -> Result<Endpoint, Failure> {
    Endpoint::discover(target.endpoint.as_deref(), target.socket.as_deref(), target.config.as_deref())
        .map_err(Failure::client)
}
