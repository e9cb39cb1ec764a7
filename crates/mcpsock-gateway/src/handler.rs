//! The aggregating MCP server handler.
//!
//! Tools and prompts are offered under the names of [`crate::names`] in the
//! order of server names, then of the upstream's own order; resources keep
//! their URIs and are routed by the upstream that listed them.
//!
//! Every request is forwarded as the client sent it, `_meta` included, apart
//! from the names: rmcp gives the upstream request its own id and progress
//! token, and the request's [`Route`] brings back what the upstream sends
//! while it runs (progress with the client's token, log messages, and its own
//! requests such as elicitation, sampling or roots), which this request's task
//! delivers on the client's stream.

// Logging, sampling and roots are deprecated by SEP-2577 (2026-07-28), but
// clients and servers of the earlier revisions use them, and a gateway
// passes through what both sides speak.
#![allow(deprecated)]

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelledNotificationParam, ClientNotification, ClientRequest,
    CompleteRequestParams, CompleteResult, GetPromptRequestParams, GetPromptResponse, Implementation,
    InitializeRequestParams, InitializeResult, InputRequiredResult, InputResponses, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel, Notification,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, Reference,
    Request, RequestId, ResultType, ServerCapabilities, ServerConfig, ServerNotification, ServerRequest,
    ServerResult, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, Peer, RoleClient, RoleServer, ServerHandler, ServiceError};
use tokio::sync::{mpsc, oneshot};

use crate::downstream::{Session, Sessions};
use crate::limits::Slot;
use crate::names::NameIndex;
use crate::pages;
use crate::parked::{self, ParkedCalls, Reply};
use crate::routes::{RELAY_BUFFER, Relay, Route, RouteGuard};
use crate::upstream::{Lease, Timing, Upstream, read};
use crate::{Isolation, UpstreamEvent, UpstreamReport, UpstreamSpec};

/// Settings of the gateway.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayOptions {
    /// Joins server and tool names.
    pub separator: String,
    /// How long an upstream may take to start and answer `initialize`.
    pub init_timeout: Duration,
    /// How long a stopping upstream gets before its process group is killed.
    pub stop_grace: Duration,
    /// How long an upstream may take to answer a request; then the client
    /// gets an error and the upstream a `notifications/cancelled`.
    pub request_timeout: Duration,
    /// Where upstream events are sent, when someone follows them.
    pub events: Option<tokio::sync::broadcast::Sender<UpstreamEvent>>,
    /// Entries per page of `tools/list` and the other lists.
    pub list_page_size: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            separator: "__".into(),
            init_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            events: None,
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
        }
    }
}

/// Entries per page of the lists unless configured otherwise: enough that
/// most setups answer in one page, few enough that a client with hundreds
/// of tools gets them in pieces it can show while the rest comes.
pub const DEFAULT_LIST_PAGE_SIZE: usize = 100;

impl GatewayOptions {
    pub fn separator(mut self, separator: impl Into<String>) -> Self {
        self.separator = separator.into();
        self
    }

    pub fn init_timeout(mut self, init_timeout: Duration) -> Self {
        self.init_timeout = init_timeout;
        self
    }

    pub fn stop_grace(mut self, stop_grace: Duration) -> Self {
        self.stop_grace = stop_grace;
        self
    }

    pub fn request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    pub fn events(mut self, events: tokio::sync::broadcast::Sender<UpstreamEvent>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn list_page_size(mut self, list_page_size: usize) -> Self {
        self.list_page_size = list_page_size.max(1);
        self
    }

    pub(crate) fn timing(&self) -> Timing {
        Timing {
            init_timeout: self.init_timeout,
            stop_grace: self.stop_grace,
            request_timeout: self.request_timeout,
        }
    }
}

/// The shared gateway. Every downstream session gets its own handle from
/// [`Gateway::for_session`]; all handles share the same upstreams.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
    session: Arc<Session>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Sorted by name, which makes every listing deterministic. Replaced
    /// as a whole when upstreams are added, removed or restarted (see
    /// `change`); a request takes its [`Lease`] under this lock.
    pub(crate) upstreams: RwLock<Arc<Vec<Arc<Upstream>>>>,
    pub(crate) options: GatewayOptions,
    pub(crate) sessions: Arc<Sessions>,
    /// The offered names, rebuilt when the set of upstreams or a catalog
    /// changes.
    names: Mutex<Option<Arc<Names>>>,
    /// Serializes changes to the set of upstreams.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Replaced upstreams still finishing their requests.
    pub(crate) draining: Mutex<Vec<Arc<Upstream>>>,
    /// Upstream calls waiting for a 2026-07-28 client's answer.
    parked: ParkedCalls<Exchange>,
}

