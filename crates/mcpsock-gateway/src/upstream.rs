//! One upstream MCP server: its process, its MCP client session, and the
//! catalog of what it offers.

// Logging, sampling and roots are deprecated by SEP-2577 (2026-07-28), but
// clients and servers of the earlier revisions use them, and a gateway
// passes through what both sides speak.
#![allow(deprecated)]

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, ClientResult, CreateMessageRequestParams,
    CreateMessageResult, CustomRequest, CustomResult, ElicitRequestParams, ElicitResult,
    ElicitationCapability, FormElicitationCapability, Implementation, ListRootsResult,
    LoggingMessageNotificationParam, Notification, ProgressNotificationParam, Prompt, ProtocolVersion,
    Request, RequestMetaObject, RequestNoParam, Resource, ResourceTemplate, ResourceUpdatedNotificationParam,
    RootsCapabilities, SamplingCapability, ServerCapabilities, ServerNotification, ServerRequest, Tool,
    UrlElicitationCapability,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, PeerRequestOptions, RequestContext, RunningService,
};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, ErrorData, Peer, RoleClient, ServiceExt};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::downstream::Sessions;
use crate::limits::{Limiter, RequestLimits};
use crate::names::ToolFilter;
use crate::routes::{Relay, Routes, Target};
use crate::spawn::{filter_stdout, kill_group_now, spawn_stdio, stop_group};

/// Longest JSON-RPC line accepted from an upstream's stdout.
const MAX_UPSTREAM_LINE: usize = 8 * 1024 * 1024;
/// Buffer between the stdout filter and rmcp.
const FILTER_BUFFER: usize = 64 * 1024;
/// How long a stopping upstream gets to exit on its own after its stdin closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to start one upstream: a program speaking MCP on stdio.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamSpec {
    pub name: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Extra environment, typically secrets: never printed.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// What tool and prompt names start with; `None` offers the upstream's
    /// own names. Defaults to the server name.
    pub prefix: Option<String>,
    /// Which of its tools are offered.
    pub tools: ToolFilter,
    /// How many client requests it serves at once, and how many may wait.
    pub limits: RequestLimits,
}

impl UpstreamSpec {
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>) -> Self {
        let name = name.into();
        Self {
            prefix: Some(name.clone()),
            name,
            command: command.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            tools: ToolFilter::default(),
            limits: RequestLimits::default(),
        }
    }

    pub fn limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn prefix(mut self, prefix: Option<String>) -> Self {
        self.prefix = prefix;
        self
    }

    pub fn tools(mut self, tools: ToolFilter) -> Self {
        self.tools = tools;
        self
    }

    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = env.into_iter().collect();
        self
    }

    pub fn cwd(mut self, cwd: Option<PathBuf>) -> Self {
        self.cwd = cwd;
        self
    }
}

impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("UpstreamSpec")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env_keys", &env_keys)
            .field("cwd", &self.cwd)
            .field("prefix", &self.prefix)
            .field("tools", &self.tools)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Lifecycle state of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    Running,
    /// Its process ended; it is being restarted.
    Restarting,
    Failed,
    Stopped,
}

/// What the gateway reports about one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamReport {
    pub name: String,
    pub state: UpstreamState,
    pub pid: Option<u32>,
    pub tools: usize,
    pub error: Option<String>,
    /// Restarts after its process ended.
    pub restarts: u32,
    /// Lines on its stdout that were not valid JSON-RPC, dropped.
    pub dropped_messages: u64,
    /// Client requests being served now.
    pub in_flight: usize,
    /// Client requests waiting for a slot.
    pub queued: usize,
    /// Client requests refused by the limits.
    pub shed: u64,
    pub prompts: usize,
    pub resources: usize,
    /// The most recent failure, kept after the upstream recovered.
    pub last_error: Option<String>,
}

/// Something that happened to an upstream, for whoever follows the gateway
/// (see [`crate::GatewayOptions::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamEvent {
    Started {
        name: String,
        pid: u32,
        tools: usize,
    },
    /// It could not be started.
    Failed {
        name: String,
        error: String,
    },
    /// Its process ended on its own.
    Crashed {
        name: String,
        error: String,
    },
    Restarted {
        name: String,
        pid: u32,
        tools: usize,
    },
    Stopped {
        name: String,
    },
    /// It said its tool list changed, and the list was read again.
    ToolsChanged {
        name: String,
        tools: usize,
    },
}

