//! The legacy sessions this process holds, between rmcp's HTTP service and
//! each session's rmcp service loop.
//!
//! rmcp's own `LocalSessionManager` gives every session a worker task and
//! passes every step through it as a message with an answer: open a
//! request's stream, push the request, route each reply. Here the HTTP side
//! and the service loop share the session's routing table ([`Routes`])
//! under a lock instead. A request registers its stream and goes straight
//! into the service loop's inbox; the service loop's `send` finds the
//! stream a message belongs to, stores the event and hands it over. That
//! saves two task switches per request each way, and per session a task
//! and three channels whose first blocks hold 32 messages of 360 bytes.
//!
//! Routing follows the Streamable HTTP rules rmcp's manager implements: a
//! response or error ends the stream of its request; a progress
//! notification rides the stream of the request that gave its token; a
//! server request a handler makes while serving a request rides that
//! request's stream (SEP-2260); everything else goes to the standalone
//! (GET) stream, stored even while no client listens so a resume finds it.
//!
//! A session opened by mcpsock's own handshake (`opening`) whose client
//! takes no server requests (it declared neither sampling, elicitation nor
//! roots) is also served directly: a request calls the handler from the
//! task that serves its HTTP request, in the body of the reply, and its
//! answer is stored and written from there. Through rmcp's service loop
//! the same request passed four tasks (the loop, a task spawned for the
//! handler, the loop again, a task spawned to send the answer) and back.
//! rmcp ties a server request a handler makes to the request it serves
//! through a task-local it keeps to itself; a handler called directly
//! cannot be tied so, and that is why a client that takes server requests
//! keeps the service loop. Progress and cancellation work alike on both
//! ways: a progress notification goes through the service loop to the
//! request's stream by its token, and a cancellation (or the end of the
//! session) cancels the call's token. A reply whose client leaves before
//! the answer moves its call into a task of its own, so the answer is still
//! stored for a resume.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use mcpsock_store::{Binding, Store, StoreError};
use rmcp::RoleServer;
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, ErrorData, GetExtensions, GetMeta, JsonRpcError,
    JsonRpcMessage, JsonRpcRequest, JsonRpcResponse, ProgressToken, RequestId, ServerJsonRpcMessage,
    ServerNotification, ServerResult,
};
use rmcp::service::{OriginatingRequestId, Peer, RequestContext};
use rmcp::transport::Transport;
use rmcp::transport::common::server_side_http::ServerSseMessage;
use rmcp::transport::streamable_http_server::SessionId;
use sync_wrapper::SyncWrapper;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::persist;

/// Messages a request or standalone stream holds for a slow reader before
/// the session's sends wait for it (as with rmcp's manager).
const STREAM_CAPACITY: usize = 16;
/// Client messages queued for the service loop.
const INBOX_CAPACITY: usize = 16;
/// Extra standalone streams (a client opening a second GET) get keep-alives
/// only; past this many, the oldest is dropped.
const MAX_SHADOW_STREAMS: usize = 32;
/// The reconnection delay the priming event of each request stream
/// announces (rmcp's default).
pub(crate) const PRIMING_RETRY: Duration = Duration::from_secs(3);

