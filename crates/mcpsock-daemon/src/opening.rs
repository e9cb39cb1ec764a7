//! `initialize` without a session, answered without rmcp's HTTP layer.
//!
//! rmcp's service opens a session by spawning a task that runs the
//! handshake and then waits, for the session's whole life, for its service
//! loop to end. That task's state is sized for the handshake: 7.4 KB held
//! by every idle session (valgrind's DHAT over 1,000 idle sessions of
//! `bench-rmcp-echo --mcpsock`). Here the handshake runs in a task that
//! ends with it, and a task of 640 bytes waits for the loop.
//!
//! [`crate::tool_call::take`] makes the checks on the method and headers;
//! an `initialize` is taken only when rmcp would open a session for it with
//! no further question (a protocol-version header, when there is one, must
//! name the version the body asks for). The body is parsed by rmcp's own
//! message parser (an `initialize` is rare; speed does not matter here).
//! The rest is what rmcp's service does: a fresh handler from the factory,
//! `BoundSessions::create_session`, the handshake, the session's record in
//! the store, and the same event stream back (a priming event, then the
//! answer), with the session's id in its header. Once the handshake is
//! done, a session whose client takes no server requests is served by
//! calling its handler directly (see `live`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::request::Parts;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions, InitializeRequestParams};
use rmcp::service::{Peer, RequestContext, Service, serve_server_with_ct};
use rmcp::transport::streamable_http_server::SessionId;
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionManager, SessionState, SessionStore,
};
use rmcp::{RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

use crate::live::{self, Finish, PRIMING_RETRY, SessionTransport};
use crate::persist::SessionStoreAdapter;
use crate::sessions::{BoundSessions, SESSION_HEADER, VERSION_HEADER};
use crate::tool_call::internal_error;

/// The id of the priming event of a handshake's reply (rmcp's).
const PRIMING_ID: &str = "0";

/// An `initialize` this module answers.
pub(crate) struct Opening {
    message: ClientJsonRpcMessage,
    params: InitializeRequestParams,
}

impl Opening {
    /// The body as the `initialize` request rmcp would open a session for,
    /// with `parts` (the HTTP request it came in, which its handler may
    /// read); `parts` back for anything else, or when a protocol-version
    /// header names another version than the body (rmcp refuses that).
    // The request's parts go back whole, as `tool_call::take` gives them to
    // rmcp; an `initialize` is rare.
    #[allow(clippy::result_large_err)]
    pub(crate) fn parse(body: &[u8], parts: Parts) -> Result<Self, Parts> {
        let Ok(mut message) = serde_json::from_slice::<ClientJsonRpcMessage>(body) else { return Err(parts) };
        let ClientJsonRpcMessage::Request(request) = &mut message else { return Err(parts) };
        let ClientRequest::InitializeRequest(initialize) = &request.request else { return Err(parts) };
        let version = initialize.params.protocol_version.as_str().as_bytes();
        if parts.headers.get(VERSION_HEADER).is_some_and(|header| header.as_bytes() != version) {
            return Err(parts);
        }
        let params = initialize.params.clone();
        request.request.extensions_mut().insert(parts);
        Ok(Self { message, params })
    }

    /// Opens the session and answers the handshake as rmcp's service does.
    /// `streams` is the token that stops the daemon's event streams (and,
    /// through a child, its sessions' service loops).
    pub(crate) async fn answer<S: ServerHandler + Send + 'static>(
        self,
        handler: S,
        sessions: &Arc<BoundSessions>,
        keep_alive: Option<Duration>,
        streams: &CancellationToken,
    ) -> Response {
        let (id, transport) = match sessions.create_session().await {
            Ok(opened) => opened,
            Err(error) => return internal_error("create session", error),
        };
        serve(sessions.clone(), id.clone(), handler, transport, streams.child_token());
        let answer = match sessions.initialize_session(&id, self.message).await {
            Ok(answer) => answer,
            Err(error) => return internal_error("create stream", error),
        };
        let state = SessionState::new(self.params);
        if let Err(error) = SessionStoreAdapter(sessions.store()).store(&id, &state).await {
            tracing::warn!("Failed to persist session {id} to store: {error}");
        }
        let events =
            [ServerSseMessage::priming(PRIMING_ID, PRIMING_RETRY), ServerSseMessage::from_message(answer)];
        let mut response =
            crate::sse::reply(futures::stream::iter(events), keep_alive, streams.child_token());
        match http::HeaderValue::from_str(&id) {
            Ok(value) => {
                response.headers_mut().insert(SESSION_HEADER, value);
                response
            }
            Err(error) => internal_error("create session id header", error),
        }
    }
}