/// Where upstream events go; sending never blocks and nobody listening is
/// fine.
pub(crate) type EventSender = Option<broadcast::Sender<UpstreamEvent>>;

fn emit(events: &EventSender, event: UpstreamEvent) {
    if let Some(sender) = events {
        let _ = sender.send(event);
    }
}

/// Everything an upstream offers, refreshed when it says its lists changed.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) tools: Vec<Tool>,
    pub(crate) resources: Vec<Resource>,
    pub(crate) resource_templates: Vec<ResourceTemplate>,
    pub(crate) prompts: Vec<Prompt>,
    pub(crate) instructions: Option<String>,
    pub(crate) capabilities: ServerCapabilities,
    /// Whether the upstream serves requests that carry the 2026-07-28
    /// per-request envelope (`_meta` protocol version, client info and
    /// capabilities) on its session. Only then is a 2026-07-28 client's
    /// envelope passed on; other upstreams get the request without it.
    pub(crate) accepts_modern_envelope: bool,
    /// Grows on every change, so that derived data (the offered names) knows
    /// when to rebuild.
    pub(crate) generation: u64,
}

/// What the upstream client shares with the gateway: where to send what an
/// upstream says during a request, and the sessions to tell about changes.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    pub(crate) routes: Arc<Routes>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) ledger: Arc<Ledger>,
}

/// Counts the upstream's progress and log notifications twice: when its
/// stdout filter passes them on (in wire order) and when their handler has
/// relayed them. rmcp hands each notification to a task of its own, so one
/// sent just before an answer may still be on its way when the answer is
/// in; a request waits until the two counts meet before it answers, so its
/// client sees the progress and logs that came first, first.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    read: AtomicU64,
    handled: AtomicU64,
    changed: Notify,
}

impl Ledger {
    /// The stdout filter passed one on.
    pub(crate) fn read_one(&self) {
        self.read.fetch_add(1, Ordering::SeqCst);
    }

    fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until every notification read so far was handled, at most
    /// `bound` (after which the counts are made to agree, so a miscount
    /// costs one wait, not one per request).
    pub(crate) async fn caught_up(&self, bound: std::time::Duration) {
        let target = self.read.load(Ordering::SeqCst);
        let waited = tokio::time::timeout(bound, async {
            loop {
                let changed = self.changed.notified();
                if self.handled.load(Ordering::SeqCst) >= target {
                    return;
                }
                changed.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::debug!("upstream notifications were not all handled in time");
            self.handled.fetch_max(target, Ordering::SeqCst);
        }
    }
}

/// Counts a notification as handled when dropped, whichever way its handler
/// returns.
struct Handled<'a>(&'a Ledger);

impl Drop for Handled<'_> {
    fn drop(&mut self) {
        self.0.handled_one();
    }
}

/// The MCP client side of the connection to one upstream.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamClient {
    name: String,
    catalog: Arc<RwLock<Catalog>>,
    links: Links,
    events: EventSender,
}

/// The client capabilities mcpsock declares upstream: everything a client
/// may offer, because a downstream client may offer it. A request the
/// downstream client cannot serve is answered with its error.
fn relayed_capabilities() -> ClientCapabilities {
    let mut capabilities = ClientCapabilities::default();
    capabilities.elicitation = Some(
        ElicitationCapability::new()
            .with_form(FormElicitationCapability::new())
            .with_url(UrlElicitationCapability::new()),
    );
    capabilities.sampling = Some(SamplingCapability::default());
    let mut roots = RootsCapabilities::default();
    roots.list_changed = Some(true);
    capabilities.roots = Some(roots);
    capabilities
}

