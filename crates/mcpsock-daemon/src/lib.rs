//! The mcpsock daemon: joins the gateway and the listeners, and runs them
//! from start-up to a clean shutdown.
//!
//! Start-up order is chosen so that a refused start leaves nothing behind:
//! the socket directory is verified and the instance lock taken first, the
//! upstreams are started next, and the socket is bound last, when there is
//! something to serve. Shutdown runs the same steps backwards.

mod access;
mod admin;
pub mod api_key;
mod builder;
mod events;
mod http;
mod live;
mod metrics;
mod opening;
mod persist;
mod reload;
mod server;
mod sessions;
mod sse;
mod stall;
mod tool_call;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use mcpsock_api::EventBody;
use mcpsock_config::Config;
use mcpsock_gateway::{Gateway, GatewayOptions, UpstreamEvent};
use mcpsock_store::Store;

pub use builder::{Acquired, ServeError, Server, ServerHandle};
pub use mcpsock_store::{Durability, EncryptionSecret, SqliteOptions, StoreError};
pub use mcpsock_transport::{PeerPolicy, SocketError, SocketGuard, SystemdEnv, lock_holder};
pub use persist::{RESTARTED_MESSAGE, cut_open_streams};
pub use reload::ConfigSource;
pub use server::HealthReporter;

/// Where the daemon keeps sessions and stream events.
#[derive(Debug)]
#[non_exhaustive]
pub enum Storage {
    /// In process memory: restarts forget every session.
    Memory,
    /// An SQLite database; the retention limits come from the config.
    Sqlite(SqliteOptions),
}

/// What the daemon tells whoever started it once it is ready.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Ready {
    pub pid: u32,
    pub socket: Option<PathBuf>,
    pub tcp: Option<std::net::SocketAddr>,
}

/// Everything the daemon needs to run, validated by the caller.
#[derive(Debug)]
#[non_exhaustive]
pub struct DaemonOptions {
    pub config: Config,
    /// The resolved socket path (flag > env > config > default).
    pub socket_path: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Which local users may connect.
    pub peer_policy: PeerPolicy,
    /// Loopback TCP listener and its API key, when TCP is on.
    pub tcp: Option<(std::net::SocketAddr, mcpsock_config::Secret)>,
    /// Socket activation and readiness notices, when run by systemd.
    pub systemd: SystemdEnv,
    /// Serve on the Unix socket (off for TCP-only setups).
    pub enable_socket: bool,
    /// Where sessions and events are kept (memory unless set).
    pub storage: Storage,
    /// The config file reloads read; none when the upstreams came from the
    /// command line.
    pub config_source: Option<ConfigSource>,
    /// Where the log goes, reported by `/status` (the caller set up the
    /// logging itself).
    pub log_file: Option<PathBuf>,
    /// Poll the config file this often and reload it when it changed.
    pub watch_config: Option<Duration>,
    /// Told once the socket accepts connections and the upstreams have
    /// started (or failed).
    pub ready: Option<tokio::sync::oneshot::Sender<Ready>>,
}

impl DaemonOptions {
    pub fn new(config: Config, socket_path: PathBuf) -> Self {
        let mut peer_policy = PeerPolicy::own_user();
        peer_policy.allow_uids.extend(&config.allow_uids);
        if config.allow_root {
            peer_policy.allow_uids.push(0);
        }
        peer_policy.allow_gids.extend(&config.allow_gids);
        peer_policy.allow_gids.extend(config.socket_group);
        let socket_mode = config.socket_mode;
        Self {
            config,
            socket_path,
            socket_mode,
            peer_policy,
            tcp: None,
            systemd: SystemdEnv::default(),
            enable_socket: true,
            storage: Storage::Memory,
            config_source: None,
            log_file: None,
            watch_config: None,
            ready: None,
        }
    }
}