/// Why a session could not take a message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LiveError {
    #[error("session not found")]
    NotFound,
    /// Its service loop ended (idle expiry, a failed handshake, a close);
    /// the session is about to be forgotten.
    #[error("the session has ended")]
    Ended,
    #[error("a new session id collided with an open session")]
    Collision,
    #[error("no randomness for a session id: {0}")]
    Random(String),
    #[error("a message is not a request")]
    NotARequest,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A map by session id. The server makes every id (a restored session
/// keeps the one it made before), so a fast hash with a per-process random
/// seed is enough: a client cannot choose ids that collide.
pub(crate) type IdMap<V> = HashMap<SessionId, V, foldhash::fast::RandomState>;
/// A set of session ids, hashed as [`IdMap`] is.
pub(crate) type IdSet = std::collections::HashSet<SessionId, foldhash::fast::RandomState>;

/// The sessions open in this process.
pub(crate) struct LiveSessions {
    sessions: Mutex<IdMap<Arc<Session>>>,
    store: Arc<dyn Store>,
    idle_ttl: Duration,
    /// Keys of request streams in the store: unique within the process by
    /// the counter, across processes by the random nonce (a restored
    /// session's new streams must not meet its old ones). No client sees
    /// one.
    stream_nonce: u64,
    next_stream: AtomicU64,
}

impl fmt::Debug for LiveSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSessions").field("open", &self.len()).field("idle_ttl", &self.idle_ttl).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveSessions {
    /// Sessions end after `idle_ttl` without a message either way and
    /// with no client waiting for an answer.
    pub(crate) fn new(store: Arc<dyn Store>, idle_ttl: Duration) -> Self {
        let mut nonce = [0u8; 8];
        if getrandom::fill(&mut nonce).is_err() {
            // Unique enough without randomness: this process's id and start.
            let started =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            nonce = ((started.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
        }
        Self {
            sessions: Mutex::default(),
            store,
            idle_ttl,
            stream_nonce: u64::from_le_bytes(nonce),
            next_stream: AtomicU64::new(0),
        }
    }

    fn get(&self, id: &SessionId) -> Result<Arc<Session>, LiveError> {
        lock(&self.sessions).get(id).cloned().ok_or(LiveError::NotFound)
    }

    /// Opens session `id` and returns the transport its service loop runs
    /// on, or `None` when a session of that id is open already.
    pub(crate) fn open(&self, id: SessionId) -> Option<SessionTransport> {
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(&id) {
            return None;
        }
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let opened = Instant::now();
        let session = Arc::new(Session {
            standalone_key: persist::standalone_stream_key(&id).into(),
            id: id.clone(),
            routes: Mutex::new(Routes { inbox: Some(inbox_tx), ..Routes::default() }),
            sending: tokio::sync::Mutex::new(()),
            opened,
            active_at: AtomicU64::new(0),
        });
        sessions.insert(id, session.clone());
        Some(SessionTransport {
            session,
            store: self.store.clone(),
            inbox,
            idle_ttl: self.idle_ttl,
            idle: Box::pin(tokio::time::sleep_until(later(opened, self.idle_ttl))),
            handover: None,
            initialized: false,
        })
    }

    /// Whether session `id` is here (possibly ended and about to go).
    pub(crate) fn contains(&self, id: &SessionId) -> bool {
        lock(&self.sessions).contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub(crate) fn ids(&self) -> Vec<SessionId> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Forgets session `id` and ends it: its service loop reads the end of
    /// its inbox, and its open streams end. Whether it was here.
    pub(crate) fn close(&self, id: &SessionId) -> bool {
        let session = lock(&self.sessions).remove(id);
        session.map(|session| session.end()).is_some()
    }

    /// Passes the `initialize` request to the session's service loop and
    /// waits for its answer.
    pub(crate) async fn initialize(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, LiveError> {
        let session = self.get(id)?;
        let ClientJsonRpcMessage::Request(request) = &message else { return Err(LiveError::NotARequest) };
        let (answer_tx, answer) = oneshot::channel();
        let inbox = {
            let mut routes = session.routes();
            let inbox = routes.inbox.clone().ok_or(LiveError::Ended)?;
            routes.initializing = Some((request.id.clone(), answer_tx));
            inbox
        };
        session.touch();
        inbox.send(Box::new(message)).await.map_err(|_| LiveError::Ended)?;
        answer.await.map_err(|_| LiveError::Ended)
    }

    /// Passes a request to the session and returns the stream of what
    /// answers it: first a stored priming event (its id names the stream,
    /// for a resume), then whatever the session sends for the request, up
    /// to and including its response. In a session served directly, the
    /// stream calls the handler itself when it is first read. The priming
    /// event waits for the record of the stream's session and request
    /// (which SQLite commits with the answer's event when it comes soon).
    pub(crate) async fn request(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<RequestEvents, LiveError> {
        let session = self.get(id)?;
        let ClientJsonRpcMessage::Request(request) = message else { return Err(LiveError::NotARequest) };
        let mut key = String::with_capacity(32);
        mcpsock_store::push_hex(&mut key, &self.stream_nonce.to_be_bytes());
        mcpsock_store::push_hex(&mut key, &self.next_stream.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let key: Arc<str> = key.into();
        let mut priming = ServerSseMessage::retry(PRIMING_RETRY);
        // The stream's record (its session and request) may still be under
        // way: the request runs meanwhile, and with SQLite the commit of its
        // answer can take the record along (see `Store::open_stream`).
        let (event_id, binding) = persist::open_stream(&self.store, &key, id, &request.id, &priming)?;
        priming.event_id = Some(event_id);
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let (inbox, direct) = {
            let mut routes = session.routes();
            let inbox = routes.inbox.clone().ok_or(LiveError::Ended)?;
            // A client reusing the id of a request in flight: the earlier
            // stream ends.
            routes.end_request(&request.id);
            let progress = request.request.get_meta().get_progress_token();
            if let Some(token) = &progress {
                routes.progress.insert(token.clone(), request.id.clone());
            }
            // An `initialize` inside a session is rmcp's to refuse.
            let direct = routes
                .direct
                .clone()
                .filter(|_| !matches!(request.request, ClientRequest::InitializeRequest(_)))
                .map(|direct| {
                    let cancel = direct.calls.child_token();
                    (direct, cancel)
                });
            let cancel = direct.as_ref().map(|(_, cancel)| cancel.clone());
            routes
                .requests
                .insert(request.id.clone(), RequestStream { key: key.clone(), tx, progress, cancel });
            (inbox, direct)
        };
        session.touch();
        let call = match direct {
            Some((direct, cancel)) => {
                let finish = Finish { session, store: self.store.clone(), key };
                Some(SyncWrapper::new(direct.call(request, cancel, finish)))
            }
            None => {
                inbox
                    .send(Box::new(ClientJsonRpcMessage::Request(request)))
                    .await
                    .map_err(|_| LiveError::Ended)?;
                None
            }
        };
        Ok(RequestEvents {
            binding: binding.map(SyncWrapper::new),
            priming: Some(priming),
            call,
            answer: None,
            rx,
        })
    }

    /// Serves session `id`'s requests from here on by calling `handler`
    /// directly with `peer` (its service loop's), until the session ends.
    /// `stop` is the token that stops the session's service loop.
    pub(crate) fn serve_directly(
        &self,
        id: &SessionId,
        handler: Box<dyn Handler>,
        peer: Peer<RoleServer>,
        stop: &CancellationToken,
    ) {
        let Ok(session) = self.get(id) else { return };
        let mut routes = session.routes();
        if routes.inbox.is_some() {
            routes.direct = Some(Arc::new(Direct { handler, peer, calls: stop.child_token() }));
        }
    }

    /// Passes a notification, response or error from the client to the
    /// session. A cancellation ends the cancelled request's stream.
    pub(crate) async fn accept(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), LiveError> {
        let session = self.get(id)?;
        let inbox = {
            let mut routes = session.routes();
            if let JsonRpcMessage::Notification(notification) = &message
                && let ClientNotification::CancelledNotification(cancelled) = &notification.notification
                && let Some(request_id) = &cancelled.params.request_id
            {
                routes.end_request(request_id);
            }
            routes.inbox.clone().ok_or(LiveError::Ended)?
        };
        session.touch();
        inbox.send(Box::new(message)).await.map_err(|_| LiveError::Ended)
    }

    /// Opens a standalone stream. The first one open carries the session's
    /// unrelated messages; while it is open, another gets keep-alives only
    /// (so competing reconnections do not take turns cutting each other).
    pub(crate) fn standalone(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, LiveError> {
        let session = self.get(id)?;
        let mut routes = session.routes();
        if routes.inbox.is_none() {
            return Err(LiveError::Ended);
        }
        let mut rx = if routes.standalone.as_ref().is_none_or(mpsc::Sender::is_closed) {
            let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
            routes.standalone = Some(tx);
            rx
        } else {
            let (tx, rx) = mpsc::channel(1);
            routes.shadows.retain(|shadow| !shadow.is_closed());
            if routes.shadows.len() >= MAX_SHADOW_STREAMS {
                routes.shadows.remove(0);
            }
            routes.shadows.push(tx);
            rx
        };
        drop(routes);
        session.touch();
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

/// One open session.
struct Session {
    id: SessionId,
    /// The key its standalone stream's events are stored under.
    standalone_key: Arc<str>,
    routes: Mutex<Routes>,
    /// Held while one message is stored and handed to its stream, so each
    /// stream's events are stored in the order its reader gets them.
    sending: tokio::sync::Mutex<()>,
    opened: Instant,
    /// Milliseconds after `opened` of the last message either way.
    active_at: AtomicU64,
}

/// Where the session's messages go, and the way into its service loop.
#[derive(Default)]
struct Routes {
    /// Into the service loop; `None` once the session ended.
    inbox: Option<mpsc::Sender<Box<ClientJsonRpcMessage>>>,
    /// The `initialize` request in flight and who waits for its answer.
    initializing: Option<(RequestId, oneshot::Sender<ServerJsonRpcMessage>)>,
    /// The stream of each request in flight. The keys are the client's,
    /// hashed fast with a per-process random seed no client sees; the table
    /// holds one session's requests only.
    requests: HashMap<RequestId, RequestStream, foldhash::fast::RandomState>,
    /// Which request gave each progress token.
    progress: HashMap<ProgressToken, RequestId, foldhash::fast::RandomState>,
    standalone: Option<mpsc::Sender<ServerSseMessage>>,
    shadows: Vec<mpsc::Sender<ServerSseMessage>>,
    /// The handler requests are served by directly, if they are.
    direct: Option<Arc<Direct>>,
}

struct RequestStream {
    /// The key its events are stored under.
    key: Arc<str>,
    tx: mpsc::Sender<ServerSseMessage>,
    progress: Option<ProgressToken>,
    /// The token of a call served directly.
    cancel: Option<CancellationToken>,
}

/// The stream a server message goes to.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The stream of this request; `last` when the message answers it.
    Request {
        id: RequestId,
        last: bool,
    },
    Standalone,
}

impl Routes {
    fn route(&self, message: &ServerJsonRpcMessage) -> Route {
        let request = |id: &RequestId, last: bool| {
            if self.requests.contains_key(id) {
                Route::Request { id: id.clone(), last }
            } else {
                Route::Standalone
            }
        };
        match message {
            JsonRpcMessage::Response(response) => request(&response.id, true),
            JsonRpcMessage::Error(error) => {
                error.id.as_ref().map_or(Route::Standalone, |id| request(id, true))
            }
            JsonRpcMessage::Notification(notification) => match &notification.notification {
                ServerNotification::ProgressNotification(progress) => self
                    .progress
                    .get(&progress.params.progress_token)
                    .map_or(Route::Standalone, |id| request(id, false)),
                ServerNotification::CancelledNotification(cancelled) => {
                    cancelled.params.request_id.as_ref().map_or(Route::Standalone, |id| request(id, false))
                }
                _ => Route::Standalone,
            },
            JsonRpcMessage::Request(server_request) => server_request
                .request
                .extensions()
                .get::<OriginatingRequestId>()
                .map_or(Route::Standalone, |originating| request(&originating.0, false)),
        }
    }

    /// Forgets a request's stream; the stream ends once nothing sends on it,
    /// and a call served directly is cancelled (as rmcp's service loop
    /// cancels a request once it is answered or cancelled).
    fn end_request(&mut self, id: &RequestId) -> Option<RequestStream> {
        let stream = self.requests.remove(id)?;
        if let Some(cancel) = &stream.cancel {
            cancel.cancel();
        }
        if let Some(token) = &stream.progress
            && self.progress.get(token) == Some(id)
        {
            self.progress.remove(token);
        }
        Some(stream)
    }
}

impl Session {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        lock(&self.routes)
    }

    fn touch(&self) {
        let millis = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.active_at.store(millis, Ordering::Relaxed);
    }

    /// When the session expires if nothing happens before then, or `None`
    /// while a client waits for the answer to a request (a long tool call
    /// is not idleness). A request whose client left does not hold the
    /// session: a handler that never answers must not keep it for ever.
    fn expiry(&self, idle_ttl: Duration) -> Option<Instant> {
        if self.routes().requests.values().any(|stream| !stream.tx.is_closed()) {
            return None;
        }
        let active = later(self.opened, Duration::from_millis(self.active_at.load(Ordering::Relaxed)));
        Some(later(active, idle_ttl))
    }

    /// Ends the session: no more client messages reach the service loop,
    /// and every open stream ends.
    fn end(&self) {
        let mut routes = self.routes();
        if let Some(direct) = &routes.direct {
            direct.calls.cancel();
        }
        *routes = Routes::default();
    }

    /// Stores the answer to a call served directly, ends the call's stream
    /// and returns the answer's event; `None` when the request's stream
    /// ended before (a cancellation, a client reusing its id, the end of
    /// the session): its answer is dropped, as rmcp drops it. The stream
    /// ends only once the answer is stored, since its reader ends with it.
    async fn answer(
        &self,
        store: &dyn Store,
        key: &Arc<str>,
        message: ServerJsonRpcMessage,
    ) -> Option<ServerSseMessage> {
        self.touch();
        let (JsonRpcMessage::Response(JsonRpcResponse { id, .. })
        | JsonRpcMessage::Error(JsonRpcError { id: Some(id), .. })) = &message
        else {
            return None;
        };
        let id = id.clone();
        let ours =
            |routes: &Routes| routes.requests.get(&id).is_some_and(|stream| Arc::ptr_eq(&stream.key, key));
        let _order = self.sending.lock().await;
        if !ours(&self.routes()) {
            return None;
        }
        let mut event = ServerSseMessage::from_message(message);
        match persist::store_event(store, key, None, &event).await {
            Ok(id) => event.event_id = Some(id),
            // The client still gets its answer, without an id to resume
            // from.
            Err(error) => tracing::warn!(%error, "an answer was not stored; its stream cannot be resumed"),
        }
        let mut routes = self.routes();
        if ours(&routes) {
            routes.end_request(&id);
        }
        Some(event)
    }

    /// Stores a message of the service loop and hands it to its stream.
    async fn deliver(&self, store: &dyn Store, message: ServerJsonRpcMessage) -> Result<(), LiveError> {
        self.touch();
        let _order = self.sending.lock().await;
        // The stream's key, the session (named for a standalone stream
        // only: a request's stream was bound to it when it opened), and
        // where a reader waits, if one does.
        let (key, session, tx) = {
            let mut routes = self.routes();
            if let JsonRpcMessage::Response(JsonRpcResponse { id, .. })
            | JsonRpcMessage::Error(JsonRpcError { id: Some(id), .. }) = &message
                && routes.initializing.as_ref().is_some_and(|(initialize, _)| initialize == id)
                && let Some((_, answer)) = routes.initializing.take()
            {
                // The handshake's answer goes back as the HTTP response
                // rmcp's service writes itself.
                let _ = answer.send(message);
                return Ok(());
            }
            match routes.route(&message) {
                Route::Request { id, last: true } => {
                    let stream = routes.end_request(&id).expect("routed to a request in flight");
                    (stream.key, None, Some(stream.tx))
                }
                Route::Request { id, last: false } => {
                    let stream = &routes.requests[&id];
                    (stream.key.clone(), None, Some(stream.tx.clone()))
                }
                Route::Standalone => (self.standalone_key.clone(), Some(&self.id), routes.standalone.clone()),
            }
        };
        let mut event = ServerSseMessage::from_message(message);
        event.event_id = Some(persist::store_event(store, &key, session.map(|id| &**id), &event).await?);
        if let Some(tx) = tx
            && tx.send(event).await.is_err()
        {
            tracing::trace!("a stream's reader left; its event stays stored for a resume");
        }
        Ok(())
    }
}

/// A session's handler, as a request served directly calls it.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Handles `request` as rmcp's service loop would, and passes the
    /// answer to `finish`.
    fn call(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
        finish: Finish,
    ) -> BoxFuture<'static, Option<ServerSseMessage>>;
}

/// What a session served directly holds.
struct Direct {
    handler: Box<dyn Handler>,
    /// The session's peer (its service loop's): what a handler sends
    /// through it, a progress notification say, takes the way any message
    /// of the handler takes.
    peer: Peer<RoleServer>,
    /// The parent of every call's token, cancelled when the session ends.
    calls: CancellationToken,
}

impl Direct {
    /// The call of `request`, as rmcp's service loop makes it: the request's
    /// `_meta` and extensions (the HTTP request's parts among them) move to
    /// its context.
    fn call(
        &self,
        request: JsonRpcRequest<ClientRequest>,
        cancel: CancellationToken,
        finish: Finish,
    ) -> BoxFuture<'static, Option<ServerSseMessage>> {
        let JsonRpcRequest { id, mut request, .. } = request;
        let meta = std::mem::take(request.get_meta_mut());
        let extensions = std::mem::take(request.extensions_mut());
        let mut context = RequestContext::new(id, self.peer.clone());
        context.ct = cancel;
        context.meta = meta;
        context.extensions = extensions;
        self.handler.call(request, context, finish)
    }
}

/// Where the answer of a call served directly goes.
pub(crate) struct Finish {
    session: Arc<Session>,
    store: Arc<dyn Store>,
    key: Arc<str>,
}

impl Finish {
    /// Answers request `id` with what its handler returned: `handled`
    /// is `Err` when the handler panicked, which answers an internal error
    /// (rmcp's service loop would leave the request unanswered).
    pub(crate) async fn answer(
        self,
        id: RequestId,
        handled: std::thread::Result<Result<ServerResult, ErrorData>>,
    ) -> Option<ServerSseMessage> {
        let message = match handled {
            Ok(Ok(result)) => JsonRpcMessage::response(result, id),
            Ok(Err(error)) => JsonRpcMessage::error(error, Some(id)),
            Err(_) => JsonRpcMessage::error(
                ErrorData::internal_error("the request's handler panicked", None),
                Some(id),
            ),
        };
        self.session.answer(&*self.store, &self.key, message).await
    }
}

/// The events that answer one request: its priming event, then what the
/// session sends for it; in a session served directly, the call itself,
/// run as the stream is read.
pub(crate) struct RequestEvents {
    /// The record of the stream's session and request, while it is being
    /// committed: the client gets no id of the stream before. One that
    /// fails is logged (the stream works, but cannot be resumed after a
    /// restart).
    binding: Option<SyncWrapper<Binding>>,
    priming: Option<ServerSseMessage>,
    /// The call served directly, until it has answered.
    call: Option<SyncWrapper<BoxFuture<'static, Option<ServerSseMessage>>>>,
    /// Its answer, held while events sent before it are read.
    answer: Option<ServerSseMessage>,
    rx: mpsc::Receiver<ServerSseMessage>,
}

impl RequestEvents {
    /// Runs the call, if it has not answered yet; its answer is kept for
    /// its turn. Pending while the call is.
    fn poll_call(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Some(call) = &mut self.call {
            self.answer = std::task::ready!(call.get_mut().as_mut().poll(cx));
            self.call = None;
        }
        std::task::Poll::Ready(())
    }
}

impl Stream for RequestEvents {
    type Item = ServerSseMessage;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(binding) = &mut this.binding {
            // The record first: the call's answer, stored meanwhile, can
            // then take it along into its own commit.
            let Poll::Ready(bound) = binding.get_mut().as_mut().poll(cx) else {
                // Answered or not, the call waits for the record.
                let _ = this.poll_call(cx);
                return Poll::Pending;
            };
            if let Err(error) = bound {
                tracing::warn!(%error, "a stream was not recorded; it cannot be resumed after a restart");
            }
            this.binding = None;
        }
        if let Some(priming) = this.priming.take() {
            return Poll::Ready(Some(priming));
        }
        if this.poll_call(cx).is_pending() {
            // Its stream ended first (a cancellation): the call goes on in
            // a task of its own (see `Drop`).
            return this.rx.poll_recv(cx);
        }
        if this.answer.is_some() {
            // What the handler sent before it answered (it waited for each
            // send) is queued already and comes first.
            if let Ok(event) = this.rx.try_recv() {
                return Poll::Ready(Some(event));
            }
            return Poll::Ready(this.answer.take());
        }
        this.rx.poll_recv(cx)
    }
}

impl Drop for RequestEvents {
    /// A call whose reader left finishes in a task of its own, so its
    /// answer is stored for a resume.
    fn drop(&mut self) {
        if let Some(call) = self.call.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(call.into_inner());
        }
    }
}

/// `at + by`, or about thirty years on when that is past what `Instant`
/// holds (a `session_idle_ttl` of "never", in effect).
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or_else(|| at + Duration::from_secs(30 * 365 * 86_400))
}

/// The transport a session's rmcp service loop runs on.
pub(crate) struct SessionTransport {
    session: Arc<Session>,
    store: Arc<dyn Store>,
    inbox: mpsc::Receiver<Box<ClientJsonRpcMessage>>,
    idle_ttl: Duration,
    idle: Pin<Box<Sleep>>,
    /// Held by the handshake task of a session mcpsock opened (see
    /// [`Self::hold_after_handshake`]).
    handover: Option<oneshot::Receiver<()>>,
    /// Whether the client's `initialized` has been read.
    initialized: bool,
}

impl SessionTransport {
    /// Holds the service loop, once the handshake is read, until the
    /// returned sender is dropped: the way the session is served (directly
    /// or not) is then settled before the loop answers any later request,
    /// so a client holding its first answer finds it settled.
    pub(crate) fn hold_after_handshake(&mut self) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        self.handover = Some(rx);
        tx
    }
}

impl Transport<RoleServer> for SessionTransport {
    type Error = LiveError;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let session = self.session.clone();
        let store = self.store.clone();
        async move { session.deliver(&*store, item).await }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        if self.initialized
            && let Some(handover) = &mut self.handover
        {
            let _ = handover.await;
            self.handover = None;
        }
        loop {
            tokio::select! {
                biased;
                message = self.inbox.recv() => {
                    let message = message.map(|message| *message);
                    if let Some(JsonRpcMessage::Notification(notification)) = &message
                        && matches!(notification.notification, ClientNotification::InitializedNotification(_))
                    {
                        self.initialized = true;
                    }
                    return message;
                }
                () = &mut self.idle => {
                    match self.session.expiry(self.idle_ttl) {
                        Some(at) if at <= Instant::now() => {
                            tracing::debug!("a session expired");
                            self.session.end();
                            return None;
                        }
                        Some(at) => self.idle.as_mut().reset(at),
                        None => self.idle.as_mut().reset(later(Instant::now(), self.idle_ttl)),
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.session.end();
        Ok(())
    }
}

impl Drop for SessionTransport {
    /// A service loop that ends, however it ends, ends its session: a
    /// request waiting on it (even the `initialize` answer) gets an error.
    fn drop(&mut self) {
        self.session.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use mcpsock_store::MemoryStore;
    use rmcp::model::{CallToolResult, ServerRequest};
    use serde_json::json;

    fn sessions(idle_ttl: Duration) -> (LiveSessions, SessionId, SessionTransport) {
        let sessions = LiveSessions::new(Arc::new(MemoryStore::default()), idle_ttl);
        let id: SessionId = "session".into();
        let transport = sessions.open(id.clone()).expect("a new id");
        (sessions, id, transport)
    }

    fn client(message: serde_json::Value) -> ClientJsonRpcMessage {
        serde_json::from_value(message).unwrap()
    }

    fn server(message: serde_json::Value) -> ServerJsonRpcMessage {
        serde_json::from_value(message).unwrap()
    }

    fn call(id: i64, progress: Option<&str>) -> ClientJsonRpcMessage {
        let mut params = json!({"name": "echo", "arguments": {}});
        if let Some(token) = progress {
            params["_meta"] = json!({"progressToken": token});
        }
        client(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}))
    }

    fn answer(id: i64) -> ServerJsonRpcMessage {
        ServerJsonRpcMessage::response(
            ServerResult::CallToolResult(CallToolResult::success(vec![])),
            RequestId::Number(id),
        )
    }

    fn progress(token: &str) -> ServerJsonRpcMessage {
        server(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": token, "progress": 1}}))
    }

    fn log_line() -> ServerJsonRpcMessage {
        server(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}))
    }

    /// What a stream carried, as messages (the priming event as `None`).
    async fn read_all(stream: impl Stream<Item = ServerSseMessage>) -> Vec<Option<ServerJsonRpcMessage>> {
        stream.map(|event| event.message.map(|message| (*message).clone())).collect().await
    }

    #[tokio::test]
    async fn a_request_stream_carries_its_progress_and_ends_with_its_answer() {
        let (sessions, id, mut transport) = sessions(Duration::from_secs(60));
        let stream = sessions.request(&id, call(1, Some("p1"))).await.unwrap();
        assert!(matches!(transport.receive().await, Some(JsonRpcMessage::Request(_))));
        transport.send(log_line()).await.unwrap();
        transport.send(progress("p1")).await.unwrap();
        transport.send(answer(1)).await.unwrap();
        let read = read_all(stream).await;
        assert_eq!(read.len(), 3, "{read:?}");
        assert!(read[0].is_none(), "the priming event comes first");
        assert!(matches!(&read[1], Some(JsonRpcMessage::Notification(_))), "the progress rides the stream");
        assert!(matches!(&read[2], Some(JsonRpcMessage::Response(_))));
        // Unrelated messages wait in the store for a standalone stream.
        assert_eq!(lock(&sessions.get(&id).unwrap().routes).requests.len(), 0);
    }

    #[tokio::test]
    async fn unrelated_messages_go_to_the_first_standalone_stream_only() {
        let (sessions, id, mut transport) = sessions(Duration::from_secs(60));
        let primary = sessions.standalone(&id).unwrap();
        let shadow = sessions.standalone(&id).unwrap();
        transport.send(log_line()).await.unwrap();
        transport.send(answer(9)).await.unwrap();
        assert!(sessions.close(&id));
        let read = read_all(primary).await;
        assert_eq!(read.len(), 2, "an answer to no request in flight is not lost: {read:?}");
        assert!(read_all(shadow).await.is_empty(), "a second stream only keeps its connection");
        assert!(!sessions.contains(&id));
    }

    #[tokio::test]
    async fn a_server_request_made_for_a_client_request_rides_its_stream() {
        let (sessions, id, mut transport) = sessions(Duration::from_secs(60));
        let stream = sessions.request(&id, call(7, None)).await.unwrap();
        transport.receive().await.unwrap();
        let mut ping = rmcp::model::PingRequest::default();
        ping.extensions.insert(OriginatingRequestId(RequestId::Number(7)));
        transport
            .send(ServerJsonRpcMessage::request(ServerRequest::PingRequest(ping), RequestId::Number(100)))
            .await
            .unwrap();
        transport.send(answer(7)).await.unwrap();
        let read = read_all(stream).await;
        assert!(matches!(&read[1], Some(JsonRpcMessage::Request(_))), "{read:?}");
        assert!(matches!(&read[2], Some(JsonRpcMessage::Response(_))), "{read:?}");
    }

    #[tokio::test]
    async fn a_cancelled_request_s_stream_ends_without_an_answer() {
        let (sessions, id, mut transport) = sessions(Duration::from_secs(60));
        let stream = sessions.request(&id, call(3, Some("p3"))).await.unwrap();
        transport.receive().await.unwrap();
        let cancel = client(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}),
        );
        sessions.accept(&id, cancel).await.unwrap();
        assert!(
            matches!(transport.receive().await, Some(JsonRpcMessage::Notification(_))),
            "the loop hears of it"
        );
        assert_eq!(read_all(stream).await.len(), 1, "only the priming event");
        let session = sessions.get(&id).unwrap();
        let routes = session.routes();
        assert!(routes.requests.is_empty() && routes.progress.is_empty());
    }

    #[tokio::test]
    async fn initialize_waits_for_the_handshake_answer() {
        let (sessions, id, mut transport) = sessions(Duration::from_secs(60));
        let initialize = client(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}));
        let handshake = async {
            assert!(matches!(transport.receive().await, Some(JsonRpcMessage::Request(_))));
            transport.send(answer(0)).await.unwrap();
        };
        let (answer, ()) = tokio::join!(sessions.initialize(&id, initialize.clone()), handshake);
        assert!(matches!(answer, Ok(JsonRpcMessage::Response(_))));
        // A service loop that quits instead of answering fails the wait.
        let (sessions, id, transport) = self::sessions(Duration::from_secs(60));
        drop(transport);
        assert!(matches!(sessions.initialize(&id, initialize).await, Err(LiveError::Ended)));
        assert!(sessions.contains(&id), "rmcp's service closes it next");
    }

    #[tokio::test]
    async fn an_idle_time_past_what_an_instant_holds_means_never() {
        let (sessions, id, mut transport) = sessions(Duration::MAX);
        sessions.accept(&id, call(1, None)).await.unwrap();
        assert!(transport.receive().await.is_some());
        assert!(sessions.contains(&id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_client_left_does_not_hold_the_session() {
        let ttl = Duration::from_secs(60);
        let (sessions, id, mut transport) = sessions(ttl);
        drop(sessions.request(&id, call(1, None)).await.unwrap());
        transport.receive().await.unwrap();
        let started = Instant::now();
        assert!(transport.receive().await.is_none(), "the session ends though the request was not answered");
        assert!(started.elapsed() >= ttl);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_when_idle_but_not_while_a_request_is_in_flight() {
        let ttl = Duration::from_secs(60);
        let (sessions, id, mut transport) = sessions(ttl);
        let standalone = sessions.standalone(&id).unwrap();
        let stream = sessions.request(&id, call(1, None)).await.unwrap();
        transport.receive().await.unwrap();
        assert!(
            tokio::time::timeout(ttl * 5, transport.receive()).await.is_err(),
            "a request in flight keeps the session"
        );
        transport.send(answer(1)).await.unwrap();
        assert_eq!(read_all(stream).await.len(), 2);
        let started = Instant::now();
        assert!(transport.receive().await.is_none(), "the session ends");
        assert!(started.elapsed() >= ttl);
        assert!(read_all(standalone).await.is_empty(), "its standalone stream ends with it");
        assert!(matches!(sessions.accept(&id, call(2, None)).await, Err(LiveError::Ended)));
    }
}
