//! The daemon's use of the store: rmcp's `SessionStore` over [`Store`], the
//! events of legacy sessions, the answer to streams a crash cut off, and the
//! periodic cleanup.
//!
//! rmcp records a session after its `initialize` succeeded and replays that
//! handshake to restore the session in a new process; the session layer
//! (`live`) stores every SSE event of a legacy session before sending it, so
//! an id a client holds is always durable. `BoundSessions` answers
//! `Last-Event-ID` from the store, scoped to the session.

use std::sync::Arc;
use std::time::Duration;

use mcpsock_store::{Binding, Clock, NewEvent, SessionRecord, Store, StoreError};
use rmcp::model::{ErrorCode, ErrorData, InitializeRequestParams, RequestId, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionState, SessionStore, SessionStoreError,
};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::live::LiveError;
use crate::sessions::Principal;

/// What a client whose request was cut by a restart reads at the end of
/// its stream.
pub const RESTARTED_MESSAGE: &str = "server restarted; retry";

tokio::task_local! {
    /// The principal whose request is being served; rmcp records a new
    /// session from inside that request, and the record needs its owner.
    pub(crate) static REQUEST_PRINCIPAL: Principal;
}

/// The key a session's standalone stream's events are stored under. Its
/// name holds the session id, a secret, so only a hash of it is stored.
pub(crate) fn standalone_stream_key(session: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{session}:common").as_bytes());
    let mut key = String::with_capacity(32);
    mcpsock_store::push_hex(&mut key, &digest[..16]);
    key
}

/// rmcp's session store over ours.
#[derive(Debug)]
pub(crate) struct SessionStoreAdapter(pub(crate) Arc<dyn Store>);

#[async_trait::async_trait]
impl SessionStore for SessionStoreAdapter {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Some(record) = self.0.load_session(session_id).await? else { return Ok(None) };
        let params: InitializeRequestParams = serde_json::from_slice(&record.init_params)?;
        Ok(Some(SessionState::new(params)))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let owner = REQUEST_PRINCIPAL
            .try_with(|principal| *principal)
            .map_err(|_| "a session was opened outside of a client request")?;
        let now = Clock::system().now();
        self.0
            .put_session(SessionRecord {
                id: session_id.to_string(),
                owner: owner.to_string(),
                init_params: serde_json::to_vec(&state.initialize_params)?,
                created_at: now,
                last_seen: now,
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        Ok(self.0.delete_session(session_id).await?)
    }
}

/// Stores an event of a legacy session's stream `key` and returns its id:
/// `session` names the session of a standalone stream (a request's stream
/// is bound to its session when it opens).
pub(crate) async fn store_event(
    store: &dyn Store,
    key: &str,
    session: Option<&str>,
    event: &ServerSseMessage,
) -> Result<String, LiveError> {
    let message = event.message.as_deref();
    let new_event = NewEvent {
        message: message.map(serde_json::to_vec).transpose()?,
        retry_ms: event.retry.map(|retry| u64::try_from(retry.as_millis()).unwrap_or(u64::MAX)),
        is_response: matches!(
            message,
            Some(ServerJsonRpcMessage::Response(_) | ServerJsonRpcMessage::Error(_))
        ),
    };
    Ok(store.append_event(key, session, new_event).await?)
}

/// Opens the stream `key` of a legacy session's request: stores its
/// priming event and binds the stream to `session` as the answer to
/// `request` (see `Store::open_stream`). Returns the event's id and the
/// binding, if it is still being committed.
pub(crate) fn open_stream(
    store: &Arc<dyn Store>,
    key: &str,
    session: &str,
    request: &RequestId,
    priming: &ServerSseMessage,
) -> Result<(String, Option<Binding>), LiveError> {
    let first = NewEvent {
        message: None,
        retry_ms: priming.retry.map(|retry| u64::try_from(retry.as_millis()).unwrap_or(u64::MAX)),
        is_response: false,
    };
    Ok(store.clone().open_stream(key, session, serde_json::to_vec(request)?, first)?)
}

/// Ends every request stream a previous process left without a response:
/// its client, resuming, reads the events it missed and then a JSON-RPC
/// error telling it to retry, instead of waiting forever.
pub async fn cut_open_streams(store: &dyn Store) -> Result<usize, StoreError> {
    let open = store.open_streams().await?;
    for stream in &open {
        let Ok(request_id) = serde_json::from_slice::<RequestId>(&stream.request_id) else {
            tracing::warn!("a cut stream's request id is unreadable; its client will not be answered");
            continue;
        };
        let error = ServerJsonRpcMessage::error(
            ErrorData::new(ErrorCode::INTERNAL_ERROR, RESTARTED_MESSAGE, None),
            Some(request_id),
        );
        let message = serde_json::to_vec(&error).map_err(|error| StoreError::Commit(error.to_string()))?;
        store
            .append_event(
                &stream.stream,
                None,
                NewEvent { message: Some(message), retry_ms: None, is_response: true },
            )
            .await?;
    }
    if !open.is_empty() {
        tracing::info!(streams = open.len(), "answered requests cut short by the last stop");
    }
    Ok(open.len())
}

/// Runs the store's cleanup every `interval` until `stop` is cancelled.
pub(crate) async fn clean_periodically(store: Arc<dyn Store>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.purge().await {
            Ok(purged) if purged.sessions > 0 || purged.events > 0 => {
                tracing::debug!(sessions = purged.sessions, events = purged.events, "expired state removed");
            }
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(error) => tracing::warn!(error = %error, "state cleanup failed"),
        }
    }
}
