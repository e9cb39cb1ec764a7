//! Serving any rmcp `ServerHandler` on the hardened socket: the one serving
//! path, used by the daemon for its gateway and by anything else that
//! serves its own handler.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mcpsock_api::Health;
use mcpsock_transport::{ListenerStats, PeerPolicy, SocketError, SocketGuard, serve_unix};
use rmcp::ServerHandler;
use tokio_util::sync::CancellationToken;

use crate::http;

/// How long open connections get to close after in-flight requests are done
/// and streams were told to end.
const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the `/health` answer; it receives the number of rejected
/// connections so far.
pub type HealthReporter = Arc<dyn Fn(u64) -> Health + Send + Sync>;

/// Where and how to listen.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    pub socket_path: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Which local users may connect.
    pub peer_policy: PeerPolicy,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl ListenOptions {
    /// Mode 0600, only our own user, a 5 s grace period.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            socket_mode: 0o600,
            peer_policy: PeerPolicy::own_user(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A socket path whose directory is verified and whose instance lock is
/// held, not yet bound.
#[derive(Debug)]
pub struct LockedSocket {
    guard: SocketGuard,
    options: ListenOptions,
}

impl LockedSocket {
    /// Checks the path, verifies the directory, takes the lock and clears a
    /// stale socket; see [`SocketGuard::acquire`].
    pub fn acquire(options: ListenOptions) -> Result<Self, SocketError> {
        mcpsock_config::check_socket_path(&options.socket_path).map_err(SocketError::InvalidPath)?;
        let guard = SocketGuard::acquire(&options.socket_path)?;
        Ok(Self { guard, options })
    }

    /// Binds and starts serving MCP at `/mcp` (a fresh handler from
    /// `factory` for each session) and `/health`. When this returns, the
    /// socket accepts connections: the daemon is ready.
    pub fn bind<S>(
        self,
        factory: impl Fn() -> S + Send + Sync + 'static,
        health: HealthReporter,
    ) -> Result<Serving, SocketError>
    where
        S: ServerHandler + Send + 'static,
    {
        let Self { guard, options } = self;
        let bound = guard.bind(options.socket_mode)?;
        let streams_token = CancellationToken::new();
        let in_flight = Arc::new(http::InFlight::default());
        let stats = Arc::new(ListenerStats::default());
        let router = http::router(factory, health, stats.clone(), streams_token.clone(), in_flight.clone());
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        let server = tokio::spawn(serve_unix(
            bound.listener,
            options.peer_policy.clone(),
            router,
            stats,
            stop.clone(),
            force.clone(),
        ));
        tracing::info!(socket = %options.socket_path.display(), "mcpsock is serving");
        Ok(Serving { guard: bound.guard, options, server, stop, force, streams_token, in_flight })
    }
}

/// A socket being served.
#[derive(Debug)]
pub struct Serving {
    guard: SocketGuard,
    options: ListenOptions,
    server: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    force: CancellationToken,
    streams_token: CancellationToken,
    in_flight: Arc<http::InFlight>,
}

impl Serving {
    /// Serves until `shutdown` resolves. Then it stops accepting, lets
    /// in-flight requests finish within the grace period, ends open streams
    /// and closes connections. The returned guard still holds the lock;
    /// dropping it removes the socket and PID file.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<SocketGuard> {
        let Self { guard, options, mut server, stop, force, streams_token, in_flight } = self;
        shutdown.await;
        tracing::info!("shutting down");
        stop.cancel();
        if tokio::time::timeout(options.shutdown_grace, in_flight.wait_idle()).await.is_err() {
            tracing::warn!(
                active = in_flight.active(),
                "requests still running after the {:?} grace period are cancelled",
                options.shutdown_grace
            );
        }
        streams_token.cancel();
        if tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, &mut server).await.is_err() {
            force.cancel();
            server.await.context("the listener task failed")?;
        }
        Ok(guard)
    }
}
