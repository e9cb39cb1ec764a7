//! Sessions with unguessable ids, bound to the principal that opened them.
//!
//! [`BoundSessions`] wraps rmcp's `LocalSessionManager`: it creates each
//! session with a 256-bit random id (rmcp's own ids are UUIDv4, 122 random
//! bits) and remembers which principal opened it. The [`guard_sessions`]
//! middleware answers 404 when another principal presents that id, exactly
//! as for an unknown one, and 429 when a principal holds too many sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use mcpsock_transport::Peer;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::WorkerTransport;
use rmcp::transport::streamable_http_server::SessionId;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError, LocalSessionWorker, create_local_session,
};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// Random bytes in a session id (hex-encoded: 64 visible ASCII characters).
const SESSION_ID_BYTES: usize = 32;

/// Who owns a session: a local user on the socket, or the holder of the API
/// key on TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Principal {
    Uid(u32),
    ApiKey,
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

/// rmcp's local session manager with random ids and owners.
#[derive(Debug)]
pub(crate) struct BoundSessions {
    inner: LocalSessionManager,
    owners: Mutex<HashMap<SessionId, Principal>>,
    max_per_principal: usize,
}

impl BoundSessions {
    /// Sessions expire after `idle_ttl` without a request or open stream.
    pub(crate) fn new(max_per_principal: usize, idle_ttl: Duration) -> Self {
        let mut inner = LocalSessionManager::default();
        inner.session_config.keep_alive = Some(idle_ttl);
        Self { inner, owners: Mutex::default(), max_per_principal }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Principal>> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets owners of sessions rmcp has closed (idle expiry, errors).
    async fn forget_closed(&self) {
        let live = self.inner.sessions.read().await;
        self.owners().retain(|id, _| live.contains_key(id));
    }

    /// Sessions open now, of every principal.
    pub(crate) async fn open_count(&self) -> usize {
        self.inner.sessions.read().await.len()
    }

    /// Open sessions of `principal`.
    pub(crate) fn count(&self, principal: Principal) -> usize {
        self.owners().values().filter(|owner| **owner == principal).count()
    }
}

fn random_session_id() -> Result<SessionId, LocalSessionManagerError> {
    let mut bytes = [0u8; SESSION_ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| {
        LocalSessionManagerError::SessionError(
            rmcp::transport::streamable_http_server::session::local::SessionError::Io(std::io::Error::other(
                format!("no randomness for a session id: {error}"),
            )),
        )
    })?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>().into())
}

impl SessionManager for BoundSessions {
    type Error = LocalSessionManagerError;
    type Transport = WorkerTransport<LocalSessionWorker>;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let id = random_session_id()?;
        let (handle, worker) = create_local_session(id.clone(), self.inner.session_config.clone());
        self.inner.sessions.write().await.insert(id.clone(), handle);
        Ok((id, WorkerTransport::spawn(worker)))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.owners().remove(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<
        impl futures::Stream<Item = rmcp::transport::common::server_side_http::ServerSseMessage>
        + Send
        + Sync
        + 'static,
        Self::Error,
    > {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<
        impl futures::Stream<Item = rmcp::transport::common::server_side_http::ServerSseMessage>
        + Send
        + Sync
        + 'static,
        Self::Error,
    > {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<
        impl futures::Stream<Item = rmcp::transport::common::server_side_http::ServerSseMessage>
        + Send
        + Sync
        + 'static,
        Self::Error,
    > {
        self.inner.resume(id, last_event_id).await
    }
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

/// Enforces session ownership and the per-principal session limit on `/mcp`.
pub(crate) async fn guard_sessions(
    State(sessions): State<Arc<BoundSessions>>,
    request: Request,
    next: Next,
) -> Response {
    for header in [SESSION_HEADER, VERSION_HEADER] {
        if request.headers().get_all(header).iter().count() > 1 {
            return refuse(StatusCode::BAD_REQUEST, &format!("the {header} header must appear at most once"));
        }
    }
    let Some(principal) = Principal::of(request.extensions().get::<Peer>()) else {
        return refuse(StatusCode::FORBIDDEN, "unknown connection");
    };
    let presented: Option<SessionId> =
        request.headers().get(SESSION_HEADER).and_then(|value| value.to_str().ok()).map(Into::into);
    if let Some(id) = &presented {
        let owner = sessions.owners().get(id).copied();
        if owner.is_some_and(|owner| owner != principal) {
            // The same answer as for an id that does not exist: nothing
            // tells another principal that the session is real.
            return refuse(StatusCode::NOT_FOUND, "session not found");
        }
    }
    let opening = may_open_session(&request);
    if opening && sessions.count(principal) >= sessions.max_per_principal {
        sessions.forget_closed().await;
        if sessions.count(principal) >= sessions.max_per_principal {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many open sessions for this user; close some (DELETE) or raise max_sessions_per_principal",
            );
        }
    }
    let method = request.method().clone();
    let response = next.run(request).await;
    if opening
        && response.status().is_success()
        && let Some(id) = response.headers().get(SESSION_HEADER).and_then(|value| value.to_str().ok())
    {
        sessions.owners().insert(id.into(), principal);
    }
    if method == Method::DELETE
        && response.status().is_success()
        && let Some(id) = presented
    {
        sessions.owners().remove(&id);
    }
    response
}
