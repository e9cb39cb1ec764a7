//! Accepting connections, checking who is on the other end, and serving
//! the router on them.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Who is on the other end of a connection. Every request carries one in
/// its extensions; authorization reads this and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A local process on the Unix socket, as the kernel reports it.
    Unix { uid: u32, gid: u32, pid: Option<i32> },
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
}

impl ListenerStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stop` is cancelled, then lets every
/// open connection finish its current request and close. Resolves when all
/// connections are closed or `force` is cancelled, whichever comes first.
///
/// Each connection's peer is checked against `policy` before a single byte
/// is read; a rejected peer is logged, counted and closed, and the loop goes
/// on accepting.
pub async fn serve_unix(
    listener: UnixListener,
    policy: PeerPolicy,
    router: Router,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors or a similar passing condition:
                    // keep the listener, wait a moment, try again.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer::Unix { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() },
            Err(error) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "rejected a connection whose credentials could not be read");
                continue;
            }
        };
        let Peer::Unix { uid, gid, pid } = peer;
        if !policy.admits(uid, gid) {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                uid,
                gid,
                pid = pid.unwrap_or(-1),
                "rejected a connection from a user that is not allowed"
            );
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = force.cancelled() => tracing::debug!("closing the remaining connections"),
    }
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
