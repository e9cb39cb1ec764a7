//! The public way to serve an rmcp handler on mcpsock's hardened socket:
//! [`Server`] collects the options, [`Server::serve`] takes the lock, opens
//! the store and binds, and the returned [`ServerHandle`] stops it all again.
//! `mcpsock serve` runs through exactly this path.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mcpsock_api::{ADMIN_PROTOCOL_VERSION, Health, HealthStatus};
use mcpsock_config::Secret;
use mcpsock_store::{Clock, MemoryStore, Retention, SqliteStore, Store, StoreError};
use mcpsock_transport::{PeerPolicy, SocketError};
use rmcp::ServerHandler;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::server::{ListenOptions, LockedSocket, ServingParts, Stop};
use crate::{HealthReporter, Storage, http, persist};

/// Work run after serving stopped and before the socket lock is released.
pub(crate) type BeforeUnlock = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why a server could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The socket path, its directory or the instance lock was refused,
    /// or a listener could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The state store was refused (damaged, newer schema, wrong key,
    /// in use) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A serving task failed unexpectedly.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// Keeps the socket and store errors themselves, for callers that
    /// classify them (the command line's exit codes).
    pub(crate) fn into_anyhow(self) -> anyhow::Error {
        match self {
            Self::Socket(error) => error.into(),
            Self::Store(error) => error.into(),
            Self::Internal(message) => anyhow::Error::msg(message),
        }
    }
}

/// Where the Unix socket comes from.
#[derive(Debug)]
enum SocketSource {
    /// mcpsock binds the path itself, under its lock.
    Path,
    /// systemd (or another supervisor) passed a listening socket.
    Activated(std::os::unix::net::UnixListener),
    /// No Unix socket: loopback TCP only.
    None,
}

/// Serves any rmcp [`ServerHandler`] at `/mcp` on a hardened Unix socket
/// and/or loopback TCP, with sessions that survive restarts when given a
/// database.
///
/// The defaults are those of `mcpsock serve`: socket mode 0600 in a
/// directory that must be 0700, only the current user may connect,
/// sessions in memory expiring after an hour idle, a 5 s shutdown grace.
///
/// ```no_run
/// # async fn example(handler: impl rmcp::ServerHandler + Clone) -> Result<(), mcpsock_daemon::ServeError> {
/// use mcpsock_daemon::Server;
///
/// let server = Server::new("/run/user/1000/my-app/mcp.sock")
///     .serve(move || handler.clone())
///     .await?;
/// // ... later:
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a Server does nothing until `serve` is called"]
pub struct Server {
    listen: ListenOptions,
    socket: SocketSource,
    storage: Storage,
    event_retention: Duration,
    max_events_per_session: usize,
    health: Option<HealthReporter>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listen)
            .field("socket", &self.socket)
            .field("storage", &self.storage)
            .field("event_retention", &self.event_retention)
            .field("max_events_per_session", &self.max_events_per_session)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Acquired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquired").field("socket_path", &self.socket_path).finish_non_exhaustive()
    }
}