/// The offered names of one set of upstreams. Entries refer to upstreams by
/// their position in `upstreams`, so the names are only valid for that very
/// set (the same `Arc`) at the catalog generations they were built from.
#[derive(Debug)]
struct Names {
    upstreams: Arc<Vec<Arc<Upstream>>>,
    generations: Vec<u64>,
    tools: NameIndex,
    prompts: NameIndex,
}

impl Gateway {
    /// Starts every upstream concurrently and waits until each has started
    /// or failed. A failed upstream is reported, never fatal.
    pub async fn start(mut specs: Vec<UpstreamSpec>, options: GatewayOptions) -> Self {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let sessions = Arc::new(Sessions::default());
        let timing = options.timing();
        let upstreams = futures::future::join_all(
            specs.iter().map(|spec| Upstream::start(spec, timing, sessions.clone(), options.events.clone())),
        )
        .await;
        let session = sessions.open();
        Self {
            inner: Arc::new(Inner {
                upstreams: RwLock::new(Arc::new(upstreams)),
                options,
                sessions,
                names: Mutex::new(None),
                changing: tokio::sync::Mutex::new(()),
                draining: Mutex::new(Vec::new()),
                parked: ParkedCalls::new(),
            }),
            session,
        }
    }

    /// A handle for a new downstream session: its own log level and
    /// resource subscriptions, the shared upstreams.
    pub fn for_session(&self) -> Self {
        Self { inner: self.inner.clone(), session: self.inner.sessions.open() }
    }

    /// The state of every upstream, in name order.
    pub fn report(&self) -> Vec<UpstreamReport> {
        let sessions = self.inner.sessions.live();
        self.upstreams()
            .iter()
            .map(|upstream| {
                let mut report = upstream.report();
                report.instances =
                    sessions.iter().flat_map(|session| session.dedicated.reports_of(upstream)).collect();
                report
            })
            .collect()
    }

    /// Stops every upstream (their whole process groups), per-session ones
    /// included.
    pub async fn shutdown(&self) {
        let dedicated: Vec<Arc<Upstream>> =
            self.inner.sessions.live().iter().flat_map(|session| session.dedicated.take_all()).collect();
        let upstreams = self.upstreams();
        futures::future::join_all(upstreams.iter().chain(&dedicated).map(|upstream| upstream.stop())).await;
    }

    /// The upstream a request of this session goes to: `lease` itself when
    /// it is shared, else this session's own connection to that server,
    /// started now if it has none. A 2026-07-28 request has no session, so
    /// it cannot be given a connection of its own: it is refused rather than
    /// served by a connection other clients share, which is what the
    /// isolation promises never happens.
    async fn dedicated(
        &self,
        lease: Lease,
        context: &RequestContext<RoleServer>,
    ) -> Result<Lease, ErrorData> {
        let Isolation::PerSession { idle_timeout } = lease.spec.isolation else { return Ok(lease) };
        // Boxed: starting a connection is a large future, and every request
        // future (copied as rmcp spawns it) would otherwise carry its room.
        Box::pin(self.own_connection(lease, idle_timeout, context)).await
    }

    /// This session's own connection to the server of `lease`.
    async fn own_connection(
        &self,
        lease: Lease,
        idle_timeout: Duration,
        context: &RequestContext<RoleServer>,
    ) -> Result<Lease, ErrorData> {
        if is_modern(context) {
            return Err(ErrorData::invalid_request(
                format!(
                    "server {} has \"isolation\": \"per-session\" and this 2026-07-28 request has no session to give it a connection of its own; use a client that opens a session (protocol 2025-11-25 or earlier) for it, or set its isolation to \"shared\"",
                    lease.name
                ),
                None,
            ));
        }
        let template = lease.upstream().clone();
        drop(lease);
        let started_now =
            self.session.dedicated.running().iter().all(|upstream| upstream.name != template.name);
        let own = self
            .session
            .dedicated
            .lease(&self.session, &template, idle_timeout, self.inner.options.timing())
            .await;
        // A session that chose a log level gets it from its new connection too.
        if started_now
            && let Some(level) = self.session.log_level()
            && read(&own.catalog).capabilities.logging.is_some()
        {
            let request = ClientRequest::SetLevelRequest(Request::new(SetLevelRequestParams::new(level)));
            if let Err(error) = self.forward_upstream_only(&own, request).await {
                tracing::debug!(upstream = %own.name, %error.message, "could not set the log level of a per-session upstream");
            }
        }
        Ok(own)
    }

    /// The current upstreams; a snapshot, cheap to take.
    pub(crate) fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The offered names for the current upstreams and their catalogs.
    fn names(&self) -> Arc<Names> {
        self.names_of(&self.upstreams())
    }

