//! Sessions with unguessable ids, bound to the principal that opened them.
//!
//! [`BoundSessions`] is the session manager rmcp's HTTP service runs on,
//! over the sessions of this process (`live`): it creates each session
//! with a 256-bit random id (rmcp's own ids are UUIDv4, 122 random bits)
//! and remembers which principal opened it. The [`guard_sessions`]
//! middleware answers 404 when another principal presents that id, exactly
//! as for an unknown one, and 429 when a principal holds too many sessions.
//!
//! Sessions and their events live in the store (see `persist`): the
//! session layer stores each event before sending it, `create_stream`
//! records which request a stream answers, `resume` replays from the store
//! (only the presenting session's own streams), and a session the store
//! knows but this process does not is restored by rmcp from its recorded
//! `initialize`, once the guard has checked its owner.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderName, Method, StatusCode};
use mcpsock_store::{Store, StoreError, StoredEvent, is_event_id};
use mcpsock_transport::Peer;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions, ServerJsonRpcMessage};
use rmcp::transport::common::server_side_http::ServerSseMessage;
use rmcp::transport::streamable_http_server::SessionId;
use rmcp::transport::streamable_http_server::session::{
    EventStream, RestoreOutcome, SessionManager, SessionRestoreMarker,
};

use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::live::{IdMap, IdSet, LiveError, LiveSessions, RequestEvents, SessionTransport};
use crate::persist::REQUEST_PRINCIPAL;
use mcpsock_api::EventBody;

// Header names, not strings: a lookup by string parses the name each time.
pub(crate) const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
pub(crate) const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// Random bytes in a session id (hex-encoded: 64 visible ASCII characters).
const SESSION_ID_BYTES: usize = 32;

/// Who owns a session: a local user on the socket, or the holder of the API
/// key on TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Principal {
    Uid(u32),
    ApiKey,
}

impl fmt::Display for Principal {
    /// The owner as the store records it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "uid:{uid}"),
            Self::ApiKey => f.write_str("api-key"),
        }
    }
}

impl Principal {
    pub(crate) fn of(peer: Option<&Peer>) -> Option<Self> {
        match peer? {
            Peer::Unix { uid, .. } => Some(Self::Uid(*uid)),
            Peer::Tcp { .. } => Some(Self::ApiKey),
            _ => None,
        }
    }
}

/// Whose a presented session id is.
enum Holder {
    /// Unknown or expired: rmcp answers 404.
    Nobody,
    /// Another principal's.
    Other,
    /// The presenter's own; `restoring` when only the store knows it yet.
    Presenter { restoring: bool },
}

/// This process's sessions with random ids, owners and the store.
#[derive(Debug)]
pub(crate) struct BoundSessions {
    inner: LiveSessions,
    store: Arc<dyn Store>,
    /// Cancelled when the daemon stops: sessions that close then are kept
    /// in the store for the next process.
    stopping: CancellationToken,
    /// Where `session.closed` is announced.
    events: Arc<EventBus>,
    /// Sessions being closed: out of memory, their rows not yet deleted.
    closing: Mutex<IdSet>,
    owners: Mutex<IdMap<Principal>>,
    max_per_principal: usize,
}

