//! The mcpsock daemon: joins the gateway and the listeners, and runs them
//! from start-up to a clean shutdown.
//!
//! Start-up order is chosen so that a refused start leaves nothing behind:
//! the socket directory is verified and the instance lock taken first, the
//! upstreams are started next, and the socket is bound last, when there is
//! something to serve. Shutdown runs the same steps backwards.

mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mcpsock_config::Config;
use mcpsock_gateway::{Gateway, GatewayOptions, UpstreamSpec};
use mcpsock_transport::{ListenerStats, PeerPolicy, SocketGuard, serve_unix};
use tokio_util::sync::CancellationToken;

pub use mcpsock_transport::SocketError;

/// How long open connections get to close after in-flight requests are done
/// and streams were told to end.
const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
}

impl DaemonOptions {
    pub fn new(config: Config, socket_path: PathBuf) -> Self {
        let socket_mode = config.socket_mode;
        Self { config, socket_path, socket_mode, peer_policy: PeerPolicy::own_user() }
    }
}

/// Runs the daemon until `shutdown` resolves, then stops it cleanly:
/// in-flight requests get the configured grace period, upstream process
/// groups are stopped, and the socket and PID file are removed.
pub async fn run(options: DaemonOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let DaemonOptions { config, socket_path, socket_mode, peer_policy } = options;
    mcpsock_config::check_socket_path(&socket_path).map_err(anyhow::Error::msg)?;
    let guard = SocketGuard::acquire(&socket_path)?;

    let specs = config
        .servers
        .iter()
        .map(|server| {
            UpstreamSpec::new(&server.name, &server.command)
                .args(server.args.clone())
                .env(server.env.iter().map(|(key, value)| (key.clone(), value.expose().to_string())))
                .cwd(server.cwd.clone())
        })
        .collect();
    let gateway_options = GatewayOptions::default()
        .separator(config.tool_separator.clone())
        .init_timeout(config.init_timeout)
        .stop_grace(config.shutdown_grace);
    let gateway = Gateway::start(specs, gateway_options).await;

    let bound = match guard.bind(socket_mode) {
        Ok(bound) => bound,
        Err(error) => {
            gateway.shutdown().await;
            return Err(error.into());
        }
    };
    let streams_token = CancellationToken::new();
    let in_flight = Arc::new(http::InFlight::default());
    let stats = Arc::new(ListenerStats::default());
    let router = http::router(gateway.clone(), stats.clone(), streams_token.clone(), in_flight.clone());
    let stop = CancellationToken::new();
    let force = CancellationToken::new();
    let server =
        tokio::spawn(serve_unix(bound.listener, peer_policy, router, stats, stop.clone(), force.clone()));
    tracing::info!(socket = %socket_path.display(), upstreams = config.servers.len(), "mcpsock is serving");

    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    if tokio::time::timeout(config.shutdown_grace, in_flight.wait_idle()).await.is_err() {
        tracing::warn!(
            active = in_flight.active(),
            "requests still running after the {:?} grace period are cancelled",
            config.shutdown_grace
        );
    }
    streams_token.cancel();
    let mut server = server;
    if tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, &mut server).await.is_err() {
        force.cancel();
        server.await.context("the listener task failed")?;
    }
    gateway.shutdown().await;
    drop(bound.guard);
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