    /// The offered names for `upstreams` at their current catalogs: the
    /// cached ones while both are what they were built from.
    fn names_of(&self, upstreams: &Arc<Vec<Arc<Upstream>>>) -> Arc<Names> {
        let generations: Vec<u64> =
            upstreams.iter().map(|upstream| read(&upstream.catalog).generation).collect();
        let mut cached = lock(&self.inner.names);
        if let Some(names) = cached
            .as_ref()
            .filter(|names| Arc::ptr_eq(&names.upstreams, upstreams) && names.generations == generations)
        {
            return names.clone();
        }
        let separator = self.inner.options.separator.as_str();
        let tools = NameIndex::build(
            upstreams.iter().map(|upstream| {
                let names = read(&upstream.catalog)
                    .tools
                    .iter()
                    .filter(|tool| upstream.spec.tools.allows(&tool.name))
                    .map(|tool| tool.name.to_string())
                    .collect();
                (upstream.spec.prefix.as_deref(), names)
            }),
            separator,
            true,
        );
        let prompts = NameIndex::build(
            upstreams.iter().map(|upstream| {
                let names =
                    read(&upstream.catalog).prompts.iter().map(|prompt| prompt.name.clone()).collect();
                (upstream.spec.prefix.as_deref(), names)
            }),
            separator,
            false,
        );
        let names = Arc::new(Names { upstreams: upstreams.clone(), generations, tools, prompts });
        *cached = Some(names.clone());
        names
    }

    /// The upstream and its own name for an offered tool or prompt name.
    fn route(&self, exposed: &str, what: &str) -> Result<(Lease, String), ErrorData> {
        // The lease is taken under the lock, so an upstream being replaced
        // is either found with the lease counted, or not found at all.
        let upstreams = self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = self.names_of(&upstreams);
        let index = if what == "tool" { &names.tools } else { &names.prompts };
        let entry = index.get(exposed).ok_or_else(|| {
            ErrorData::invalid_params(
                format!("unknown {what} {exposed:?}; list the {what}s to see what is offered"),
                None,
            )
        })?;
        Ok((names.upstreams[entry.upstream].lease(), entry.original.clone()))
    }

    fn resource_owner(&self, uri: &str) -> Option<Lease> {
        let upstreams = self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let listed = upstreams
            .iter()
            .find(|upstream| read(&upstream.catalog).resources.iter().any(|resource| resource.uri == uri));
        listed.or_else(|| template_owner(&upstreams, uri)).map(Upstream::lease)
    }

    /// Sends `request` to `upstream` on behalf of this session and relays
    /// what the upstream sends meanwhile, until the answer, the request
    /// timeout, or the client's cancellation. Whichever way it ends early,
    /// the upstream gets `notifications/cancelled`.
    async fn forward(
        &self,
        upstream: &Lease,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let binding = binding_of(&request);
        self.forward_bound(upstream, request, binding, context).await
    }

    /// [`Self::forward`] of a request the client may retry with a
    /// `requestState`: `binding` names it as the client sent it (before its
    /// tool or prompt name was translated), so the retry finds its call.
    async fn forward_bound(
        &self,
        upstream: &Lease,
        request: ClientRequest,
        binding: String,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        // Boxed: the exchange with the upstream is the large part of a
        // request's future, and rmcp copies that future as it spawns it.
        Box::pin(self.exchange(upstream, request, binding, context)).await
    }

    /// The body of [`Self::forward_bound`].
    async fn exchange(
        &self,
        upstream: &Lease,
        request: ClientRequest,
        binding: String,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let slot = tokio::select! {
            // Admission is mostly immediate: the cancellation's waiter is
            // registered only when it is not.
            biased;
            slot = upstream.limiter.admit(&upstream.name) => slot?,
            () = context.ct.cancelled() => return Err(ErrorData::internal_error("the request was cancelled", None)),
        };
        let peer = upstream.peer().map_err(|message| ErrorData::internal_error(message, None))?;
        let mut meta = context.meta.clone();
        // rmcp sets a progress token of its own on the upstream request.
        meta.0.0.remove("progressToken");
        if !read(&upstream.catalog).accepts_modern_envelope {
            for key in MODERN_ENVELOPE {
                meta.0.0.remove(key);
            }
        }
        let options = PeerRequestOptions::no_options().with_meta(meta);
        // The upstream may ask or report about this request before its
        // route is registered below; what it sends meanwhile waits for it.
        let announced = upstream.routes.announce();
        let handle = peer
            .send_request_with_option(request, options)
            .await
            .map_err(|error| upstream_error(upstream, error))?;
        let (relay, relayed) = mpsc::channel(RELAY_BUFFER);
        let route = announced.register(
            handle.id.clone(),
            handle.progress_token.clone(),
            Route { session: self.session.id, progress_token: context.meta.get_progress_token(), relay },
        );
        let cancel = CancelOnDrop { peer: Some(peer), id: handle.id.clone() };
        let timeout = self.inner.options.request_timeout;
        let exchange = Exchange {
            upstream: upstream.upstream().lease(),
            _slot: slot,
            _route: route,
            cancel,
            response: Box::pin(handle.await_response()),
            relayed,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            binding,
        };
        self.drive(exchange, context).await
    }

