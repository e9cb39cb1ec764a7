//! Serving any rmcp `ServerHandler` on the hardened socket: the one serving
//! path under [`crate::Server`], used by the daemon for its gateway and by
//! anything else that serves its own handler.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mcpsock_api::Health;
use mcpsock_config::Secret;
use mcpsock_store::{MemoryStore, Store};
use mcpsock_transport::{Connections, Listener, ListenerStats, PeerPolicy, SocketError, SocketGuard};
use rmcp::ServerHandler;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::sessions::BoundSessions;
use crate::{http, persist};

/// How long open connections get to close after in-flight requests are done
/// and streams were told to end.
const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the `/health` answer; it receives the number of rejected
/// connections so far.
pub type HealthReporter = Arc<dyn Fn(u64) -> Health + Send + Sync>;

/// Where and how to listen.
#[derive(Clone, Debug)]
pub(crate) struct ListenOptions {
    pub(crate) socket_path: PathBuf,
    /// Permission bits of the socket file.
    pub(crate) socket_mode: u32,
    /// Group that owns the socket file.
    pub(crate) socket_group: Option<u32>,
    /// Which local users may connect.
    pub(crate) peer_policy: PeerPolicy,
    /// How long in-flight requests may take to finish on shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Loopback TCP listener and the API key its clients must present.
    pub(crate) tcp: Option<(std::net::SocketAddr, Secret)>,
    /// Most connections open at once, over all listeners.
    pub(crate) max_connections: usize,
    /// Most sessions one principal may hold.
    pub(crate) max_sessions_per_principal: usize,
    /// How long a client may take to send a request head.
    pub(crate) header_timeout: Duration,
    /// How long a stream's client may leave a sent event unread before the
    /// stream is dropped.
    pub(crate) stream_stall_timeout: Duration,
    /// How long a session may stay unused before it expires.
    pub(crate) session_idle_ttl: Duration,
    /// Where sessions and stream events are kept; its retention should use
    /// the same `session_idle_ttl`.
    pub(crate) store: Arc<dyn Store>,
    /// How often expired sessions and old events are removed.
    pub(crate) ttl_cleanup_interval: Duration,
}

impl ListenOptions {
    /// Mode 0600, only our own user, a 5 s grace period, sessions in
    /// memory.
    pub(crate) fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            socket_mode: 0o600,
            socket_group: None,
            peer_policy: PeerPolicy::own_user(),
            shutdown_grace: Duration::from_secs(5),
            tcp: None,
            max_connections: 1024,
            max_sessions_per_principal: 1000,
            header_timeout: Duration::from_secs(10),
            session_idle_ttl: Duration::from_secs(3600),
            stream_stall_timeout: Duration::from_secs(30),
            store: Arc::new(MemoryStore::default()),
            ttl_cleanup_interval: Duration::from_secs(60),
        }
    }
}

/// A socket path whose directory is verified and whose instance lock is
/// held, not yet bound; or a listening socket passed by systemd.
#[derive(Debug)]
pub(crate) struct LockedSocket {
    source: Source,
    options: ListenOptions,
}

#[derive(Debug)]
enum Source {
    Path(SocketGuard),
    /// Socket activation: systemd owns the socket file and the single
    /// instance; mcpsock neither binds nor unlinks.
    Activated(std::os::unix::net::UnixListener),
    /// No Unix socket: TCP only. The TCP port is the single-instance guard.
    None,
}

impl LockedSocket {
    /// Checks the path, verifies the directory, takes the lock and clears a
    /// stale socket; see [`SocketGuard::acquire`].
    pub(crate) fn acquire(options: ListenOptions) -> Result<Self, SocketError> {
        mcpsock_config::check_socket_path(&options.socket_path).map_err(SocketError::InvalidPath)?;
        let guard = SocketGuard::acquire(&options.socket_path)?;
        Ok(Self { source: Source::Path(guard), options })
    }