impl Server {
    /// A server on the Unix socket at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            listen: ListenOptions::new(socket_path),
            socket: SocketSource::Path,
            storage: Storage::Memory,
            event_retention: Duration::from_secs(3600),
            max_events_per_session: 1000,
            health: None,
        }
    }

    /// A server on loopback TCP only, with no Unix socket. Clients must
    /// send `api_key` (`Authorization: Bearer` or `X-API-Key`). Port 0
    /// picks a free port; [`ServerHandle::local_addr`] tells which.
    pub fn tcp_only(address: SocketAddr, api_key: impl Into<String>) -> Self {
        Self::new(PathBuf::new()).tcp(address, api_key).without_socket()
    }

    /// Serves a socket someone else bound and listens on (systemd socket
    /// activation: see [`crate::SystemdEnv::activated_listener`]). mcpsock
    /// then neither binds nor removes it; `socket_path` is only reported.
    pub fn activated(listener: std::os::unix::net::UnixListener, socket_path: impl Into<PathBuf>) -> Self {
        let mut server = Self::new(socket_path);
        server.socket = SocketSource::Activated(listener);
        server
    }

    /// Serves TCP only: the socket path is neither bound nor reported.
    pub(crate) fn without_socket(mut self) -> Self {
        self.socket = SocketSource::None;
        self
    }

    /// Also serves loopback TCP at `address`, for clients that cannot
    /// reach the socket; they must send `api_key`.
    pub fn tcp(mut self, address: SocketAddr, api_key: impl Into<String>) -> Self {
        self.listen.tcp = Some((address, Secret::new(api_key)));
        self
    }

    /// Permission bits of the socket file (default 0600).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.listen.socket_mode = mode;
        self
    }

    /// Group that owns the socket file; its members may connect (pair it
    /// with a mode such as 0660).
    pub fn socket_group(mut self, gid: u32) -> Self {
        self.listen.socket_group = Some(gid);
        self.listen.peer_policy.allow_gids.push(gid);
        self
    }

    /// Lets the local user `uid` connect too.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.listen.peer_policy.allow_uids.push(uid);
        self
    }

    /// Lets local users whose primary group is `gid` connect too.
    pub fn allow_gid(mut self, gid: u32) -> Self {
        self.listen.peer_policy.allow_gids.push(gid);
        self
    }

    /// Replaces the whole peer policy (which users may connect).
    pub fn peer_policy(mut self, policy: PeerPolicy) -> Self {
        self.listen.peer_policy = policy;
        self
    }

    /// Where sessions and stream events are kept (default: memory).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// How long a session may stay unused before it expires (default 1 h):
    /// no request, no message from the handler, no client waiting for an
    /// answer.
    pub fn session_idle_ttl(mut self, ttl: Duration) -> Self {
        self.listen.session_idle_ttl = ttl;
        self
    }

    /// How long stream events stay resumable (default 1 h).
    pub fn event_retention(mut self, age: Duration) -> Self {
        self.event_retention = age;
        self
    }

    /// Most stream events kept per session (default 1000).
    pub fn max_events_per_session(mut self, events: usize) -> Self {
        self.max_events_per_session = events;
        self
    }

    /// How often expired sessions and old events are removed (default 60 s).
    pub fn ttl_cleanup_interval(mut self, every: Duration) -> Self {
        self.listen.ttl_cleanup_interval = every;
        self
    }

    /// Most connections open at once over all listeners (default 1024).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.listen.max_connections = connections;
        self
    }

    /// Most sessions one user (or the API key holder) may hold (default 1000).
    pub fn max_sessions_per_principal(mut self, sessions: usize) -> Self {
        self.listen.max_sessions_per_principal = sessions;
        self
    }

    /// How long a client may take to send a request head (default 10 s).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.listen.header_timeout = timeout;
        self
    }

    /// How long a stream's client may leave an event unread before the
    /// stream is dropped (default 30 s).
    pub fn stream_stall_timeout(mut self, timeout: Duration) -> Self {
        self.listen.stream_stall_timeout = timeout;
        self
    }

    /// How long in-flight requests get to finish on
    /// [`ServerHandle::shutdown`] (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.listen.shutdown_grace = grace;
        self
    }

    /// Builds the `GET /health` answer; it receives the number of rejected
    /// connections so far. Without it, `/health` reports `ok`.
    pub fn health(mut self, reporter: impl Fn(u64) -> Health + Send + Sync + 'static) -> Self {
        self.health = Some(Arc::new(reporter));
        self
    }

    /// Takes the socket's lock and opens the store, without serving yet: a
    /// second instance is refused here, before the caller starts anything
    /// expensive. Requests that the last process left unanswered get their
    /// "server restarted; retry" error now.
    pub async fn acquire(self) -> Result<Acquired, ServeError> {
        let Self { listen, socket, storage, event_retention, max_events_per_session, health } = self;
        let retention = Retention::default()
            .session_idle_ttl(listen.session_idle_ttl)
            .event_max_age(event_retention)
            .max_events_per_session(max_events_per_session);
        let socket_path = match &socket {
            SocketSource::None => None,
            _ => Some(listen.socket_path.clone()),
        };
        let report = crate::describe(&storage);
        // The store is opened under the socket lock, so of two instances
        // started together, the second is told "already running" before it
        // touches the database.
        let locked = match socket {
            SocketSource::Path => LockedSocket::acquire(listen.clone())?,
            SocketSource::Activated(listener) => LockedSocket::activated(listener, listen.clone()),
            SocketSource::None => LockedSocket::tcp_only(listen.clone()),
        };
        let store: Arc<dyn Store> = match storage {
            Storage::Memory => Arc::new(MemoryStore::new(retention, Clock::system())),
            Storage::Sqlite(options) => {
                let options = options.retention(retention);
                let opened = tokio::task::spawn_blocking(move || SqliteStore::open(options)).await.map_err(
                    |error| ServeError::Internal(format!("the state database check failed: {error}")),
                )?;
                Arc::new(opened?)
            }
        };
        if let Err(error) = persist::cut_open_streams(store.as_ref()).await {
            crate::close_quietly(store.as_ref()).await;
            return Err(error.into());
        }
        let locked = locked.with_store(store.clone(), listen.ttl_cleanup_interval);
        Ok(Acquired { locked, store, socket_path, storage: report, health })
    }

    /// Takes the lock, opens the store and serves: a fresh handler from
    /// `factory` for each MCP session. When this returns, the socket
    /// accepts connections.
    pub async fn serve<S>(
        self,
        factory: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<ServerHandle, ServeError>
    where
        S: ServerHandler + Send + 'static,
    {
        self.acquire().await?.serve(factory).await
    }
}