impl UpstreamClient {
    /// Hands a server-initiated request to the downstream request that
    /// caused it and waits for its client's answer. Over Streamable HTTP the
    /// upstream's stream says which request that is; over stdio it is the
    /// request in flight, provided all in-flight requests come from one
    /// session.
    async fn relay(
        &self,
        request: ServerRequest,
        context: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        let method = method_of(&request);
        let associated = match context.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => self.links.routes.by_request(id),
            _ => None,
        };
        let route = match associated.map(Target::Route).unwrap_or_else(|| self.links.routes.unassociated()) {
            Target::Route(route) => route,
            Target::Ambiguous(sessions) => {
                tracing::warn!(upstream = %self.name, method, ?sessions, "a server request could belong to several sessions; refused");
                return Err(ErrorData::invalid_request(
                    format!(
                        "mcpsock cannot tell which of {} client sessions this {} belongs to; give upstream {} \"isolation\": \"per-session\"",
                        sessions.len(),
                        method,
                        self.name
                    ),
                    None,
                ));
            }
            Target::Idle => {
                return Err(ErrorData::invalid_request(
                    format!("{} is only relayed while a client request to this server is in flight", method),
                    None,
                ));
            }
        };
        let (reply, answer) = oneshot::channel();
        if route.relay.send(Relay::Request { request, reply }).await.is_err() {
            return Err(ErrorData::internal_error("the client request that caused this has ended", None));
        }
        tokio::select! {
            answer = answer => answer.unwrap_or_else(|_| Err(ErrorData::internal_error("the client request that caused this has ended", None))),
            // The upstream cancelled its request: dropping `answer` makes the
            // relaying task cancel the client's side too.
            () = context.ct.cancelled() => Err(ErrorData::internal_error("cancelled by the server", None)),
        }
    }

    async fn broadcast(&self, notification: ServerNotification) {
        self.links.sessions.broadcast(notification).await;
    }
}

fn method_of(request: &ServerRequest) -> String {
    match request {
        ServerRequest::PingRequest(_) => "ping".into(),
        ServerRequest::CreateMessageRequest(_) => "sampling/createMessage".into(),
        ServerRequest::ListRootsRequest(_) => "roots/list".into(),
        ServerRequest::ElicitRequest(_) => "elicitation/create".into(),
        ServerRequest::CustomRequest(request) => request.method.clone(),
        _ => "a server request".into(),
    }
}