    /// Serves TCP only (`ListenOptions::tcp` must be set).
    pub(crate) fn tcp_only(options: ListenOptions) -> Self {
        Self { source: Source::None, options }
    }

    /// Keeps sessions and events in `store`, cleaned every `cleanup_interval`.
    pub(crate) fn with_store(mut self, store: Arc<dyn Store>, cleanup_interval: Duration) -> Self {
        self.options.store = store;
        self.options.ttl_cleanup_interval = cleanup_interval;
        self
    }

    /// Serves a listening socket passed by systemd socket activation.
    pub(crate) fn activated(listener: std::os::unix::net::UnixListener, options: ListenOptions) -> Self {
        Self { source: Source::Activated(listener), options }
    }

    /// Binds and starts serving MCP at `/mcp` (a fresh handler from
    /// `factory` for each session), with the routes beside it built by
    /// `routes` from the serving state (`/health`, or the daemon's admin
    /// API). When this returns, the socket accepts connections.
    pub(crate) fn bind_with<S>(
        self,
        factory: impl Fn() -> S + Send + Sync + 'static,
        events: Arc<EventBus>,
        routes: impl FnOnce(&ServingParts) -> axum::Router,
    ) -> Result<Serving, SocketError>
    where
        S: ServerHandler + Send + 'static,
    {
        let Self { source, options } = self;
        raise_descriptor_limit();
        let (unix_listener, guard) = match source {
            Source::Path(guard) => {
                let bound = guard.bind(options.socket_mode, options.socket_group)?;
                (Some(bound.listener), Some(bound.guard))
            }
            Source::Activated(listener) => {
                let listener = tokio::net::UnixListener::from_std(listener)
                    .map_err(|source| SocketError::Bind { path: options.socket_path.clone(), source })?;
                (Some(listener), None)
            }
            Source::None => (None, None),
        };
        let tcp = match &options.tcp {
            Some((address, key)) => {
                let listener = mcpsock_transport::bind_tcp(*address)?;
                let local = listener
                    .local_addr()
                    .map_err(|source| SocketError::BindTcp { address: *address, source })?;
                Some((listener, local, key.clone()))
            }
            None => None,
        };
        let streams_token = CancellationToken::new();
        let in_flight = Arc::new(http::InFlight::default());
        let stats = Arc::new(ListenerStats::default());
        let access = Arc::new(Access::new(tcp.as_ref().map(|(_, local, key)| (*local, key.clone()))));
        let sessions = Arc::new(BoundSessions::new(
            options.store.clone(),
            streams_token.clone(),
            events.clone(),
            options.max_sessions_per_principal,
            options.session_idle_ttl,
        ));

        let metrics = Arc::new(Metrics::default());
        let parts = ServingParts {
            stats: stats.clone(),
            in_flight: in_flight.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            streams_token: streams_token.clone(),
            tcp_address: tcp.as_ref().map(|(_, local, _)| *local),
        };
        let routes = routes(&parts);
        let router = http::router(
            factory,
            routes,
            http::Guards {
                access,
                sessions,
                in_flight: in_flight.clone(),
                stream_stall_timeout: options.stream_stall_timeout,
                events,
                metrics,
            },
            streams_token.clone(),
        );
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        let cleanup = tokio::spawn(persist::clean_periodically(
            options.store.clone(),
            options.ttl_cleanup_interval,
            stop.clone(),
        ));
        let connections = Arc::new(Connections::new(options.max_connections, options.header_timeout));
        let mut servers = Vec::new();
        if let Some(unix_listener) = unix_listener {
            servers.push(tokio::spawn(mcpsock_transport::serve(
                Listener::Unix(unix_listener, options.peer_policy.clone()),
                router.clone(),
                connections.clone(),
                stats.clone(),
                stop.clone(),
                force.clone(),
            )));
            tracing::info!(socket = %options.socket_path.display(), "mcpsock is serving");
        }
        let tcp_address = tcp.as_ref().map(|(_, local, _)| *local);
        if let Some((listener, local, _)) = tcp {
            tracing::info!(address = %local, "serving loopback TCP (API key required)");
            servers.push(tokio::spawn(mcpsock_transport::serve(
                Listener::Tcp(listener),
                router,
                connections,
                stats,
                stop.clone(),
                force.clone(),
            )));
        }
        Ok(Serving {
            guard,
            options,
            servers,
            cleanup,
            tcp_address,
            stop,
            force,
            streams_token,
            in_flight,
            sessions: parts.sessions,
        })
    }
}