    /// Waits for an upstream call's answer, relaying what the upstream sends
    /// meanwhile. A question (elicitation, sampling, roots) goes to a client
    /// of the earlier revisions as a request of the gateway's own; for a
    /// 2026-07-28 client, which takes no requests, the call is parked and
    /// the question answered as an `InputRequiredResult` (see `parked`).
    async fn drive(
        &self,
        mut exchange: Exchange,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let modern = is_modern(context);
        let upstream = exchange.upstream.upstream().clone();
        let timeout = self.inner.options.request_timeout;
        let mut deliveries = FuturesUnordered::new();
        // One waiter for the whole exchange, not one per turn of the loop.
        let cancelled = context.ct.cancelled();
        tokio::pin!(cancelled);
        let result = loop {
            tokio::select! {
                result = &mut exchange.response => break result.map_err(|error| upstream_error(&upstream, error)),
                Some(message) = exchange.relayed.recv() => match *message {
                    Relay::Notification(notification) => notify(&context.peer, notification).await,
                    Relay::Request { request, reply } if modern => {
                        match self.park(exchange, request, reply) {
                            Ok(asked) => return Ok(asked),
                            Err(back) => exchange = back,
                        }
                    }
                    Relay::Request { request, reply } => deliveries.push(deliver(context.peer.clone(), request, reply)),
                },
                Some(()) = deliveries.next(), if !deliveries.is_empty() => {}
                () = &mut exchange.deadline => {
                    return Err(ErrorData::internal_error(
                        format!(
                            "upstream {} did not answer within {}s; the request was cancelled (raise request_timeout for slow tools)",
                            upstream.name,
                            timeout.as_secs_f64()
                        ),
                        None,
                    ));
                }
                () = &mut cancelled => {
                    return Err(ErrorData::internal_error("the request was cancelled", None));
                }
            }
        };
        exchange.cancel.disarm();
        // rmcp hands each upstream notification to its own task, so one sent
        // just before the answer may still be on its way to the relay; wait
        // until the progress and log notifications read so far are relayed,
        // then deliver them before the answer.
        upstream.links.ledger.caught_up(NOTIFICATION_CATCH_UP).await;
        while let Ok(message) = exchange.relayed.try_recv() {
            if let Relay::Notification(notification) = *message {
                notify(&context.peer, notification).await;
            }
        }
        // A question the upstream withdrew just before it answered (its
        // `notifications/cancelled` comes first on the wire, but rmcp may act
        // on the answer first) must be withdrawn from the client too: let the
        // deliveries still running see that, briefly, before they are dropped.
        if !deliveries.is_empty() {
            let _ = tokio::time::timeout(QUESTION_WIND_DOWN, async {
                while deliveries.next().await.is_some() {}
            })
            .await;
        }
        result
    }