fn unexpected(result: ClientResult) -> ErrorData {
    tracing::debug!(?result, "a client answered a relayed request with the wrong result type");
    ErrorData::internal_error("the client answered with an unexpected result type", None)
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(relayed_capabilities(), Implementation::new("mcpsock", env!("CARGO_PKG_VERSION")))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        match self.relay(ServerRequest::ElicitRequest(Request::new(request)), &context).await? {
            ClientResult::ElicitResult(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        match self.relay(ServerRequest::CreateMessageRequest(Request::new(params)), &context).await? {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            other => Err(unexpected(other)),
        }
    }

    async fn list_roots(&self, context: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        let request = RequestNoParam { method: Default::default(), extensions: Default::default() };
        match self.relay(ServerRequest::ListRootsRequest(request), &context).await? {
            ClientResult::ListRootsResult(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<CustomResult, ErrorData> {
        match self.relay(ServerRequest::CustomRequest(request), &context).await? {
            ClientResult::CustomResult(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _handled = Handled(&self.links.ledger);
        // rmcp gives every upstream request a progress token of its own; the
        // client's token (if it asked for progress at all) goes back on.
        let Some(route) = self.links.routes.by_progress(&params.progress_token) else { return };
        let Some(token) = route.progress_token.clone() else { return };
        params.progress_token = token;
        let notification = ServerNotification::ProgressNotification(Notification::new(params));
        // Progress is advisory: a client too slow to take it loses some.
        let _ = route.relay.try_send(Relay::Notification(notification));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _handled = Handled(&self.links.ledger);
        let level = params.level;
        let notification = ServerNotification::LoggingMessageNotification(Notification::new(params));
        match self.links.routes.unassociated() {
            Target::Route(route) => {
                if self.links.sessions.get(route.session).is_some_and(|session| session.wants_log(level)) {
                    let _ = route.relay.try_send(Relay::Notification(notification));
                }
            }
            // Not tied to one session's request: every session that asked
            // for log messages at this level gets it.
            Target::Ambiguous(_) | Target::Idle => {
                for session in self.links.sessions.live() {
                    if session.log_level().is_some() && session.wants_log(level) {
                        session.notify(notification.clone()).await;
                    }
                }
            }
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.broadcast(ServerNotification::ResourceUpdatedNotification(Notification::new(params))).await;
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_tools().await {
            Ok(tools) => {
                let count = tools.len();
                write(&self.catalog).tools = tools;
                emit(&self.events, UpstreamEvent::ToolsChanged { name: self.name.clone(), tools: count });
            }
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the tool list")
            }
        }
        self.broadcast(ServerNotification::ToolListChangedNotification(Default::default())).await;
    }

    async fn on_resource_list_changed(&self, context: NotificationContext<RoleClient>) {
        let refreshed = async {
            let resources = context.peer.list_all_resources().await?;
            let templates = context.peer.list_all_resource_templates().await?;
            Ok::<_, rmcp::ServiceError>((resources, templates))
        };
        match refreshed.await {
            Ok((resources, templates)) => {
                let mut catalog = write(&self.catalog);
                catalog.resources = resources;
                catalog.resource_templates = templates;
            }
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the resource list")
            }
        }
        self.broadcast(ServerNotification::ResourceListChangedNotification(Default::default())).await;
    }

    async fn on_prompt_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_prompts().await {
            Ok(prompts) => write(&self.catalog).prompts = prompts,
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the prompt list")
            }
        }
        self.broadcast(ServerNotification::PromptListChangedNotification(Default::default())).await;
    }
}

/// How long starts and stops of an upstream may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) init_timeout: Duration,
    pub(crate) stop_grace: Duration,
}

/// Restarts allowed within [`CRASH_WINDOW`] before the upstream is left
/// failed (a crash loop).
const MAX_RESTARTS_PER_WINDOW: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const LONGEST_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The delay before the next restart, given how many restarts happened in
/// the last [`CRASH_WINDOW`]; `None` when that is a crash loop.
pub(crate) fn restart_delay(recent_restarts: usize) -> Option<Duration> {
    if recent_restarts >= MAX_RESTARTS_PER_WINDOW {
        return None;
    }
    let factor = 1u32 << recent_restarts.min(16);
    Some(FIRST_RESTART_DELAY.saturating_mul(factor).min(LONGEST_RESTART_DELAY))
}

/// A started (or failed) upstream, and the task that restarts it when its
/// process ends.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) spec: UpstreamSpec,
    timing: Timing,
    pub(crate) catalog: Arc<RwLock<Catalog>>,
    /// The downstream requests in flight on this upstream.
    pub(crate) routes: Arc<Routes>,
    /// `max_concurrent_requests` and its queue.
    pub(crate) limiter: Limiter,
    pub(crate) links: Links,
    connection: Mutex<Connection>,
    restarts: AtomicU32,
    /// Lines from the upstream's stdout that were not valid JSON-RPC.
    dropped_messages: Arc<AtomicU64>,
    /// Cancelled when the upstream is stopped: ends its supervisor.
    stopping: CancellationToken,
    events: EventSender,
    last_error: Mutex<Option<String>>,
    /// Requests routed to this upstream and not yet answered.
    in_flight: AtomicUsize,
    idle: Notify,
}

/// A request's hold on the upstream it was routed to: an upstream being
/// replaced is stopped only once no lease is left (or its grace ends).
pub(crate) struct Lease(Arc<Upstream>);

impl std::ops::Deref for Lease {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

enum Connection {
    Running {
        service: RunningService<RoleClient, UpstreamClient>,
        pid: u32,
        exited: watch::Receiver<Option<String>>,
    },
    Restarting {
        error: String,
    },
    Failed {
        error: String,
    },
    Stopped,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Starts the process, completes the MCP handshake within
    /// `init_timeout`, and reads the catalog. Never fails: a failure is
    /// recorded in the upstream's state, where health reports show it. A
    /// started upstream whose process later ends is restarted with backoff.
    pub(crate) async fn start(
        spec: &UpstreamSpec,
        timing: Timing,
        sessions: Arc<Sessions>,
        events: EventSender,
    ) -> Arc<Self> {
        let catalog = Arc::new(RwLock::new(Catalog::default()));
        let dropped_messages = Arc::new(AtomicU64::new(0));
        let links = Links { routes: Arc::new(Routes::default()), sessions, ledger: Arc::default() };
        let mut last_error = None;
        let connection = match connect(spec, &catalog, &links, &dropped_messages, timing, &events).await {
            Ok(connection) => {
                let tools = read(&catalog).tools.len();
                tracing::info!(upstream = %spec.name, tools, "upstream started");
                if let Connection::Running { pid, .. } = &connection {
                    emit(&events, UpstreamEvent::Started { name: spec.name.clone(), pid: *pid, tools });
                }
                connection
            }
            Err(error) => {
                tracing::error!(upstream = %spec.name, "upstream failed to start: {error}");
                emit(&events, UpstreamEvent::Failed { name: spec.name.clone(), error: error.clone() });
                last_error = Some(error.clone());
                Connection::Failed { error }
            }
        };
        let running = matches!(connection, Connection::Running { .. });
        let upstream = Arc::new(Self {
            name: spec.name.clone(),
            spec: spec.clone(),
            timing,
            catalog,
            routes: links.routes.clone(),
            limiter: Limiter::new(spec.limits),
            links,
            connection: Mutex::new(connection),
            restarts: AtomicU32::new(0),
            dropped_messages,
            stopping: CancellationToken::new(),
            events,
            last_error: Mutex::new(last_error),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        if running {
            tokio::spawn(upstream.clone().supervise());
        }
        upstream
    }

    /// Watches the process; when it ends, restarts it after a growing delay,
    /// until it crashes too often within a minute.
    async fn supervise(self: Arc<Self>) {
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            let mut exited = match &*lock(&self.connection) {
                Connection::Running { exited, .. } => exited.clone(),
                _ => return,
            };
            tokio::select! {
                _ = exited.wait_for(Option::is_some) => {}
                () = self.stopping.cancelled() => return,
            }
            let how = exited.borrow().clone().unwrap_or_default();
            let error = format!("the process ended ({how})");
            emit(&self.events, UpstreamEvent::Crashed { name: self.name.clone(), error: error.clone() });
            self.set_ended(error);
            loop {
                recent.retain(|at| at.elapsed() < CRASH_WINDOW);
                let Some(delay) = restart_delay(recent.len()) else {
                    let error = format!(
                        "it ended {} times within {}s, so it is not restarted again; fix it, then restart mcpsock",
                        recent.len() + 1,
                        CRASH_WINDOW.as_secs()
                    );
                    tracing::error!(upstream = %self.name, "{error}");
                    self.set_state(Connection::Failed { error });
                    return;
                };
                tracing::warn!(upstream = %self.name, delay_ms = delay.as_millis() as u64, "restarting the upstream");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stopping.cancelled() => return,
                }
                recent.push_back(Instant::now());
                match connect(
                    &self.spec,
                    &self.catalog,
                    &self.links,
                    &self.dropped_messages,
                    self.timing,
                    &self.events,
                )
                .await
                {
                    Ok(connection) => {
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(upstream = %self.name, "upstream restarted");
                        if let Connection::Running { pid, .. } = &connection {
                            let tools = read(&self.catalog).tools.len();
                            emit(
                                &self.events,
                                UpstreamEvent::Restarted { name: self.name.clone(), pid: *pid, tools },
                            );
                        }
                        if !self.set_state(connection) {
                            return;
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(upstream = %self.name, "restart failed: {error}");
                        self.set_state(Connection::Restarting { error });
                    }
                }
            }
        }
    }

    /// Replaces the connection unless the upstream was stopped meanwhile
    /// (then a new process is stopped at once). Returns whether it did.
    fn set_state(&self, new: Connection) -> bool {
        let mut connection = lock(&self.connection);
        if matches!(*connection, Connection::Stopped) || self.stopping.is_cancelled() {
            if let Connection::Running { pid, .. } = new {
                kill_group_now(pid);
            }
            return false;
        }
        if let Connection::Restarting { error } | Connection::Failed { error } = &new {
            *lock(&self.last_error) = Some(error.clone());
        }
        *connection = new;
        true
    }

    /// The process ended: take down whatever it left in its group.
    fn set_ended(&self, error: String) {
        if let Connection::Running { pid, .. } = &*lock(&self.connection) {
            kill_group_now(*pid);
        }
        self.set_state(Connection::Restarting { error });
    }

    /// The MCP peer, while the upstream runs.
    pub(crate) fn peer(&self) -> Result<Peer<RoleClient>, String> {
        match &*lock(&self.connection) {
            Connection::Running { exited, .. } if exited.borrow().is_some() => {
                Err(format!("upstream {} ended and is being restarted", self.name))
            }
            Connection::Running { service, .. } => Ok(service.peer().clone()),
            Connection::Restarting { error } => {
                Err(format!("upstream {} is restarting after a failure: {error}", self.name))
            }
            Connection::Failed { error } => Err(format!("upstream {} is not running: {error}", self.name)),
            Connection::Stopped => Err(format!("upstream {} was stopped", self.name)),
        }
    }

    pub(crate) fn report(&self) -> UpstreamReport {
        let error = self.peer().err();
        let (state, pid) = match &*lock(&self.connection) {
            Connection::Running { pid, .. } => (UpstreamState::Running, Some(*pid)),
            Connection::Restarting { .. } => (UpstreamState::Restarting, None),
            Connection::Failed { .. } => (UpstreamState::Failed, None),
            Connection::Stopped => (UpstreamState::Stopped, None),
        };
        UpstreamReport {
            name: self.name.clone(),
            state,
            pid,
            tools: read(&self.catalog).tools.len(),
            error,
            restarts: self.restarts.load(Ordering::Relaxed),
            dropped_messages: self.dropped_messages.load(Ordering::Relaxed),
            in_flight: self.limiter.load.in_flight.load(Ordering::Relaxed),
            queued: self.limiter.load.queued.load(Ordering::Relaxed),
            shed: self.limiter.load.shed.load(Ordering::Relaxed),
            prompts: read(&self.catalog).prompts.len(),
            resources: read(&self.catalog).resources.len(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// The spec this upstream was started from.
    pub(crate) fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// Counts a request routed here until the lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease(self.clone())
    }

    /// Requests routed here and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no request holds a lease, or `grace` passed; says
    /// whether it drained.
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, idle).await.is_ok()
    }

    /// Closes the MCP session and stops the process group.
    pub(crate) async fn stop(&self) {
        self.stopping.cancel();
        let connection = std::mem::replace(&mut *lock(&self.connection), Connection::Stopped);
        if let Connection::Running { mut service, pid, mut exited } = connection {
            // Closing stdin is the polite stop for a stdio server; the
            // group signals below follow for one that does not listen.
            let grace = self.timing.stop_grace;
            let polite = CLOSE_TIMEOUT.min(grace);
            let _ = service.close_with_timeout(polite).await;
            let _ = tokio::time::timeout(polite, exited.wait_for(Option::is_some)).await;
            stop_group(pid, &mut exited, grace).await;
            emit(&self.events, UpstreamEvent::Stopped { name: self.name.clone() });
        }
    }
}

async fn connect(
    spec: &UpstreamSpec,
    catalog: &Arc<RwLock<Catalog>>,
    links: &Links,
    dropped_messages: &Arc<AtomicU64>,
    timing: Timing,
    events: &EventSender,
) -> Result<Connection, String> {
    let Timing { init_timeout, stop_grace } = timing;
    let child = spawn_stdio(spec).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: {} (install it, or give its absolute path in the config)",
            spec.command.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("command is not executable: {} (check its permissions)", spec.command.display())
        }
        _ => format!("cannot start {}: {error}", spec.command.display()),
    })?;
    let pid = child.pid;
    let mut exited = child.exited;
    let client = UpstreamClient {
        name: spec.name.clone(),
        catalog: catalog.clone(),
        links: links.clone(),
        events: events.clone(),
    };
    // Only valid JSON-RPC reaches rmcp; everything else the child prints on
    // stdout is dropped and counted.
    let (filtered, filter_output) = tokio::io::duplex(FILTER_BUFFER);
    tokio::spawn(filter_stdout(
        spec.name.clone(),
        child.stdout,
        filter_output,
        dropped_messages.clone(),
        links.ledger.clone(),
    ));
    let transport = AsyncRwTransport::new(filtered, child.stdin).with_max_line_length(MAX_UPSTREAM_LINE);
    let handshake = tokio::select! {
        result = tokio::time::timeout(init_timeout, client.serve(transport)) => result,
        how = exited.wait_for(Option::is_some) => {
            let how = how.map(|how| how.clone().unwrap_or_default()).unwrap_or_default();
            return Err(format!("the process ended during the MCP handshake ({how}); see its stderr in the log"));
        }
    };
    let service = match handshake {
        Ok(Ok(service)) => service,
        Ok(Err(error)) => {
            stop_group(pid, &mut exited, stop_grace).await;
            return Err(format!("the MCP handshake failed: {error}"));
        }
        Err(_) => {
            stop_group(pid, &mut exited, stop_grace).await;
            return Err(format!("no answer to initialize within {}", humanize(init_timeout)));
        }
    };
    if let Err(error) = load_catalog(service.peer(), catalog, init_timeout).await {
        // Dropping the service closes its transport (stdin) at once.
        drop(service);
        stop_group(pid, &mut exited, stop_grace).await;
        return Err(format!("listing its capabilities failed: {error}"));
    }
    Ok(Connection::Running { service, pid, exited })
}