/// Runs the daemon until `shutdown` resolves, then stops it cleanly:
/// in-flight requests get the configured grace period, upstream process
/// groups are stopped, and the socket and PID file are removed.
pub async fn run(options: DaemonOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let DaemonOptions {
        config,
        socket_path,
        socket_mode,
        peer_policy,
        tcp,
        systemd,
        enable_socket,
        storage,
        config_source,
        log_file,
        watch_config,
        ready,
    } = options;
    let started = Instant::now();
    let started_at = SystemTime::now();
    // SIGHUP asks for a reload; its default action would end the daemon, so
    // it is caught from the very start.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let socket = enable_socket.then(|| socket_path.clone());
    let mut server = match systemd.activated_listener()? {
        Some(listener) => {
            tracing::info!("serving the socket passed by systemd");
            Server::activated(listener, socket_path)
        }
        None if !enable_socket => Server::new(socket_path).without_socket(),
        None => Server::new(socket_path),
    }
    .socket_mode(socket_mode)
    .peer_policy(peer_policy)
    .shutdown_grace(config.shutdown_grace)
    .max_connections(config.max_connections)
    .max_sessions_per_principal(config.max_sessions_per_principal)
    .header_timeout(config.header_timeout)
    .session_idle_ttl(config.session_idle_ttl)
    .stream_stall_timeout(config.stream_stall_timeout)
    .storage(storage)
    .event_retention(config.event_retention)
    .max_events_per_session(config.max_events_per_session)
    .ttl_cleanup_interval(config.ttl_cleanup_interval);
    if let Some(gid) = config.socket_group {
        server = server.socket_group(gid);
    }
    if let Some((address, key)) = tcp {
        server = server.tcp(address, key.expose());
    }
    // The lock is taken and the store opened before any upstream starts,
    // so a second instance is refused before it spawns anything.
    let acquired = server.acquire().await.map_err(ServeError::into_anyhow)?;
    let storage_report = acquired.storage();

    let specs = reload::specs_of(&config, &Default::default());
    // Subscribed before the upstreams start, so their first events are kept.
    let (upstream_events, upstream_feed) = tokio::sync::broadcast::channel(1024);
    let gateway_options = GatewayOptions::default()
        .separator(config.tool_separator.clone())
        .init_timeout(config.init_timeout)
        .stop_grace(config.shutdown_grace)
        .request_timeout(config.request_timeout)
        .list_page_size(config.list_page_size)
        .events(upstream_events);
    let gateway = Gateway::start(specs, gateway_options).await;

    let events = Arc::new(events::EventBus::new(events::RING_CAPACITY));
    let background = tokio_util::sync::CancellationToken::new();
    let session_gateway = gateway.clone();
    let stopping_gateway = gateway.clone();
    let stop_background = background.clone();
    // Upstreams stop before the lock is released, so a new instance never
    // overlaps with the old one's children.
    let before_unlock = Box::pin(async move {
        stop_background.cancel();
        stopping_gateway.shutdown().await;
    });
    let mut admin = None;
    let bound = acquired.serve_with(
        move || session_gateway.for_session(),
        events.clone(),
        |parts| {
            let state = Arc::new(admin::Admin {
                gateway: gateway.clone(),
                started,
                started_at,
                socket,
                tcp: parts.tcp_address,
                log_file,
                events: events.clone(),
                metrics: parts.metrics.clone(),
                stats: parts.stats.clone(),
                in_flight: parts.in_flight.clone(),
                sessions: parts.sessions.clone(),
                streams_token: parts.streams_token.clone(),
                reloader: reload::Reloader::new(config, config_source, systemd.clone()),
                ping_every: events::PING_INTERVAL,
                storage: storage_report,
            });
            admin = Some(state.clone());
            admin::router(state)
        },
        before_unlock,
    );
    let handle = match bound {
        Ok(handle) => handle,
        Err(error) => {
            gateway.shutdown().await;
            return Err(error.into_anyhow());
        }
    };
    let admin = admin.context("the admin API was not set up")?;
    tokio::spawn(forward_upstream_events(events.clone(), gateway.clone(), upstream_feed));
    if let Some(every) = watch_config {
        tokio::spawn(reload::watch_config(admin.clone(), every, background.clone()));
    }
    if let Some(every) = systemd.watchdog_interval() {
        let systemd = systemd.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticks.tick() => systemd.notify("WATCHDOG=1"),
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    let reload_admin = admin.clone();
    let stop = background.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hangup.recv() => if received.is_none() { return },
                () = stop.cancelled() => return,
            }
            // Refusals are logged and recorded by the reload itself.
            let _ = reload::request_reload(&reload_admin, "SIGHUP");
        }
    });
    systemd.notify("READY=1");
    tracing::info!(pid = std::process::id(), "ready");
    if let Some(ready) = ready {
        let _ = ready.send(Ready { pid: std::process::id(), socket: admin.socket.clone(), tcp: admin.tcp });
    }
    let shutdown = async {
        shutdown.await;
        systemd.notify("STOPPING=1");
    };
    handle.run_until(shutdown).await.map_err(ServeError::into_anyhow)?;
    tracing::info!("stopped");
    Ok(())
}

/// How `/status` describes the storage.
pub(crate) fn describe(storage: &Storage) -> mcpsock_api::Storage {
    match storage {
        Storage::Memory => {
            mcpsock_api::Storage { mode: "memory".into(), path: None, encrypted: false, durability: None }
        }
        Storage::Sqlite(options) => mcpsock_api::Storage {
            mode: "sqlite".into(),
            path: Some(options.path.display().to_string()),
            encrypted: options.secret.is_some(),
            durability: Some(
                match options.durability {
                    Durability::Normal => "normal",
                    Durability::Full => "full",
                }
                .into(),
            ),
        },
    }
}

/// Closes a store on a failed start; the start's own error is what matters.
pub(crate) async fn close_quietly(store: &dyn Store) {
    if let Err(error) = store.close().await {
        tracing::warn!(%error, "could not close the state store");
    }
}

/// Turns the gateway's upstream events into admin events, until the
/// gateway is gone.
async fn forward_upstream_events(
    events: Arc<events::EventBus>,
    gateway: Gateway,
    mut feed: tokio::sync::broadcast::Receiver<UpstreamEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match feed.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "upstream events were dropped: too many at once");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let body = match event {
            UpstreamEvent::Started { name, pid, tools } => EventBody::UpstreamStarted { name, pid, tools },
            UpstreamEvent::Failed { name, error } => EventBody::UpstreamFailed { name, error },
            UpstreamEvent::Crashed { name, error } => EventBody::UpstreamCrashed { name, error },
            UpstreamEvent::Restarted { name, pid, tools } => {
                EventBody::UpstreamRestarted { name, pid, tools }
            }
            UpstreamEvent::Stopped { name } => EventBody::UpstreamStopped { name },
            UpstreamEvent::ToolsChanged { .. } => {
                EventBody::ToolsChanged { tools: gateway.report().iter().map(|report| report.tools).sum() }
            }
            _ => continue,
        };
        events.publish(body);
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