    /// Parks `exchange` with the upstream's question and returns the
    /// `InputRequiredResult` that asks it; or, when the question cannot be
    /// parked (not a kind a client answers that way, or too many parked),
    /// refuses it upstream and gives the exchange back to go on waiting.
    #[allow(clippy::result_large_err)]
    fn park(
        &self,
        exchange: Exchange,
        request: ServerRequest,
        reply: Reply,
    ) -> Result<ServerResult, Exchange> {
        let (kind, question) = match parked::input_request(request) {
            Ok(question) => question,
            Err(method) => {
                let _ = reply.send(Err(ErrorData::invalid_request(
                    format!("a 2026-07-28 client cannot be sent {method}"),
                    None,
                )));
                return Err(exchange);
            }
        };
        let deadline = exchange.deadline.deadline();
        let ttl = deadline.saturating_duration_since(tokio::time::Instant::now());
        let binding = exchange.binding.clone();
        let calls = &self.inner.parked;
        match calls.park(exchange, question, kind, reply, binding, ttl) {
            Ok(asked) => {
                // A client that never comes back must not hold the upstream
                // call for ever: it is cancelled when its time is up.
                let inner = Arc::downgrade(&self.inner);
                let id = asked.id;
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    if let Some(inner) = inner.upgrade()
                        && inner.parked.expire(id)
                    {
                        tracing::info!(
                            parked = id,
                            "a parked call's client did not come back in time; cancelled upstream"
                        );
                    }
                });
                let mut result = InputRequiredResult::from_request_state(asked.request_state);
                result.input_requests = Some(asked.input_requests);
                Ok(ServerResult::InputRequiredResult(result))
            }
            Err((exchange, reply)) => {
                tracing::warn!(upstream = %exchange.upstream.name, "too many calls wait for their clients' answers; a question was refused");
                let _ = reply.send(Err(ErrorData::internal_error(
                    format!(
                        "mcpsock has {} calls waiting for their clients' answers; try again later",
                        parked::MAX_PARKED
                    ),
                    None,
                )));
                Err(exchange)
            }
        }
    }

    /// Continues the call a retry's `requestState` names: the client's
    /// answer goes to the upstream's question, then the call is waited on
    /// again.
    async fn resume(
        &self,
        binding: &str,
        request_state: &str,
        responses: Option<&InputResponses>,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let (exchange, reply, answer) = self.inner.parked.resume(request_state, responses, binding)?;
        // The upstream may have withdrawn its question meanwhile; then the
        // answer has nowhere to go, and the call goes on without it.
        let _ = reply.send(Ok(answer));
        // Boxed: the exchange is the large part of a request's future, and
        // rmcp copies that future as it spawns it.
        Box::pin(self.drive(exchange, context)).await
    }

    /// Forwards a request whose answer is an empty result.
    async fn forward_empty(
        &self,
        upstream: &Lease,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        match self.forward(upstream, request, context).await? {
            ServerResult::EmptyResult(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A request the gateway makes on its own behalf (no client request to
    /// relay to), bounded by the request timeout.
    async fn forward_upstream_only(
        &self,
        upstream: &Upstream,
        request: ClientRequest,
    ) -> Result<ServerResult, ErrorData> {
        let peer = upstream.peer().map_err(|message| ErrorData::internal_error(message, None))?;
        let timeout = self.inner.options.request_timeout;
        // With a timeout, rmcp cancels the request upstream when it expires.
        let handle = peer
            .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
            .await
            .map_err(|error| upstream_error(upstream, error))?;
        handle.await_response().await.map_err(|error| upstream_error(upstream, error))
    }
}

/// The upstreams that are up, with their positions in `upstreams`.
fn running(upstreams: &[Arc<Upstream>]) -> impl Iterator<Item = (usize, &Arc<Upstream>)> {
    upstreams.iter().enumerate().filter(|(_, upstream)| upstream.peer().is_ok())
}

/// For a URI made from a template: the upstream whose template shares the
/// longest literal prefix with it.
fn template_owner<'a>(upstreams: &'a [Arc<Upstream>], uri: &str) -> Option<&'a Arc<Upstream>> {
    upstreams
        .iter()
        .filter_map(|upstream| {
            let catalog = read(&upstream.catalog);
            catalog
                .resource_templates
                .iter()
                .map(|template| template.uri_template.split('{').next().unwrap_or_default())
                .filter(|prefix| !prefix.is_empty() && uri.starts_with(prefix))
                .map(str::len)
                .max()
                .map(|length| (length, upstream))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, upstream)| upstream)
}

/// The `_meta` keys of the 2026-07-28 per-request envelope, which an upstream
/// session begun with `initialize` may refuse.
/// How long an answer waits for the upstream's withdrawn questions to be
/// withdrawn from the client too.
const QUESTION_WIND_DOWN: Duration = Duration::from_millis(250);

/// How long an answer waits for the notifications read before it to be
/// relayed (they normally are within microseconds).
const NOTIFICATION_CATCH_UP: Duration = Duration::from_millis(100);

const MODERN_ENVELOPE: [&str; 4] = [
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientInfo",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/logLevel",
];

/// One upstream call in flight: everything that keeps it going (its lease,
/// its slot of `max_concurrent_requests`, its route, the upstream request)
/// and its deadline, owned so that it can be parked while a 2026-07-28
/// client answers a question. Dropped before the answer, it cancels the
/// upstream request.
pub(crate) struct Exchange {
    upstream: Lease,
    _slot: Slot,
    _route: RouteGuard,
    cancel: CancelOnDrop,
    response: Pin<Box<dyn Future<Output = Result<ServerResult, ServiceError>> + Send>>,
    relayed: mpsc::Receiver<Box<Relay>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The method and target the client's retry must repeat.
    binding: String,
}

/// What a retry must repeat of the request it continues: the method and the
/// tool, prompt or resource.
fn binding_of(request: &ClientRequest) -> String {
    match request {
        ClientRequest::CallToolRequest(request) => binding("tools/call", &request.params.name),
        ClientRequest::GetPromptRequest(request) => binding("prompts/get", &request.params.name),
        ClientRequest::ReadResourceRequest(request) => binding("resources/read", &request.params.uri),
        other => binding(other.method(), ""),
    }
}

fn binding(method: &str, target: &str) -> String {
    format!("{method} {target}")
}

/// Sends `notifications/cancelled` for an upstream request that is dropped
/// before its answer arrived.
struct CancelOnDrop {
    peer: Option<Peer<RoleClient>>,
    id: RequestId,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.peer = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let params =
            CancelledNotificationParam::new(Some(self.id.clone()), Some("cancelled by mcpsock".into()));
        runtime.spawn(async move {
            let _ = peer
                .send_notification(ClientNotification::CancelledNotification(Notification::new(params)))
                .await;
        });
    }
}