/// A socket whose lock is held and whose store is open, not yet serving
/// (see [`Server::acquire`]).
pub struct Acquired {
    locked: LockedSocket,
    store: Arc<dyn Store>,
    socket_path: Option<PathBuf>,
    storage: mcpsock_api::Storage,
    health: Option<HealthReporter>,
}

impl Acquired {
    /// How `/status` describes the store.
    pub(crate) fn storage(&self) -> mcpsock_api::Storage {
        self.storage.clone()
    }

    /// Binds and serves `factory`'s handlers, with `/health` beside `/mcp`.
    pub async fn serve<S>(
        self,
        factory: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<ServerHandle, ServeError>
    where
        S: ServerHandler + Send + 'static,
    {
        let health = self.health.clone().unwrap_or_else(|| {
            Arc::new(|rejected_connections| Health {
                status: HealthStatus::Ok,
                admin_protocol: ADMIN_PROTOCOL_VERSION,
                upstreams: Vec::new(),
                rejected_connections,
            })
        });
        let events = Arc::new(EventBus::new(crate::events::RING_CAPACITY));
        self.serve_with(
            factory,
            events,
            move |parts| http::health_route(health, parts.stats.clone()),
            Box::pin(async {}),
        )
    }

    /// [`Self::serve`] with the routes beside `/mcp` built by `routes` (the
    /// daemon's admin API), and `before_unlock` run once serving stopped.
    pub(crate) fn serve_with<S>(
        self,
        factory: impl Fn() -> S + Send + Sync + 'static,
        events: Arc<EventBus>,
        routes: impl FnOnce(&ServingParts) -> axum::Router,
        before_unlock: BeforeUnlock,
    ) -> Result<ServerHandle, ServeError>
    where
        S: ServerHandler + Send + 'static,
    {
        let Self { locked, store, socket_path, .. } = self;
        let serving = match locked.bind_with(factory, events, routes) {
            Ok(serving) => serving,
            Err(error) => {
                let store = store.clone();
                // Closing flushes the store; the bind error is what matters.
                tokio::spawn(async move { crate::close_quietly(store.as_ref()).await });
                return Err(error.into());
            }
        };
        let local_addr = serving.tcp_address();
        let (stop, stop_requested) = oneshot::channel::<()>();
        let stopped = CancellationToken::new();
        let finished = stopped.clone();
        let task = tokio::spawn(async move {
            // `shutdown` stops the server gracefully; a dropped handle stops
            // it at once.
            let signal = async move {
                match stop_requested.await {
                    Ok(()) => Stop::Graceful,
                    Err(_) => Stop::Now,
                }
            };
            let served = serving.run_until(signal).await;
            before_unlock.await;
            // Dropping the guard removes the socket and its lock.
            let result = served.map(drop).map_err(|error| ServeError::Internal(format!("{error:#}")));
            finished.cancel();
            result
        });
        Ok(ServerHandle { socket_path, local_addr, stop: Some(stop), stopped, task: Some(task) })
    }
}

/// A running server. [`Self::shutdown`] stops it gracefully; dropping the
/// handle stops it at once (in-flight requests are cancelled), and in both
/// cases the socket and its lock are removed and the store is flushed and
/// closed.
///
/// Requests are cancelled through rmcp's `RequestContext::ct`: a handler
/// that runs long should watch it, so that a stop ends its work too.
#[derive(Debug)]
pub struct ServerHandle {
    socket_path: Option<PathBuf>,
    local_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    stopped: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// The Unix socket served, unless the server is TCP-only.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// The bound loopback TCP address, when TCP is on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Resolves once the server has stopped, for whatever reason, and its
    /// socket and lock are gone.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stopped.clone().cancelled_owned()
    }

    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, ends open streams and sessions (which stay in the store for
    /// the next start), closes the store and removes the socket and lock.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Serves until `signal` resolves (a Ctrl-C, say), then shuts down as
    /// [`Self::shutdown`] does.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        let stopped = self.stopped();
        tokio::select! {
            () = signal => {}
            () = stopped => {}
        }
        self.shutdown().await
    }

    async fn join(&mut self) -> Result<(), ServeError> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|error| ServeError::Internal(format!("the server task failed: {error}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Dropping the sender without a message asks for an immediate stop;
        // the serving task finishes it (and removes the socket) on its own.
        self.stop.take();
    }
}