impl BoundSessions {
    /// Sessions expire after `idle_ttl` without a request or open stream.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        stopping: CancellationToken,
        events: Arc<EventBus>,
        max_per_principal: usize,
        idle_ttl: Duration,
    ) -> Self {
        Self {
            inner: LiveSessions::new(store.clone(), idle_ttl),
            store,
            stopping,
            events,
            closing: Mutex::default(),
            owners: Mutex::default(),
            max_per_principal,
        }
    }

    fn closing(&self) -> std::sync::MutexGuard<'_, IdSet> {
        self.closing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Whose session `id` is, as `principal` presents it: known here, or
    /// recorded in the store by an earlier process (then rmcp restores it).
    async fn holder(&self, id: &SessionId, principal: Principal) -> Result<Holder, StoreError> {
        if let Some(owner) = self.owners().get(id) {
            return Ok(if *owner == principal {
                Holder::Presenter { restoring: false }
            } else {
                Holder::Other
            });
        }
        Ok(match self.store.load_session(id).await? {
            Some(record) if record.owner == principal.to_string() => Holder::Presenter { restoring: true },
            Some(_) => Holder::Other,
            None => Holder::Nobody,
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, IdMap<Principal>> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets owners of sessions that have closed (idle expiry, errors).
    fn forget_closed(&self) {
        self.owners().retain(|id, _| self.inner.contains(id));
    }

    /// Whether the session is open in this process (not only in the store).
    pub(crate) fn is_open(&self, id: &SessionId) -> bool {
        self.inner.contains(id)
    }

    /// Serves session `id`'s requests by calling `handler` directly (see
    /// `live`).
    pub(crate) fn serve_directly(
        &self,
        id: &SessionId,
        handler: Box<dyn crate::live::Handler>,
        peer: rmcp::service::Peer<rmcp::RoleServer>,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        self.inner.serve_directly(id, handler, peer, stop);
    }

    /// Sessions open now, of every principal.
    pub(crate) fn open_count(&self) -> usize {
        self.inner.len()
    }

    /// Closes every session open here, as the daemon stops: their service
    /// loops and handlers end, and (the stop being under way) their records stay
    /// in the store for the next start.
    pub(crate) async fn close_all(&self) {
        debug_assert!(self.stopping.is_cancelled());
        for id in self.inner.ids() {
            if let Err(error) = self.close_session(&id).await {
                tracing::debug!(%error, "a session had already ended");
            }
        }
    }

    /// Open sessions of `principal`.
    pub(crate) fn count(&self, principal: Principal) -> usize {
        self.owners().values().filter(|owner| **owner == principal).count()
    }
}

fn random_session_id() -> Result<SessionId, LiveError> {
    let mut bytes = [0u8; SESSION_ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| LiveError::Random(error.to_string()))?;
    let mut id = String::with_capacity(2 * SESSION_ID_BYTES);
    mcpsock_store::push_hex(&mut id, &bytes);
    Ok(id.into())
}

impl SessionManager for BoundSessions {
    type Error = LiveError;
    type Transport = SessionTransport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let id = random_session_id()?;
        let transport = self.inner.open(id.clone()).ok_or(LiveError::Collision)?;
        Ok((id, transport))
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        if self.closing().contains(&id) {
            // Closed a moment ago; its row is on its way out.
            return Ok(RestoreOutcome::NotSupported);
        }
        Ok(match self.inner.open(id) {
            Some(transport) => RestoreOutcome::Restored(transport),
            None => RestoreOutcome::AlreadyPresent,
        })
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.contains(id))
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.owners().remove(id);
        // A session closes on DELETE, on idle expiry or when its service loop
        // fails, and when the daemon stops. Only in the last case may it
        // live on in the store. It leaves memory first, so no request finds
        // a session whose service loop is gone; until its row is deleted too, it
        // must not be restored from that row.
        let stopping = self.stopping.is_cancelled();
        if !stopping {
            self.closing().insert(id.clone());
        }
        // rmcp closes a deleted session twice (the DELETE, then its ending
        // service loop): announce it once.
        let was_open = self.inner.close(id);
        if !stopping {
            if let Err(error) = self.store.delete_session(id).await {
                tracing::warn!(%error, "a closed session stays in the store until its expiry");
            }
            self.closing().remove(id);
            if was_open {
                self.events.publish(EventBody::SessionClosed { sessions: self.open_count() });
            }
        }
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.create_stream_inner(id, message).await;
        self.check_alive(id, stream).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        let accepted = self.accept_message_inner(id, message).await;
        self.check_alive(id, accepted).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.standalone(id);
        self.check_alive(id, stream).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.resume_inner(id, last_event_id).await;
        self.check_alive(id, stream).await
    }
}

impl BoundSessions {
    /// Closes a session whose service loop turned out to be gone. A session
    /// ends when it expires, a moment before rmcp's service closes it; a
    /// request in between finds the session but not its service loop.
    /// Closing it here (as rmcp is about to) makes the session unknown at
    /// once, so `guard_sessions` answers that request 404, like any later
    /// one, rather than rmcp's 500.
    async fn check_alive<T>(&self, id: &SessionId, result: Result<T, LiveError>) -> Result<T, LiveError> {
        if let Err(LiveError::NotFound | LiveError::Ended) = &result
            && let Err(error) = self.close_session(id).await
        {
            tracing::debug!(%error, "a session whose service loop ended is closed");
        }
        result
    }