/// The serving state the admin API reads.
#[derive(Debug)]
pub(crate) struct ServingParts {
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) in_flight: Arc<http::InFlight>,
    pub(crate) sessions: Arc<BoundSessions>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) streams_token: CancellationToken,
    pub(crate) tcp_address: Option<std::net::SocketAddr>,
}

/// Lifts the soft limit on open descriptors to the hard limit: a daemon
/// whose connection cap is above the common default soft limit (1024) would
/// otherwise fail accepts before it reaches its own cap.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%error, "could not raise the descriptor limit");
        }
    }
}

/// How a server is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// In-flight requests get the grace period.
    Graceful,
    /// In-flight requests are cancelled.
    Now,
}

/// A socket being served.
#[derive(Debug)]
pub(crate) struct Serving {
    guard: Option<SocketGuard>,
    options: ListenOptions,
    servers: Vec<tokio::task::JoinHandle<()>>,
    cleanup: tokio::task::JoinHandle<()>,
    tcp_address: Option<std::net::SocketAddr>,
    stop: CancellationToken,
    force: CancellationToken,
    streams_token: CancellationToken,
    in_flight: Arc<http::InFlight>,
    sessions: Arc<BoundSessions>,
}

impl Serving {
    /// The bound TCP address, when TCP is on (useful with port 0).
    pub(crate) fn tcp_address(&self) -> Option<std::net::SocketAddr> {
        self.tcp_address
    }

    /// Serves until `shutdown` resolves. Then it stops accepting, lets
    /// in-flight requests finish within the grace period (none for
    /// [`Stop::Now`]), ends open streams, closes connections and the
    /// sessions (their records stay in the store), and closes the
    /// store (for SQLite: the WAL is checkpointed and the database
    /// unlocked). The returned guard (none for an activated socket) still
    /// holds the lock; dropping it removes the socket and PID file.
    pub(crate) async fn run_until(
        self,
        shutdown: impl Future<Output = Stop>,
    ) -> anyhow::Result<Option<SocketGuard>> {
        let Self {
            guard, options, servers, cleanup, stop, force, streams_token, in_flight, sessions, ..
        } = self;
        let how = shutdown.await;
        tracing::info!("shutting down");
        stop.cancel();
        let grace = match how {
            Stop::Graceful => options.shutdown_grace,
            Stop::Now => {
                // Nothing is waited for: connections close mid-request.
                force.cancel();
                Duration::ZERO
            }
        };
        if tokio::time::timeout(grace, in_flight.wait_idle()).await.is_err() {
            tracing::warn!(
                active = in_flight.active(),
                "requests still running after the {:?} grace period are cancelled",
                grace
            );
        }
        streams_token.cancel();
        let mut all = futures::future::join_all(servers);
        let joined = match tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, &mut all).await {
            Ok(joined) => joined,
            Err(_) => {
                force.cancel();
                all.await
            }
        };
        for result in joined {
            result.context("a listener task failed")?;
        }
        // With the streams token cancelled, closing keeps each session's
        // record for the next start; its service loop and handler end here.
        sessions.close_all().await;
        cleanup.await.context("the state cleanup task failed")?;
        options.store.close().await.context("could not close the state store")?;
        Ok(guard)
    }
}
