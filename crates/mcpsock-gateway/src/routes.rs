//! Which downstream request caused what an upstream sends.
//!
//! One upstream connection serves every downstream session, so whatever it
//! sends in the middle of a request (progress, log messages, and requests of
//! its own such as elicitation or sampling) must find its way back to the
//! downstream request that caused it. Each forwarded request registers a
//! [`Route`] under the upstream request id and the progress token rmcp gave
//! it; the upstream client looks them up and hands the message to the
//! downstream request's task through its relay channel. That task sends it on
//! the downstream peer, where rmcp puts it on the originating request's
//! stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{ClientResult, ProgressToken, RequestId, ServerNotification, ServerRequest};
use tokio::sync::{mpsc, oneshot};

/// Messages a downstream request's task is asked to deliver to its client.
#[derive(Debug)]
pub(crate) enum Relay {
    Notification(ServerNotification),
    Request { request: ServerRequest, reply: oneshot::Sender<Result<ClientResult, ErrorData>> },
}

/// How many relayed messages may wait for the downstream task; an upstream
/// that floods progress faster than the client reads loses the excess
/// (progress is advisory) rather than growing memory.
pub(crate) const RELAY_BUFFER: usize = 256;

/// One downstream request in flight on an upstream.
#[derive(Debug)]
pub(crate) struct Route {
    /// The downstream session that sent it.
    pub(crate) session: u64,
    /// The client's own progress token, when it asked for progress.
    pub(crate) progress_token: Option<ProgressToken>,
    /// Boxed: a channel allocates room for a block of messages up front,
    /// and most requests never relay anything.
    pub(crate) relay: mpsc::Sender<Box<Relay>>,
}

/// Keyed by the ids and progress tokens rmcp gives requests it sends
/// upstream, which no client chooses: hashed fast.
#[derive(Debug, Default)]
struct Table {
    by_request: HashMap<RequestId, Arc<Route>, foldhash::fast::RandomState>,
    by_progress: HashMap<ProgressToken, RequestId, foldhash::fast::RandomState>,
    /// Registration order, to prefer the newest request when several of one
    /// session are in flight.
    order: Vec<RequestId>,
}

/// How long a message from the upstream waits for routes still being
/// registered (see [`Routes::settle`]). Registration follows the send at
/// once; the bound only keeps a steady stream of new requests from holding
/// a message back for ever.
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// The routes of one upstream.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    table: Mutex<Table>,
    /// Requests sent (or being sent) upstream whose routes are not
    /// registered yet: a route is keyed by the request's upstream id, which
    /// rmcp gives it as it sends it, so a fast upstream can answer with a
    /// question or progress before the route exists.
    announced: AtomicUsize,
    settled: tokio::sync::Notify,
}

/// A request on its way upstream whose route is not registered yet:
/// [`Announced::register`] registers it; dropped unregistered (the send
/// failed), it stops holding messages back.
#[derive(Debug)]
pub(crate) struct Announced {
    routes: Arc<Routes>,
}

impl Announced {
    /// Registers the announced request's route, under the id and progress
    /// token rmcp gave it as it sent it.
    pub(crate) fn register(
        self,
        id: RequestId,
        upstream_progress_token: ProgressToken,
        route: Route,
    ) -> RouteGuard {
        self.routes.register(id, upstream_progress_token, route)
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if self.routes.announced.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.routes.settled.notify_waiters();
        }
    }
}

/// Removes its route when the downstream request ends, however it ends.
#[derive(Debug)]
pub(crate) struct RouteGuard {
    routes: Arc<Routes>,
    id: RequestId,
    progress_token: ProgressToken,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut table = lock(&self.routes.table);
        table.by_request.remove(&self.id);
        table.by_progress.remove(&self.progress_token);
        table.order.retain(|id| *id != self.id);
    }
}

/// Where an upstream message without an explicit association goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// Exactly one downstream request (or only requests of one session).
    Route(Arc<Route>),
    /// Requests of several sessions are in flight: the message could belong
    /// to any of them.
    Ambiguous(Vec<u64>),
    /// Nothing is in flight.
    Idle,
}

impl Routes {
    /// Marks a request as on its way upstream, before it is sent.
    pub(crate) fn announce(self: &Arc<Self>) -> Announced {
        self.announced.fetch_add(1, Ordering::AcqRel);
        Announced { routes: self.clone() }
    }

    /// Waits until no announced request is still without its route (at
    /// most [`SETTLE_AT_MOST`]).
    async fn settle(&self) {
        if self.announced.load(Ordering::Acquire) == 0 {
            return;
        }
        let settled = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.announced.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(SETTLE_AT_MOST, settled).await;
    }

    /// `lookup`, once more after routes still being registered are, when
    /// it finds none at first.
    async fn settled(&self, lookup: impl Fn(&Self) -> Option<Arc<Route>>) -> Option<Arc<Route>> {
        if let Some(route) = lookup(self) {
            return Some(route);
        }
        self.settle().await;
        lookup(self)
    }