/// Runs the session's handshake and then its service loop. The handshake's
/// task ends when the client's `initialized` arrives; a small task then
/// waits for the loop to end and closes the session, as rmcp's worker does.
/// The service loop and the direct calls share one handler.
fn serve<S: ServerHandler + Send + 'static>(
    sessions: Arc<BoundSessions>,
    id: SessionId,
    handler: S,
    mut transport: SessionTransport,
    stop: CancellationToken,
) {
    let handler = Arc::new(handler);
    let handover = transport.hold_after_handshake();
    tokio::spawn(async move {
        match serve_server_with_ct(handler.clone(), transport, stop.clone()).await {
            Ok(running) => {
                if takes_no_server_requests(running.peer()) {
                    sessions.serve_directly(&id, Box::new(Shared(handler)), running.peer().clone(), &stop);
                }
                drop(handover);
                tokio::spawn(async move {
                    let _ = running.waiting().await;
                    close(&sessions, &id).await;
                });
            }
            Err(error) => {
                tracing::error!("Failed to serve session: {error}");
                close(&sessions, &id).await;
            }
        }
    });
}

/// Whether the client declared none of the capabilities a server request
/// needs (sampling, elicitation, roots). Only then may a request's handler
/// be called directly: a server request it made would not be tied to the
/// request it serves (see `live`).
fn takes_no_server_requests(peer: &Peer<RoleServer>) -> bool {
    peer.peer_info().is_some_and(|info| {
        let capabilities = &info.capabilities;
        capabilities.sampling.is_none() && capabilities.elicitation.is_none() && capabilities.roots.is_none()
    })
}

/// A handler the service loop shares with the direct calls.
struct Shared<S>(Arc<S>);

impl<S: ServerHandler> live::Handler for Shared<S> {
    fn call(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
        finish: Finish,
    ) -> BoxFuture<'static, Option<ServerSseMessage>> {
        let handler = self.0.clone();
        Box::pin(async move {
            let id = context.id.clone();
            // Awaited here, not inside `answer`, so the handler's future is
            // moved into this one's state once instead of twice.
            let handled = AssertUnwindSafe(handler.handle_request(request, context)).catch_unwind().await;
            finish.answer(id, handled).await
        })
    }
}

async fn close(sessions: &BoundSessions, id: &SessionId) {
    if let Err(error) = sessions.close_session(id).await {
        tracing::error!("Failed to close session {id}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderMap;

    use http::HeaderValue;
    use serde_json::json;

    fn initialize(version: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .unwrap()
    }

    /// The parts of a request with these headers.
    fn parts(headers: HeaderMap) -> Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.headers = headers;
        parts
    }

    fn version_header(version: &'static str) -> Parts {
        let mut headers = HeaderMap::new();
        headers.insert(VERSION_HEADER, HeaderValue::from_static(version));
        parts(headers)
    }

    #[test]
    fn an_initialize_is_taken_unless_its_version_header_disagrees() {
        let body = initialize("2025-06-18");
        let taken = Opening::parse(&body, parts(HeaderMap::new())).expect("taken without a version header");
        assert_eq!(
            serde_json::to_value(&taken.message).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        );
        assert!(Opening::parse(&body, version_header("2025-06-18")).is_ok());
        // rmcp answers a disagreeing header with an error of its own.
        assert!(Opening::parse(&body, version_header("2025-03-26")).is_err());
    }

    #[test]
    fn anything_but_an_initialize_is_left_to_rmcp() {
        let bodies = [
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}),
            json!([{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}]),
        ];
        for body in bodies {
            assert!(
                Opening::parse(&serde_json::to_vec(&body).unwrap(), parts(HeaderMap::new())).is_err(),
                "taken: {body}"
            );
        }
        assert!(
            Opening::parse(
                b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"initialize\"",
                parts(HeaderMap::new())
            )
            .is_err()
        );
    }
}
