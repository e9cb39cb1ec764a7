//! The mcpsock daemon: joins the gateway and the listeners, and runs them
//! from start-up to a clean shutdown.
//!
//! Start-up order is chosen so that a refused start leaves nothing behind:
//! the socket directory is verified and the instance lock taken first, the
//! upstreams are started next, and the socket is bound last, when there is
//! something to serve. Shutdown runs the same steps backwards.

mod access;
pub mod api_key;
mod http;
mod server;
mod sessions;
mod stall;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use mcpsock_config::Config;
use mcpsock_gateway::{Gateway, GatewayOptions, RequestLimits, ToolFilter, UpstreamSpec};

pub use mcpsock_transport::{PeerPolicy, SocketError, SocketGuard, SystemdEnv};
pub use server::{HealthReporter, ListenOptions, LockedSocket, Serving};

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
        }
    }
}

/// Runs the daemon until `shutdown` resolves, then stops it cleanly:
/// in-flight requests get the configured grace period, upstream process
/// groups are stopped, and the socket and PID file are removed.
pub async fn run(options: DaemonOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let DaemonOptions { config, socket_path, socket_mode, peer_policy, tcp, systemd, enable_socket } =
        options;
    let mut listen = ListenOptions::new(socket_path);
    listen.socket_mode = socket_mode;
    listen.socket_group = config.socket_group;
    listen.peer_policy = peer_policy;
    listen.shutdown_grace = config.shutdown_grace;
    listen.tcp = tcp;
    listen.max_connections = config.max_connections;
    listen.max_sessions_per_principal = config.max_sessions_per_principal;
    listen.header_timeout = config.header_timeout;
    listen.session_idle_ttl = config.session_idle_ttl;
    listen.stream_stall_timeout = config.stream_stall_timeout;
    let locked = match systemd.activated_listener()? {
        Some(listener) => {
            tracing::info!("serving the socket passed by systemd");
            LockedSocket::activated(listener, listen)
        }
        None if !enable_socket => LockedSocket::tcp_only(listen),
        None => LockedSocket::acquire(listen)?,
    };

    let specs = config
        .servers
        .iter()
        .map(|server| {
            UpstreamSpec::new(&server.name, &server.command)
                .args(server.args.clone())
                .env(server.env.iter().map(|(key, value)| (key.clone(), value.expose().to_string())))
                .cwd(server.cwd.clone())
                .prefix(server.prefix.clone())
                .tools(ToolFilter {
                    enabled: server.enabled_tools.clone(),
                    disabled: server.disabled_tools.clone(),
                })
                .limits(RequestLimits {
                    max_concurrent: server.max_concurrent_requests,
                    max_queued: server.max_queued_requests,
                    queue_timeout: server.queue_timeout,
                })
        })
        .collect();
    let gateway_options = GatewayOptions::default()
        .separator(config.tool_separator.clone())
        .init_timeout(config.init_timeout)
        .stop_grace(config.shutdown_grace)
        .request_timeout(config.request_timeout);
    let gateway = Gateway::start(specs, gateway_options).await;

    let health_gateway = gateway.clone();
    let health: HealthReporter = Arc::new(move |rejected| http::gateway_health(&health_gateway, rejected));
    let session_gateway = gateway.clone();
    let serving = match locked.bind(move || session_gateway.for_session(), health) {
        Ok(serving) => serving,
        Err(error) => {
            gateway.shutdown().await;
            return Err(error.into());
        }
    };
    systemd.notify("READY=1");
    let shutdown = async {
        shutdown.await;
        systemd.notify("STOPPING=1");
    };
    let served = serving.run_until(shutdown).await;
    // Upstreams stop before the lock is released, so a new instance never
    // overlaps with the old one's children.
    gateway.shutdown().await;
    drop(served?);
    tracing::info!("stopped");
    Ok(())
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