    async fn create_stream_inner(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<RequestEvents, LiveError> {
        if let ClientJsonRpcMessage::Request(request) = &message
            && let Some((key, value)) = session_setting(&request.request)
            && let Err(error) = self.store.put_state(id, &key, value).await
        {
            tracing::warn!(%error, "a session setting was not recorded; a restart will forget it");
        }
        // The stream's first event is held back until the record of which
        // session and request the stream answers is committed (see
        // `RequestEvents`), so a resume after a crash finds it.
        self.inner.request(id, message).await
    }

    async fn accept_message_inner(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), LiveError> {
        // rmcp restores a session by replaying its `initialize`; the
        // `initialized` that ends the replay is marked.
        let restored = matches!(
            &message,
            ClientJsonRpcMessage::Notification(notification)
                if notification.notification.extensions().get::<SessionRestoreMarker>().is_some()
        );
        self.inner.accept(id, message).await?;
        if restored {
            self.replay_settings(id).await;
        }
        Ok(())
    }

    async fn resume_inner(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, LiveError> {
        let stream: EventStream = if last_event_id == STANDALONE_PRIMING_ID {
            // The only id a standalone stream's client may hold before any
            // event: nothing to replay, carry on live.
            Box::pin(self.inner.standalone(id)?)
        } else if !is_event_id(&last_event_id) {
            tracing::debug!("resume with an id this daemon never issued");
            Box::pin(futures::stream::empty())
        } else {
            match self.store.replay_after(id, &last_event_id).await? {
                None => {
                    tracing::debug!("resume with an unknown event or another session's event");
                    Box::pin(futures::stream::empty())
                }
                Some(replay) if replay.standalone => {
                    // Live events may also be in the replay; each is sent once.
                    let replayed: HashSet<String> =
                        replay.events.iter().map(|event| event.id.clone()).collect();
                    let live = self.inner.standalone(id)?.filter(move |event| {
                        futures::future::ready(
                            event.event_id.as_ref().is_none_or(|id| !replayed.contains(id)),
                        )
                    });
                    Box::pin(futures::stream::iter(replay.events.into_iter().filter_map(to_sse)).chain(live))
                }
                // A request stream replays what is stored and ends; a client
                // whose request is still running reconnects after the retry
                // interval and reads on from its new last id.
                Some(replay) => Box::pin(futures::stream::iter(replay.events.into_iter().filter_map(to_sse))),
            }
        };
        Ok(stream)
    }
}

/// A request that changes what a session receives from now on, as the
/// store keeps it: (key, the request as JSON). Replaying these after a
/// restore gives the session back its log level and resource subscriptions,
/// whatever the handler does with them. An unsubscribe empties its
/// subscribe's entry.
fn session_setting(request: &ClientRequest) -> Option<(String, Vec<u8>)> {
    let key = match request {
        ClientRequest::SetLevelRequest(_) => "logging/setLevel".to_string(),
        ClientRequest::SubscribeRequest(subscribe) => format!("resources/subscribe {}", subscribe.params.uri),
        ClientRequest::UnsubscribeRequest(unsubscribe) => {
            return Some((format!("resources/subscribe {}", unsubscribe.params.uri), Vec::new()));
        }
        _ => return None,
    };
    Some((key, serde_json::to_vec(request).ok()?))
}

/// How long one replayed setting may take.
const SETTING_REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

impl BoundSessions {
    /// Sends a restored session's recorded settings to its new handler, in
    /// key order, and waits for each answer (bounded).
    async fn replay_settings(&self, id: &SessionId) {
        let settings = match self.store.load_state(id).await {
            Ok(settings) => settings,
            Err(error) => {
                tracing::warn!(%error, "a restored session's settings could not be read");
                return;
            }
        };
        for (index, (key, request)) in
            settings.into_iter().filter(|(_, request)| !request.is_empty()).enumerate()
        {
            let Ok(serde_json::Value::Object(mut message)) =
                serde_json::from_slice::<serde_json::Value>(&request)
            else {
                continue;
            };
            message.insert("jsonrpc".into(), "2.0".into());
            message.insert("id".into(), format!("mcpsock-restore-{index}").into());
            let Ok(message) = serde_json::from_value::<ClientJsonRpcMessage>(message.into()) else {
                tracing::warn!(setting = key, "a recorded session setting is unreadable and was skipped");
                continue;
            };
            let replayed = async {
                let stream = self.inner.request(id, message).await?;
                stream.for_each(|_| futures::future::ready(())).await;
                Ok::<_, LiveError>(())
            };
            match tokio::time::timeout(SETTING_REPLAY_TIMEOUT, replayed).await {
                Ok(Ok(())) => tracing::debug!(setting = key, "session setting restored"),
                Ok(Err(error)) => tracing::warn!(setting = key, %error, "a session setting was not restored"),
                Err(_) => tracing::warn!(setting = key, "a session setting took too long to restore"),
            }
        }
    }
}

/// The id rmcp's HTTP service gives the priming event of a standalone
/// stream.
const STANDALONE_PRIMING_ID: &str = "0";

fn to_sse(event: StoredEvent) -> Option<ServerSseMessage> {
    let message = match event.message {
        Some(bytes) => match serde_json::from_slice::<ServerJsonRpcMessage>(&bytes) {
            Ok(message) => Some(Arc::new(message)),
            Err(error) => {
                tracing::warn!(%error, "a stored event is unreadable and is skipped");
                return None;
            }
        },
        None => None,
    };
    // The struct is non-exhaustive: start from a constructor, set every field.
    let mut sse = ServerSseMessage::retry(Duration::ZERO);
    sse.event_id = Some(event.id);
    sse.message = message;
    sse.retry = event.retry_ms.map(Duration::from_millis);
    Some(sse)
}

/// rmcp's answer for an unknown or ended session, byte for byte: an id
/// another principal holds gets exactly this too.
fn session_not_found() -> Response {
    let mut response = Response::new(axum::body::Body::from("Not Found: Session not found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// Whether a request may open a session: a POST without a session id that
/// does not declare the stateless 2026-07-28 era.
fn may_open_session(request: &Request) -> bool {
    request.method() == Method::POST
        && !request.headers().contains_key(SESSION_HEADER)
        && request
            .headers()
            .get(VERSION_HEADER)
            .and_then(|value| value.to_str().ok())
            .is_none_or(|version| version < "2026-07-28")
}

/// Enforces session ownership and the per-principal session limit on `/mcp`,
/// around `serve`, which answers the request.
pub(crate) async fn guard_sessions<F>(
    sessions: &BoundSessions,
    request: Request,
    serve: impl FnOnce(Request) -> F,
) -> Response
where
    F: Future<Output = Response>,
{
    for header in [SESSION_HEADER, VERSION_HEADER] {
        if request.headers().get_all(&header).iter().count() > 1 {
            return refuse(StatusCode::BAD_REQUEST, &format!("the {header} header must appear at most once"));
        }
    }
    let Some(principal) = Principal::of(request.extensions().get::<Peer>()) else {
        return refuse(StatusCode::FORBIDDEN, "unknown connection");
    };
    let presented: Option<SessionId> =
        request.headers().get(SESSION_HEADER).and_then(|value| value.to_str().ok()).map(Into::into);
    let mut restoring = false;
    if let Some(id) = &presented {
        match sessions.holder(id, principal).await {
            // The same answer as for an id that does not exist: nothing
            // tells another principal that the session is real.
            Ok(Holder::Other) => return session_not_found(),
            Ok(Holder::Presenter { restoring: from_store }) => restoring = from_store,
            Ok(Holder::Nobody) => {}
            Err(error) => {
                tracing::error!(%error, "the state database cannot be read");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session state unavailable; see the daemon's log",
                );
            }
        }
        sessions.store.touch_session(id);
    }
    let opening = may_open_session(&request);
    if opening && sessions.count(principal) >= sessions.max_per_principal {
        sessions.forget_closed();
        if sessions.count(principal) >= sessions.max_per_principal {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many open sessions for this user; close some (DELETE) or raise max_sessions_per_principal",
            );
        }
    }
    let method = request.method().clone();
    let response = REQUEST_PRINCIPAL.scope(principal, serve(request)).await;
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR
        && let Some(id) = &presented
        && !sessions.inner.contains(id)
    {
        // The session ended while this request was on its way (see
        // `BoundSessions::check_alive`).
        return session_not_found();
    }
    if opening
        && response.status().is_success()
        && let Some(id) = response.headers().get(SESSION_HEADER).and_then(|value| value.to_str().ok())
    {
        sessions.owners().insert(id.into(), principal);
    }
    if restoring
        && response.status().is_success()
        && let Some(id) = &presented
    {
        sessions.owners().insert(id.clone(), principal);
    }
    if method == Method::DELETE
        && response.status().is_success()
        && let Some(id) = presented
    {
        sessions.owners().remove(&id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpsock_store::MemoryStore;
    use rmcp::model::{ClientNotification, InitializedNotification};

    #[tokio::test]
    async fn a_session_whose_service_loop_ended_is_closed_at_its_next_message() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let events = Arc::new(EventBus::new(16));
        let sessions =
            BoundSessions::new(store, CancellationToken::new(), events, 10, Duration::from_secs(60));
        let (id, transport) = sessions.create_session().await.unwrap();
        // Nothing serves the session: dropping its transport is what a
        // service loop that quits does, and rmcp's own cleanup (which would
        // close the session) never runs, so the session stays known
        // without a service loop.
        drop(transport);
        assert!(sessions.has_session(&id).await.unwrap());
        let initialized = || {
            ClientJsonRpcMessage::notification(ClientNotification::InitializedNotification(
                InitializedNotification::default(),
            ))
        };
        assert!(matches!(sessions.accept_message(&id, initialized()).await, Err(LiveError::Ended)));
        assert!(
            !sessions.has_session(&id).await.unwrap(),
            "the session is closed, so the next request gets 404"
        );
    }

    #[test]
    fn another_principals_session_is_answered_as_an_unknown_one() {
        let response = session_not_found();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().is_empty(), "rmcp's answer has no headers of its own");
    }
}