async fn notify(peer: &Peer<RoleServer>, notification: ServerNotification) {
    if let Err(error) = peer.send_notification(notification).await {
        tracing::debug!(%error, "could not relay a notification to the client");
    }
}

/// Delivers an upstream's request to the client on the originating
/// request's stream (this runs inside that request's task, which is how rmcp
/// knows the stream) and passes the answer back. When the upstream gives up
/// on its request first, the client's request is cancelled too.
async fn deliver(
    peer: Peer<RoleServer>,
    request: ServerRequest,
    mut reply: oneshot::Sender<Result<rmcp::model::ClientResult, ErrorData>>,
) {
    let handle = match peer.send_request_with_option(request, PeerRequestOptions::no_options()).await {
        Ok(handle) => handle,
        Err(error) => {
            let _ = reply.send(Err(client_error(error)));
            return;
        }
    };
    let id = handle.id.clone();
    let answer = tokio::select! {
        answer = handle.await_response() => Some(answer),
        () = reply.closed() => None,
    };
    match answer {
        Some(answer) => {
            let _ = reply.send(answer.map_err(client_error));
        }
        None => {
            let params =
                CancelledNotificationParam::new(Some(id), Some("the server cancelled its request".into()));
            notify(&peer, ServerNotification::CancelledNotification(Notification::new(params))).await;
        }
    }
}

fn client_error(error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        other => ErrorData::internal_error(format!("the client did not answer: {other}"), None),
    }
}

/// Passes an upstream's own JSON-RPC error through unchanged and turns
/// transport failures into an error that names the upstream.
fn upstream_error(upstream: &Upstream, error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
            // Perhaps it went away: its supervisor checks now rather than
            // at the next ping.
            upstream.suspect();
            ErrorData::internal_error(
                format!(
                    "upstream {} closed the connection; `mcpsock status` or /health shows its state",
                    upstream.name
                ),
                None,
            )
        }
        other => ErrorData::internal_error(format!("upstream {}: {other}", upstream.name), None),
    }
}

fn unexpected(result: &ServerResult) -> ErrorData {
    tracing::debug!(?result, "unexpected result type");
    ErrorData::internal_error("the upstream answered with an unexpected result type", None)
}