    /// [`Routes::by_request`], waiting for routes still being registered
    /// when there is none yet.
    pub(crate) async fn by_request_settled(&self, id: &RequestId) -> Option<Arc<Route>> {
        self.settled(|routes| routes.by_request(id)).await
    }

    /// [`Routes::by_progress`], waiting for routes still being registered
    /// when there is none yet.
    pub(crate) async fn by_progress_settled(&self, token: &ProgressToken) -> Option<Arc<Route>> {
        self.settled(|routes| routes.by_progress(token)).await
    }

    /// [`Routes::unassociated`] once every request already sent has its
    /// route: a request still being registered could be the one the message
    /// belongs to, or make the choice ambiguous.
    pub(crate) async fn unassociated_settled(&self) -> Target {
        self.settle().await;
        self.unassociated()
    }

    fn register(
        self: &Arc<Self>,
        id: RequestId,
        upstream_progress_token: ProgressToken,
        route: Route,
    ) -> RouteGuard {
        let mut table = lock(&self.table);
        table.by_request.insert(id.clone(), Arc::new(route));
        table.by_progress.insert(upstream_progress_token.clone(), id.clone());
        table.order.push(id.clone());
        RouteGuard { routes: self.clone(), id, progress_token: upstream_progress_token }
    }

    pub(crate) fn by_request(&self, id: &RequestId) -> Option<Arc<Route>> {
        lock(&self.table).by_request.get(id).cloned()
    }

    pub(crate) fn by_progress(&self, token: &ProgressToken) -> Option<Arc<Route>> {
        let table = lock(&self.table);
        table.by_progress.get(token).and_then(|id| table.by_request.get(id)).cloned()
    }

    /// The request an unassociated upstream message most plausibly belongs
    /// to: the newest in-flight request, provided every in-flight request
    /// comes from the same session. Over stdio nothing on the wire says which
    /// request a server-initiated message belongs to, so mixing sessions
    /// would risk showing one client's elicitation to another.
    pub(crate) fn unassociated(&self) -> Target {
        let table = lock(&self.table);
        let Some(newest) = table.order.last().and_then(|id| table.by_request.get(id)) else {
            return Target::Idle;
        };
        let mut sessions: Vec<u64> = table.by_request.values().map(|route| route.session).collect();
        sessions.sort_unstable();
        sessions.dedup();
        if sessions.len() == 1 { Target::Route(newest.clone()) } else { Target::Ambiguous(sessions) }
    }

    /// Number of downstream requests in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).by_request.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;

    fn route(session: u64) -> (Route, mpsc::Receiver<Box<Relay>>) {
        let (relay, receiver) = mpsc::channel(1);
        (Route { session, progress_token: None, relay }, receiver)
    }

    fn token(n: i64) -> ProgressToken {
        ProgressToken(NumberOrString::Number(n))
    }

    /// A fast upstream can send a question (or progress) for a request
    /// before the gateway has registered that request's route.
    #[tokio::test]
    async fn a_message_ahead_of_its_route_waits_for_it() {
        let routes = Arc::new(Routes::default());
        let announced = routes.announce();
        let lookup = tokio::spawn({
            let routes = routes.clone();
            async move { routes.unassociated_settled().await }
        });
        let progress = tokio::spawn({
            let routes = routes.clone();
            async move { routes.by_progress_settled(&token(7)).await.map(|route| route.session) }
        });
        tokio::task::yield_now().await;
        assert!(
            !lookup.is_finished() && !progress.is_finished(),
            "nothing is routed while a route is pending"
        );
        let (pending, _relay) = route(3);
        let _guard = announced.register(RequestId::Number(7), token(7), pending);
        assert!(matches!(lookup.await.unwrap(), Target::Route(route) if route.session == 3));
        assert_eq!(progress.await.unwrap(), Some(3));
    }

    #[test]
    fn unassociated_messages_go_only_where_they_cannot_leak() {
        let routes = Arc::new(Routes::default());
        assert!(matches!(routes.unassociated(), Target::Idle));
        let (first, _a) = route(1);
        let first = routes.register(RequestId::Number(1), token(1), first);
        let (second, _b) = route(1);
        let second = routes.register(RequestId::Number(2), token(2), second);
        assert!(matches!(routes.unassociated(), Target::Route(route) if route.session == 1));
        assert_eq!(routes.by_progress(&token(2)).unwrap().session, 1);
        let (other, _c) = route(2);
        let other = routes.register(RequestId::Number(3), token(3), other);
        assert!(matches!(routes.unassociated(), Target::Ambiguous(sessions) if sessions == [1, 2]));
        drop((first, second));
        assert!(matches!(routes.unassociated(), Target::Route(route) if route.session == 2));
        drop(other);
        assert_eq!(routes.len(), 0);
        assert!(routes.by_progress(&token(3)).is_none());
    }
}
