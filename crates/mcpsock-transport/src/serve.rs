//! Accepting connections, checking who is on the other end, and serving
//! the router on them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Who is on the other end of a connection. Every request carries one in
/// its extensions; authorization reads this and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A local process on the Unix socket, as the kernel reports it.
    Unix { uid: u32, gid: u32, pid: Option<i32> },
    /// A TCP client; who it is, only its API key can say.
    Tcp { address: SocketAddr },
}

/// Lets a request handler close its own connection at once, without the
/// grace a normal shutdown gives (for a client that stopped reading).
/// Every request carries one in its extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnectionControl {
    close_now: CancellationToken,
}

impl ConnectionControl {
    /// Closes the connection now; whatever it was sending is dropped.
    pub fn close_now(&self) {
        self.close_now.cancel();
    }
}

/// Which local users may talk to the socket. A peer is admitted when its
/// uid is listed or its primary gid is listed (supplementary groups are not
/// consulted: `SO_PEERCRED` does not report them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

impl PeerPolicy {
    /// Only processes of the user running the daemon.
    pub fn own_user() -> Self {
        Self { allow_uids: vec![rustix::process::geteuid().as_raw()], allow_gids: Vec::new() }
    }

    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        self.allow_uids.contains(&uid) || self.allow_gids.contains(&gid)
    }
}

/// Counters of one listener, for health and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    over_capacity: AtomicU64,
}

impl ListenerStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Unix connections refused because of their peer's credentials.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connections closed because the connection limit was reached.
    pub fn over_capacity(&self) -> u64 {
        self.over_capacity.load(Ordering::Relaxed)
    }
}

/// Largest request head (request line and headers) accepted; a larger one is
/// answered 431. Bodies are streamed and bounded separately.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// A listening socket and what admits a connection on it.
#[derive(Debug)]
pub enum Listener {
    /// The Unix socket: peers are checked by their kernel credentials.
    Unix(UnixListener, PeerPolicy),
    /// Loopback TCP: any peer may connect; requests prove themselves with
    /// the API key, which the router checks.
    Tcp(TcpListener),
}

impl Listener {
    /// Accepts the next connection and says who is on the other end, or why
    /// it was refused (`Ok(None)`: refused and already logged).
    async fn accept(&self, stats: &ListenerStats) -> std::io::Result<Option<(Connection, Peer)>> {
        match self {
            Self::Unix(listener, policy) => {
                let (stream, _) = listener.accept().await?;
                let cred = match stream.peer_cred() {
                    Ok(cred) => cred,
                    Err(error) => {
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "rejected a connection whose credentials could not be read");
                        return Ok(None);
                    }
                };
                let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
                if !policy.admits(uid, gid) {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        uid,
                        gid,
                        pid = pid.unwrap_or(-1),
                        "rejected a connection from a user that is not allowed"
                    );
                    return Ok(None);
                }
                Ok(Some((Connection::Unix(stream), Peer::Unix { uid, gid, pid })))
            }
            Self::Tcp(listener) => {
                let (stream, address) = listener.accept().await?;
                // Small request/response pairs: Nagle's algorithm would only
                // add delay.
                let _ = stream.set_nodelay(true);
                Ok(Some((Connection::Tcp(stream), Peer::Tcp { address })))
            }
        }
    }
}

enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// How long a new connection waits for a slot after the oldest open
/// connection was asked to close.
const EVICTION_WAIT: Duration = Duration::from_millis(250);

/// The open connections of a daemon, shared by all its listeners: their cap
/// and how long a client may take to send a request head.
///
/// When the cap is reached, the oldest open connection is asked to close
/// gracefully (an idle keep-alive connection closes at once, a busy one after
/// its current response), so that idle connections cannot lock new clients
/// out. A new connection that still finds no slot is closed.
#[derive(Debug)]
pub struct Connections {
    header_timeout: Duration,
    permits: Arc<Semaphore>,
    open: Mutex<VecDeque<Arc<OpenConnection>>>,
}

#[derive(Debug)]
struct OpenConnection {
    close: CancellationToken,
    done: AtomicBool,
}

impl Connections {
    pub fn new(max_connections: usize, header_timeout: Duration) -> Self {
        Self { header_timeout, permits: Arc::new(Semaphore::new(max_connections)), open: Mutex::default() }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<OpenConnection>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.close_oldest();
        tokio::time::timeout(EVICTION_WAIT, self.permits.clone().acquire_owned()).await.ok()?.ok()
    }

    fn close_oldest(&self) {
        let mut open = self.open();
        while let Some(oldest) = open.pop_front() {
            if !oldest.done.load(Ordering::Acquire) && !oldest.close.is_cancelled() {
                oldest.close.cancel();
                return;
            }
        }
    }

    fn register(&self, close: CancellationToken) -> Arc<OpenConnection> {
        let connection = Arc::new(OpenConnection { close, done: AtomicBool::new(false) });
        let mut open = self.open();
        open.retain(|connection| !connection.done.load(Ordering::Acquire));
        open.push_back(connection.clone());
        connection
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets every
/// open connection finish its current request and close. Resolves when all
/// connections are closed or `force` is cancelled, whichever comes first.
///
/// A Unix peer is checked against the listener's policy before a single
/// byte is read; a rejected peer is logged, counted and closed, and the loop
/// goes on accepting. Each open connection holds a slot of `connections`.
pub async fn serve(
    listener: Listener,
    router: Router,
    connections: Arc<Connections>,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(connections.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept(&stats) => accepted,
        };
        let (connection, peer) = match accepted {
            Ok(Some(accepted)) => accepted,
            Ok(None) => continue,
            Err(error) => {
                // Out of file descriptors or a similar passing condition:
                // keep the listener, wait a moment, try again.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = connections.admit().await else {
            stats.over_capacity.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?peer, "closed a connection: the connection limit is reached");
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let control = ConnectionControl::default();
        let close_now = control.close_now.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request.extensions_mut().insert(control.clone());
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|never| match never {}))
            }
        });
        let open = connections.register(stop.child_token());
        match connection {
            Connection::Unix(stream) => tracker.spawn(run_connection(
                http.serve_connection(TokioIo::new(stream), service),
                open,
                close_now,
                permit,
            )),
            Connection::Tcp(stream) => tracker.spawn(run_connection(
                http.serve_connection(TokioIo::new(stream), service),
                open,
                close_now,
                permit,
            )),
        };
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = force.cancelled() => tracing::debug!("closing the remaining connections"),
    }
}

/// Drives one connection until it ends, or until it is told to close (by
/// shutdown or by the connection limit: gracefully; by its own request
/// through `ConnectionControl`: at once).
async fn run_connection<I, S, B>(
    connection: hyper::server::conn::http1::Connection<I, S>,
    open: Arc<OpenConnection>,
    close_now: CancellationToken,
    permit: OwnedSemaphorePermit,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = open.close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => Some(result),
                () = close_now.cancelled() => None,
            }
        }
        () = close_now.cancelled() => None,
    };
    if let Some(Err(error)) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
    open.done.store(true, Ordering::Release);
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_admits_listed_uids_and_primary_gids() {
        let policy = PeerPolicy { allow_uids: vec![1000], allow_gids: vec![50] };
        assert!(policy.admits(1000, 1000));
        assert!(policy.admits(1001, 50));
        assert!(!policy.admits(1001, 1001));
        assert!(!policy.admits(0, 0), "root is not admitted unless listed");
    }
}