/// A `requestState` the gateway issued (to be opened by it), as opposed to
/// none or an upstream's own (passed on untouched).
fn own_state(request_state: Option<&str>) -> Option<&str> {
    request_state.filter(|state| parked::is_ours(Some(state)))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// rmcp runs each request in a task sized for the largest of these
/// methods' futures, and moves that whole future a few times per request.
/// The rare methods with large state (`listen`, `set_level`, `subscribe`,
/// `unsubscribe`, `complete`, and the notification `on_roots_list_changed`)
/// run boxed, so a tool call's task is sized for a tool call.
impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_logging()
            .enable_completions()
            .build();
        let mut instructions = String::from("mcpsock gateway: tools and prompts are named <server>");
        instructions.push_str(&self.inner.options.separator);
        instructions.push_str("<name>.");
        for upstream in self.upstreams().iter() {
            if let Some(text) = &read(&upstream.catalog).instructions {
                instructions.push_str(&format!("\n\n[{}] {text}", upstream.name));
            }
        }
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcpsock", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        self.session.remember_peer(&context.peer);
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.session.remember_peer(&context.peer);
        let names = self.names();
        let mut tools = Vec::with_capacity(names.tools.entries.len());
        for (position, upstream) in running(&names.upstreams) {
            let catalog = read(&upstream.catalog);
            tools.extend(catalog.tools.iter().filter_map(|tool| {
                let exposed = names.tools.exposed(position, &tool.name)?;
                let mut tool = tool.clone();
                tool.name = Cow::Owned(exposed.to_string());
                Some(tool)
            }));
        }
        let (tools, next_cursor) = pages::page(
            "tools",
            tools,
            |tool| &tool.name,
            cursor_of(&request),
            self.inner.options.list_page_size,
        )?;
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.session.remember_peer(&context.peer);
        let binding = binding("tools/call", &request.name);
        let result = match own_state(request.request_state.as_deref()) {
            Some(state) => self.resume(&binding, state, request.input_responses.as_ref(), &context).await?,
            None => {
                let (upstream, tool) = self.route(&request.name, "tool")?;
                let upstream = self.dedicated(upstream, &context).await?;
                let mut upstream_request = request;
                upstream_request.name = tool.into();
                let forwarded = ClientRequest::CallToolRequest(Request::new(upstream_request));
                self.forward_bound(&upstream, forwarded, binding, &context).await?
            }
        };
        match result {
            // The upstream session may be of an older era, whose results
            // carry no resultType; 2026-07-28 clients require it (rmcp
            // strips it again for older clients).
            ServerResult::CallToolResult(mut result) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(CallToolResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(result) => Ok(CallToolResponse::InputRequired(result)),
            ServerResult::CreateTaskResult(result) => Ok(CallToolResponse::Task(result)),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.session.remember_peer(&context.peer);
        let resources = running(&self.upstreams())
            .flat_map(|(_, upstream)| read(&upstream.catalog).resources.clone())
            .collect();
        let size = self.inner.options.list_page_size;
        let (resources, next_cursor) =
            pages::page("resources", resources, |resource| &resource.uri, cursor_of(&request), size)?;
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.session.remember_peer(&context.peer);
        let templates = running(&self.upstreams())
            .flat_map(|(_, upstream)| read(&upstream.catalog).resource_templates.clone())
            .collect();
        let size = self.inner.options.list_page_size;
        let (templates, next_cursor) = pages::page(
            "templates",
            templates,
            |template| &template.uri_template,
            cursor_of(&request),
            size,
        )?;
        let mut result = ListResourceTemplatesResult::with_all_items(templates);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.session.remember_peer(&context.peer);
        let binding = binding("resources/read", &request.uri);
        let result = match own_state(request.request_state.as_deref()) {
            Some(state) => self.resume(&binding, state, request.input_responses.as_ref(), &context).await?,
            None => {
                let upstream = self.resource_owner(&request.uri).ok_or_else(|| not_offered(&request.uri))?;
                let upstream = self.dedicated(upstream, &context).await?;
                let forwarded = ClientRequest::ReadResourceRequest(Request::new(request));
                self.forward_bound(&upstream, forwarded, binding, &context).await?
            }
        };
        match result {
            ServerResult::ReadResourceResult(mut result) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(ReadResourceResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(result) => Ok(ReadResourceResponse::InputRequired(result)),
            other => Err(unexpected(&other)),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Box::pin(async move {
            self.session.remember_peer(&context.peer);
            let uri = request.uri.clone();
            let upstream = self.resource_owner(&uri).ok_or_else(|| not_offered(&uri))?;
            let upstream = self.dedicated(upstream, &context).await?;
            self.forward_empty(&upstream, ClientRequest::SubscribeRequest(Request::new(request)), &context)
                .await?;
            self.session.subscribe(&uri);
            Ok(())
        })
        .await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Box::pin(async move {
            self.session.remember_peer(&context.peer);
            let uri = request.uri.clone();
            self.session.unsubscribe(&uri);
            let upstream = self.resource_owner(&uri).ok_or_else(|| not_offered(&uri))?;
            // A shared upstream subscription ends with its last subscriber; a
            // per-session connection has only this one.
            let shared = upstream.spec.isolation == Isolation::Shared;
            if shared && self.inner.sessions.anyone_subscribed(&uri) {
                return Ok(());
            }
            let upstream = self.dedicated(upstream, &context).await?;
            self.forward_empty(&upstream, ClientRequest::UnsubscribeRequest(Request::new(request)), &context)
                .await
        })
        .await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Box::pin(async move {
            self.session.remember_peer(&context.peer);
            self.session.set_log_level(request.level);
            // One upstream stream serves every session: it runs at the most
            // verbose level any session asked for, and each session gets only
            // the messages at or above its own level.
            let level = self.inner.sessions.most_verbose_level().unwrap_or(LoggingLevel::Debug);
            let shared = running(&self.upstreams()).map(|(_, upstream)| upstream.clone()).collect::<Vec<_>>();
            for upstream in shared.iter().chain(&self.session.dedicated.running()) {
                if read(&upstream.catalog).capabilities.logging.is_none() {
                    continue;
                }
                let upstream = upstream.lease();
                let mut upstream_request = request.clone();
                upstream_request.level = level;
                let forwarded = ClientRequest::SetLevelRequest(Request::new(upstream_request));
                if let Err(error) = self.forward_empty(&upstream, forwarded, &context).await {
                    tracing::warn!(upstream = %upstream.name, %error.message, "could not set the upstream's log level");
                }
            }
            Ok(())


        })

        .await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        Box::pin(async move {
            self.session.remember_peer(&context.peer);
            let mut upstream_request = request;
            let upstream = match &mut upstream_request.r#ref {
                Reference::Prompt(prompt) => {
                    let (upstream, original) = self.route(&prompt.name, "prompt")?;
                    prompt.name = original;
                    upstream
                }
                Reference::Resource(resource) => {
                    self.resource_owner(&resource.uri).ok_or_else(|| not_offered(&resource.uri))?
                }
                _ => return Err(ErrorData::invalid_params("unknown completion reference type", None)),
            };
            if read(&upstream.catalog).capabilities.completions.is_none() {
                return Ok(CompleteResult::default());
            }
            let upstream = self.dedicated(upstream, &context).await?;
            match self
                .forward(&upstream, ClientRequest::CompleteRequest(Request::new(upstream_request)), &context)
                .await?
            {
                ServerResult::CompleteResult(result) => Ok(result),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.session.remember_peer(&context.peer);
        let names = self.names();
        let mut prompts = Vec::new();
        for (position, upstream) in running(&names.upstreams) {
            let catalog = read(&upstream.catalog);
            prompts.extend(catalog.prompts.iter().filter_map(|prompt| {
                let exposed = names.prompts.exposed(position, &prompt.name)?;
                let mut prompt = prompt.clone();
                prompt.name = exposed.to_string();
                Some(prompt)
            }));
        }
        let size = self.inner.options.list_page_size;
        let (prompts, next_cursor) =
            pages::page("prompts", prompts, |prompt| &prompt.name, cursor_of(&request), size)?;
        let mut result = ListPromptsResult::with_all_items(prompts);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.session.remember_peer(&context.peer);
        let binding = binding("prompts/get", &request.name);
        let result = match own_state(request.request_state.as_deref()) {
            Some(state) => self.resume(&binding, state, request.input_responses.as_ref(), &context).await?,
            None => {
                let (upstream, prompt) = self.route(&request.name, "prompt")?;
                let upstream = self.dedicated(upstream, &context).await?;
                let mut upstream_request = request;
                upstream_request.name = prompt;
                let forwarded = ClientRequest::GetPromptRequest(Request::new(upstream_request));
                self.forward_bound(&upstream, forwarded, binding, &context).await?
            }
        };
        match result {
            ServerResult::GetPromptResult(mut result) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(GetPromptResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(result) => Ok(GetPromptResponse::InputRequired(result)),
            other => Err(unexpected(&other)),
        }
    }

    /// 2026-07-28 clients learn of changes on `subscriptions/listen`
    /// streams; the gateway offers everything it can relay.
    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        Box::pin(async move {
            let uris = context.accepted().resource_subscriptions.clone().unwrap_or_default();
            let request = context.request_context();
            // Upstream subscriptions are of the earlier revisions' kind; the
            // gateway holds one per resource for every listener together.
            for uri in &uris {
                let Some(upstream) = self.resource_owner(uri) else { continue };
                let subscribe =
                    ClientRequest::SubscribeRequest(Request::new(SubscribeRequestParams::new(uri.clone())));
                if let Err(error) = self.forward_upstream_only(&upstream, subscribe).await {
                    tracing::debug!(upstream = %upstream.name, %error.message, "resource subscription refused upstream");
                }
            }
            let id = request.id.clone();
            self.inner.sessions.add_listener(context.sink().clone());
            context.cancelled().await;
            self.inner.sessions.remove_listener(&id);
            for uri in &uris {
                if self.inner.sessions.anyone_subscribed(uri) {
                    continue;
                }
                let Some(upstream) = self.resource_owner(uri) else { continue };
                let unsubscribe =
                    ClientRequest::UnsubscribeRequest(Request::new(UnsubscribeRequestParams::new(uri.clone())));
                let _ = self.forward_upstream_only(&upstream, unsubscribe).await;
            }
            Ok(())


        })

        .await
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        Box::pin(async move {
            for (_, upstream) in running(&self.upstreams()) {
                if let Ok(peer) = upstream.peer() {
                    let _ = peer.notify_roots_list_changed().await;
                }
            }
        })
        .await
    }
}

/// Whether a request is of the 2026-07-28 revision or later, whose clients
/// have no session and take no requests from a server.
pub(crate) fn is_modern(context: &RequestContext<RoleServer>) -> bool {
    context.protocol_version().is_some_and(|version| version >= ProtocolVersion::V_2026_07_28)
}

fn cursor_of(request: &Option<PaginatedRequestParams>) -> Option<&str> {
    request.as_ref().and_then(|request| request.cursor.as_deref())
}

fn not_offered(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!("no upstream offers the resource {uri:?}"),
        Some(serde_json::json!({"uri": uri})),
    )
}
#[cfg(test)]
mod future_size {
    use super::*;

    fn size_of_future<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'a Gateway, CallToolRequestParams, RequestContext<RoleServer>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// rmcp moves each request's future into a task of its own, copying it
    /// on the way: the rare, large parts (a per-session connection's start,
    /// the exchange with the upstream) are boxed so that a call copies
    /// about a kilobyte, not the 12 KiB it once did.
    #[test]
    fn a_tool_call_future_stays_small() {
        let size = size_of_future(<Gateway as ServerHandler>::call_tool);
        assert!(size <= 2048, "a tools/call future takes {size} bytes");
    }
}