/// Asks the upstream for a list with a 2026-07-28 envelope in `_meta`: rmcp
/// servers serve such requests on any session, others (the Python SDK's, for
/// one) refuse them on a session that began with `initialize`.
async fn accepts_modern_envelope(
    peer: &Peer<RoleClient>,
    capabilities: &ServerCapabilities,
    timeout: Duration,
) -> bool {
    let request = if capabilities.tools.is_some() {
        ClientRequest::ListToolsRequest(Default::default())
    } else if capabilities.prompts.is_some() {
        ClientRequest::ListPromptsRequest(Default::default())
    } else if capabilities.resources.is_some() {
        ClientRequest::ListResourcesRequest(Default::default())
    } else {
        return false;
    };
    let envelope = RequestMetaObject::with_client_context(
        ProtocolVersion::V_2026_07_28,
        Implementation::new("mcpsock", env!("CARGO_PKG_VERSION")),
        relayed_capabilities(),
    );
    let options = PeerRequestOptions::with_timeout(timeout).with_meta(envelope);
    match peer.send_request_with_option(request, options).await {
        Ok(handle) => handle.await_response().await.is_ok(),
        Err(_) => false,
    }
}

async fn load_catalog(
    peer: &Peer<RoleClient>,
    catalog: &RwLock<Catalog>,
    probe_timeout: Duration,
) -> Result<(), rmcp::ServiceError> {
    let info = peer.peer_info();
    let capabilities = info.as_ref().map(|info| info.capabilities.clone()).unwrap_or_default();
    let tools = if capabilities.tools.is_some() { peer.list_all_tools().await? } else { Vec::new() };
    let (resources, resource_templates) = if capabilities.resources.is_some() {
        (peer.list_all_resources().await?, peer.list_all_resource_templates().await?)
    } else {
        (Vec::new(), Vec::new())
    };
    let prompts = if capabilities.prompts.is_some() { peer.list_all_prompts().await? } else { Vec::new() };
    let accepts_modern_envelope = accepts_modern_envelope(peer, &capabilities, probe_timeout).await;
    let mut catalog = write(catalog);
    catalog.accepts_modern_envelope = accepts_modern_envelope;
    catalog.tools = tools;
    catalog.resources = resources;
    catalog.resource_templates = resource_templates;
    catalog.prompts = prompts;
    catalog.instructions = info.as_ref().and_then(|info| info.instructions.clone());
    catalog.capabilities = capabilities;
    Ok(())
}

fn humanize(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

// The locks guard plain data and are never held across an await; a panic
// while holding one cannot leave the data half-written in a way that
// matters, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn read(lock: &RwLock<Catalog>) -> std::sync::RwLockReadGuard<'_, Catalog> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write access to a catalog, which counts as a change.
fn write(lock: &RwLock<Catalog>) -> std::sync::RwLockWriteGuard<'_, Catalog> {
    let mut catalog = lock.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    catalog.generation += 1;
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_stop_at_a_crash_loop() {
        let delays: Vec<Option<Duration>> = (0..7).map(restart_delay).collect();
        assert_eq!(
            delays,
            [
                Some(Duration::from_millis(500)),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None,
                None
            ]
        );
    }
}
