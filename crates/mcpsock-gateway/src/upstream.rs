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
use std::time::{Duration, Instant, SystemTime};

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
use rmcp::{ClientHandler, ErrorData, Peer, RoleClient, ServiceExt};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::downstream::Sessions;
use crate::limits::{Limiter, RequestLimits};
use crate::names::ToolFilter;
use crate::remote::HttpSpec;
use crate::routes::{Relay, Routes, Target};
use crate::spawn::{kill_group_now, spawn_stdio, stop_group};
use crate::stdio::StdioTransport;

/// How an upstream is watched and restarted: the policy the config states.
pub use mcpsock_config::Supervision;

/// How long a stopping upstream gets to exit on its own after its stdin closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to start or reach one upstream, and how it is supervised.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamSpec {
    pub name: String,
    pub transport: UpstreamTransport,
    /// What tool and prompt names start with; `None` offers the upstream's
    /// own names. Defaults to the server name.
    pub prefix: Option<String>,
    /// Which of its tools are offered.
    pub tools: ToolFilter,
    /// How many client requests it serves at once, and how many may wait.
    pub limits: RequestLimits,
    /// Health pings and restarts.
    pub supervision: Supervision,
    /// Whether downstream sessions share one connection or get their own.
    pub isolation: Isolation,
}

/// How downstream sessions share an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isolation {
    /// One connection (one process, for stdio) serves every session.
    #[default]
    Shared,
    /// Every downstream session that uses the server gets a connection of
    /// its own, started at its first request to the server and stopped when
    /// the session ends or after `idle_timeout` without a request. The
    /// shared connection then only tells the catalog (tools, prompts,
    /// resources) and is never sent a client's request.
    PerSession { idle_timeout: Duration },
}

/// How an upstream is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamTransport {
    /// A child process speaking MCP on stdio.
    Stdio(StdioSpec),
    /// A server of its own, speaking Streamable HTTP.
    Http(HttpSpec),
}

/// A program speaking MCP on stdio.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StdioSpec {
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Extra environment, typically secrets: never printed.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("StdioSpec")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env_keys", &env_keys)
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// Consecutive failed pings after which an upstream counts as gone and is
/// restarted. One ping that gets no answer within `request_timeout` is
/// enough: the upstream is hung.
pub const PING_FAILURES_BEFORE_RESTART: u32 = 3;
/// After a failed ping the next one comes this soon (or at the interval,
/// if shorter), so a server that went away is noticed in seconds.
const PING_RETRY: Duration = Duration::from_secs(1);

impl UpstreamSpec {
    /// A stdio upstream: `command` started as a child process.
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>) -> Self {
        let stdio = StdioSpec { command: command.into(), args: Vec::new(), env: Vec::new(), cwd: None };
        Self::with_transport(name, UpstreamTransport::Stdio(stdio))
    }

    /// A Streamable HTTP upstream.
    pub fn http(name: impl Into<String>, http: HttpSpec) -> Self {
        Self::with_transport(name, UpstreamTransport::Http(http))
    }

    fn with_transport(name: impl Into<String>, transport: UpstreamTransport) -> Self {
        let name = name.into();
        Self {
            prefix: Some(name.clone()),
            name,
            transport,
            tools: ToolFilter::default(),
            limits: RequestLimits::default(),
            supervision: Supervision::default(),
            isolation: Isolation::Shared,
        }
    }

    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    pub fn limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn supervision(mut self, supervision: Supervision) -> Self {
        self.supervision = supervision;
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

    /// Arguments of a stdio upstream (ignored for others).
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        if let UpstreamTransport::Stdio(stdio) = &mut self.transport {
            stdio.args = args.into_iter().map(Into::into).collect();
        }
        self
    }

    /// Extra environment of a stdio upstream (ignored for others).
    pub fn env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        if let UpstreamTransport::Stdio(stdio) = &mut self.transport {
            stdio.env = env.into_iter().collect();
        }
        self
    }

    /// Working directory of a stdio upstream (ignored for others).
    pub fn cwd(mut self, cwd: Option<PathBuf>) -> Self {
        if let UpstreamTransport::Stdio(stdio) = &mut self.transport {
            stdio.cwd = cwd;
        }
        self
    }
}

impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSpec")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("prefix", &self.prefix)
            .field("tools", &self.tools)
            .field("limits", &self.limits)
            .field("supervision", &self.supervision)
            .field("isolation", &self.isolation)
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
    /// `"stdio"` or `"http"`.
    pub kind: &'static str,
    /// Where an HTTP upstream is reached (a query string redacted).
    pub url: Option<String>,
    /// Process id of a stdio upstream while it runs.
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
    /// How it is watched and restarted.
    pub supervision: Supervision,
    /// The last ping that was answered, and how long the answer took.
    pub last_ping: Option<(SystemTime, Duration)>,
    /// Pings that failed since the last answered one.
    pub ping_failures: u32,
    /// Shared, or one connection per downstream session.
    pub isolation: Isolation,
    /// The per-session connections now running (none for a shared upstream).
    pub instances: Vec<InstanceReport>,
}

/// One per-session connection of an upstream with `isolation: per-session`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceReport {
    pub state: UpstreamState,
    /// Its process, for a stdio upstream.
    pub pid: Option<u32>,
    /// Client requests being served now.
    pub in_flight: usize,
    /// How long since it last served a request.
    pub idle: Duration,
    pub restarts: u32,
}

/// Something that happened to an upstream, for whoever follows the gateway
/// (see [`crate::GatewayOptions::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamEvent {
    Started {
        name: String,
        /// The process of a stdio upstream.
        pid: Option<u32>,
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
        pid: Option<u32>,
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
            Some(InboundStreamOrigin::OutboundRequest(id)) => self.links.routes.by_request_settled(id).await,
            _ => None,
        };
        let target = match associated {
            Some(route) => Target::Route(route),
            None => self.links.routes.unassociated_settled().await,
        };
        let route = match target {
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
        if route.relay.send(Box::new(Relay::Request { request, reply })).await.is_err() {
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

pub(crate) fn method_of(request: &ServerRequest) -> String {
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

/// rmcp runs each notification in a task sized for the largest of the
/// notification methods' futures: the list refreshes, resource updates and
/// log messages run boxed, so that a progress notification's task is sized
/// for progress.
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
        let Some(route) = self.links.routes.by_progress_settled(&params.progress_token).await else { return };
        let Some(token) = route.progress_token.clone() else { return };
        params.progress_token = token;
        let notification = ServerNotification::ProgressNotification(Notification::new(params));
        // Progress is advisory: a client too slow to take it loses some.
        let _ = route.relay.try_send(Box::new(Relay::Notification(notification)));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        Box::pin(async move {
            let _handled = Handled(&self.links.ledger);
            let level = params.level;
            let notification = ServerNotification::LoggingMessageNotification(Notification::new(params));
            match self.links.routes.unassociated_settled().await {
                Target::Route(route) => {
                    if self.links.sessions.get(route.session).is_some_and(|session| session.wants_log(level))
                    {
                        let _ = route.relay.try_send(Box::new(Relay::Notification(notification)));
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
        })
        .await
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        Box::pin(async move {
            self.broadcast(ServerNotification::ResourceUpdatedNotification(Notification::new(params))).await;
        })
        .await
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        Box::pin(async move {
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
        })
        .await
    }

    async fn on_resource_list_changed(&self, context: NotificationContext<RoleClient>) {
        Box::pin(async move {
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
        })
        .await
    }

    async fn on_prompt_list_changed(&self, context: NotificationContext<RoleClient>) {
        Box::pin(async move {
            match context.peer.list_all_prompts().await {
                Ok(prompts) => write(&self.catalog).prompts = prompts,
                Err(error) => {
                    tracing::warn!(upstream = %self.name, %error, "could not refresh the prompt list")
                }
            }
            self.broadcast(ServerNotification::PromptListChangedNotification(Default::default())).await;
        })
        .await
    }
}

/// How long starts, stops and pings of an upstream may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) init_timeout: Duration,
    pub(crate) stop_grace: Duration,
    /// A ping unanswered this long means the upstream is hung.
    pub(crate) request_timeout: Duration,
}

/// A started (or failed) upstream, and the task that watches it and
/// restarts it when it ends or hangs.
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
    /// When a request last took or released a lease: per-session
    /// connections are stopped after `idle_timeout` without one.
    last_active: Mutex<Instant>,
    /// A request failed on the connection: the supervisor pings at once.
    suspect: Notify,
    pings: Mutex<PingRecord>,
}

#[derive(Debug, Default)]
struct PingRecord {
    last_answered: Option<(SystemTime, Duration)>,
    failures: u32,
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

impl Lease {
    /// The upstream the lease is on.
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *lock(&self.0.last_active) = Instant::now();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

enum Connection {
    Running {
        service: RunningService<RoleClient, UpstreamClient>,
        /// The process of a stdio upstream.
        pid: Option<u32>,
        /// Becomes `Some` (how it ended) when the process exits or the
        /// HTTP transport ends.
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

/// Why a running upstream stopped serving.
enum Ended {
    /// Its process exited or its connection ended.
    Exited(String),
    /// It stopped answering pings.
    Unresponsive(String),
}

impl Upstream {
    /// Starts the process (or connects), completes the MCP handshake within
    /// `init_timeout`, and reads the catalog. Never fails: a failure is
    /// recorded in the upstream's state, where health reports show it. A
    /// started upstream that later ends or hangs is restarted with backoff;
    /// an HTTP upstream that cannot be reached at start is tried again the
    /// same way.
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
                match spec.transport {
                    // A server of its own may come up later: keep trying.
                    UpstreamTransport::Http(_) => Connection::Restarting { error },
                    // A program that cannot start will not start by waiting.
                    UpstreamTransport::Stdio(_) => Connection::Failed { error },
                }
            }
        };
        let supervised = !matches!(connection, Connection::Failed { .. });
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
            last_active: Mutex::new(Instant::now()),
            suspect: Notify::new(),
            pings: Mutex::default(),
        });
        if supervised {
            tokio::spawn(upstream.clone().supervise());
        }
        upstream
    }

    fn is_http(&self) -> bool {
        matches!(self.spec.transport, UpstreamTransport::Http(_))
    }

    /// Watches the upstream while it runs; when it ends or hangs, restarts
    /// it after a growing delay, until it needed more than `max_restarts`
    /// restarts within `restart_window` (a crash loop). An HTTP upstream
    /// that cannot be reached is tried again at the same pace for as long
    /// as it takes; only reconnections that worked count toward the cap.
    async fn supervise(self: Arc<Self>) {
        let policy = self.spec.supervision;
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            if matches!(&*lock(&self.connection), Connection::Running { .. }) {
                let error = match self.watch().await {
                    None => return,
                    Some(Ended::Exited(error)) => error,
                    Some(Ended::Unresponsive(error)) => {
                        tracing::warn!(upstream = %self.name, "{error}; restarting it");
                        error
                    }
                };
                emit(&self.events, UpstreamEvent::Crashed { name: self.name.clone(), error: error.clone() });
                self.set_ended(error);
            }
            let mut attempt = 0;
            loop {
                recent.retain(|at| at.elapsed() < policy.restart_window);
                if recent.len() >= policy.max_restarts as usize {
                    let error = format!(
                        "it was restarted {} times within {} and failed again, so it is not restarted any more (max_restarts); fix it, then run `mcpsock restart {}`",
                        recent.len(),
                        seconds(policy.restart_window),
                        self.name
                    );
                    tracing::error!(upstream = %self.name, "{error}");
                    self.set_state(Connection::Failed { error });
                    return;
                }
                let delay = policy.restart_delay(if self.is_http() { attempt } else { recent.len() });
                tracing::warn!(upstream = %self.name, delay_ms = delay.as_millis() as u64, "restarting the upstream");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stopping.cancelled() => return,
                }
                if !self.is_http() {
                    recent.push_back(Instant::now());
                }
                attempt += 1;
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
                        if self.is_http() {
                            recent.push_back(Instant::now());
                        }
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(upstream = %self.name, "upstream restarted");
                        if let Connection::Running { pid, .. } = &connection {
                            let tools = read(&self.catalog).tools.len();
                            emit(
                                &self.events,
                                UpstreamEvent::Restarted { name: self.name.clone(), pid: *pid, tools },
                            );
                        }
                        *lock(&self.pings) = PingRecord::default();
                        if !self.set_state(connection) {
                            return;
                        }
                        // Lists may have changed while it was away.
                        self.links
                            .sessions
                            .broadcast(ServerNotification::ToolListChangedNotification(Default::default()))
                            .await;
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

    /// Waits while the upstream runs and answers: until its process exits
    /// (or its connection ends), or it fails [`PING_FAILURES_BEFORE_RESTART`]
    /// pings in a row, or leaves one unanswered for `request_timeout`.
    /// `None` when it was stopped.
    async fn watch(&self) -> Option<Ended> {
        let (mut exited, peer) = match &*lock(&self.connection) {
            Connection::Running { exited, service, .. } => (exited.clone(), service.peer().clone()),
            _ => return None,
        };
        let interval = self.spec.supervision.ping_interval;
        let mut next_ping = interval.map(|interval| tokio::time::Instant::now() + interval);
        loop {
            tokio::select! {
                how = exited.wait_for(Option::is_some) => {
                    let how = how.ok().and_then(|how| how.clone()).unwrap_or_else(|| "the connection ended".into());
                    return Some(Ended::Exited(if self.is_http() { how } else { format!("the process ended ({how})") }));
                }
                () = self.stopping.cancelled() => return None,
                () = sleep_until(next_ping) => {}
                () = self.suspect.notified() => {}
            }
            match self.ping(&peer).await {
                Ok(()) => next_ping = interval.map(|interval| tokio::time::Instant::now() + interval),
                Err(PingFailure::Hung) => {
                    return Some(Ended::Unresponsive(format!(
                        "it did not answer a ping within {} (request_timeout)",
                        humanize(self.timing.request_timeout)
                    )));
                }
                Err(PingFailure::Failed(error)) => {
                    let failures = lock(&self.pings).failures;
                    if failures >= PING_FAILURES_BEFORE_RESTART {
                        return Some(Ended::Unresponsive(format!(
                            "{failures} pings in a row failed: {error}"
                        )));
                    }
                    let soon = interval.map_or(PING_RETRY, |interval| interval.min(PING_RETRY));
                    next_ping = Some(tokio::time::Instant::now() + soon);
                }
            }
        }
    }

    /// Sends one MCP `ping` and records the outcome. Any answer counts,
    /// an error answer too: the upstream is there and reading.
    async fn ping(&self, peer: &Peer<RoleClient>) -> Result<(), PingFailure> {
        let started = Instant::now();
        let options = PeerRequestOptions::with_timeout(self.timing.request_timeout);
        let sent =
            peer.send_request_with_option(ClientRequest::PingRequest(Default::default()), options).await;
        let outcome = match sent {
            Ok(handle) => handle.await_response().await.map(drop),
            Err(error) => Err(error),
        };
        let mut pings = lock(&self.pings);
        match outcome {
            Ok(()) | Err(rmcp::ServiceError::McpError(_)) => {
                pings.last_answered = Some((SystemTime::now(), started.elapsed()));
                pings.failures = 0;
                Ok(())
            }
            Err(rmcp::ServiceError::Timeout { .. }) => {
                pings.failures += 1;
                Err(PingFailure::Hung)
            }
            Err(error) => {
                pings.failures += 1;
                tracing::debug!(upstream = %self.name, %error, failures = pings.failures, "a ping failed");
                Err(PingFailure::Failed(root_cause(&error)))
            }
        }
    }

    /// A request failed on the connection: check at once whether the
    /// upstream is still there, instead of at the next ping.
    pub(crate) fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Replaces the connection unless the upstream was stopped meanwhile
    /// (then a new process is stopped at once). Returns whether it did.
    fn set_state(&self, new: Connection) -> bool {
        let mut connection = lock(&self.connection);
        if matches!(*connection, Connection::Stopped) || self.stopping.is_cancelled() {
            if let Connection::Running { pid: Some(pid), .. } = new {
                kill_group_now(pid);
            }
            return false;
        }
        if let Connection::Restarting { error } | Connection::Failed { error } = &new {
            *lock(&self.last_error) = Some(error.clone());
        }
        // The old connection, dropped here, closes its MCP session.
        *connection = new;
        true
    }

    /// It ended or hangs: take down whatever its process left in its
    /// group (an HTTP upstream's session is dropped with the connection).
    fn set_ended(&self, error: String) {
        if let Connection::Running { pid: Some(pid), .. } = &*lock(&self.connection) {
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
            Connection::Running { pid, .. } => (UpstreamState::Running, *pid),
            Connection::Restarting { .. } => (UpstreamState::Restarting, None),
            Connection::Failed { .. } => (UpstreamState::Failed, None),
            Connection::Stopped => (UpstreamState::Stopped, None),
        };
        let (kind, url) = match &self.spec.transport {
            UpstreamTransport::Stdio(_) => ("stdio", None),
            UpstreamTransport::Http(http) => ("http", Some(http.endpoint.to_string())),
        };
        let pings = lock(&self.pings);
        UpstreamReport {
            name: self.name.clone(),
            state,
            kind,
            url,
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
            supervision: self.spec.supervision,
            last_ping: pings.last_answered,
            ping_failures: pings.failures,
            isolation: self.spec.isolation,
            instances: Vec::new(),
        }
    }

    /// What a per-session connection reports about itself.
    pub(crate) fn instance_report(&self) -> InstanceReport {
        let report = self.report();
        InstanceReport {
            state: report.state,
            pid: report.pid,
            in_flight: self.in_flight(),
            idle: lock(&self.last_active).elapsed(),
            restarts: report.restarts,
        }
    }

    /// When a request last held a lease on it (or when it started).
    pub(crate) fn last_active(&self) -> Instant {
        *lock(&self.last_active)
    }

    /// Whether it ended for good: failed to start, or gave up restarting.
    pub(crate) fn is_failed(&self) -> bool {
        matches!(&*lock(&self.connection), Connection::Failed { .. } | Connection::Stopped)
    }

    /// Ended when the upstream is stopped.
    pub(crate) async fn stopped(&self) {
        self.stopping.cancelled().await
    }

    /// The spec this upstream was started from.
    pub(crate) fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// Counts a request routed here until the lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        *lock(&self.last_active) = Instant::now();
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
            // Closing stdin is the polite stop for a stdio server (an HTTP
            // one gets its session deleted); the group signals below follow
            // for one that does not listen.
            let grace = self.timing.stop_grace;
            let polite = CLOSE_TIMEOUT.min(grace);
            let _ = service.close_with_timeout(polite).await;
            if let Some(pid) = pid {
                let _ = tokio::time::timeout(polite, exited.wait_for(Option::is_some)).await;
                stop_group(pid, &mut exited, grace).await;
            }
            emit(&self.events, UpstreamEvent::Stopped { name: self.name.clone() });
        }
    }
}

enum PingFailure {
    /// No answer within `request_timeout`.
    Hung,
    /// The request failed (the connection, typically).
    Failed(String),
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    let client = UpstreamClient {
        name: spec.name.clone(),
        catalog: catalog.clone(),
        links: links.clone(),
        events: events.clone(),
    };
    match &spec.transport {
        UpstreamTransport::Stdio(stdio) => {
            connect_stdio(&spec.name, stdio, client, catalog, links, dropped_messages, timing).await
        }
        UpstreamTransport::Http(http) => connect_http(http, client, catalog, links, timing).await,
    }
}

async fn connect_http(
    http: &HttpSpec,
    client: UpstreamClient,
    catalog: &Arc<RwLock<Catalog>>,
    links: &Links,
    timing: Timing,
) -> Result<Connection, String> {
    let init_timeout = timing.init_timeout;
    let (closed, exited) = watch::channel(None);
    let transport = crate::remote::transport(http, links.ledger.clone(), closed)?;
    let service = match tokio::time::timeout(init_timeout, client.serve(transport)).await {
        Ok(Ok(service)) => service,
        Ok(Err(error)) => return Err(format!("cannot connect to {}: {}", http.endpoint, root_cause(&error))),
        Err(_) => {
            return Err(format!(
                "{} did not answer initialize within {}",
                http.endpoint,
                humanize(init_timeout)
            ));
        }
    };
    // No envelope probe: rmcp's HTTP client takes a request's 2026-07-28
    // envelope as the protocol version of the whole session from then on.
    if let Err(error) = load_catalog(service.peer(), catalog, init_timeout, false).await {
        return Err(format!("listing the capabilities of {} failed: {}", http.endpoint, root_cause(&error)));
    }
    Ok(Connection::Running { service, pid: None, exited })
}

/// What went wrong at the bottom of an error chain: rmcp's transport errors
/// wrap the reason (connection refused, no such socket, an HTTP status) in
/// layers that name Rust types.
pub(crate) fn root_cause(error: &dyn std::error::Error) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    let text = deepest.to_string();
    // Most layers are formatted into one string rather than chained as
    // sources: keep what follows the last "error: ", without rmcp's note
    // of what it was doing.
    let reason = text.rsplit("error: ").next().unwrap_or(&text);
    let reason = reason.split(", when ").next().unwrap_or(reason);
    if reason.trim().is_empty() { text } else { reason.to_string() }
}

async fn connect_stdio(
    name: &str,
    stdio: &StdioSpec,
    client: UpstreamClient,
    catalog: &Arc<RwLock<Catalog>>,
    links: &Links,
    dropped_messages: &Arc<AtomicU64>,
    timing: Timing,
) -> Result<Connection, String> {
    let Timing { init_timeout, stop_grace, .. } = timing;
    let child = spawn_stdio(name, stdio).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: {} (install it, or give its absolute path in the config)",
            stdio.command.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("command is not executable: {} (check its permissions)", stdio.command.display())
        }
        _ => format!("cannot start {}: {error}", stdio.command.display()),
    })?;
    let pid = child.pid;
    let mut exited = child.exited;
    // Only valid JSON-RPC reaches rmcp; everything else the child prints on
    // stdout is dropped and counted.
    let transport =
        StdioTransport::new(name, child.stdout, child.stdin, dropped_messages.clone(), links.ledger.clone());
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
    if let Err(error) = load_catalog(service.peer(), catalog, init_timeout, true).await {
        // Dropping the service closes its transport (stdin) at once.
        drop(service);
        stop_group(pid, &mut exited, stop_grace).await;
        return Err(format!("listing its capabilities failed: {error}"));
    }
    Ok(Connection::Running { service, pid: Some(pid), exited })
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
    probe_envelope: bool,
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
    let accepts_modern_envelope =
        probe_envelope && accepts_modern_envelope(peer, &capabilities, probe_timeout).await;
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

/// `60s`, `1.5s`: a duration as people write it in the config.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
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
    fn restarts_back_off_up_to_the_longest_delay() {
        let policy = Supervision::default();
        let delays: Vec<Duration> = (0..8).map(|attempt| policy.restart_delay(attempt)).collect();
        let millis = |ms| Duration::from_millis(ms);
        assert_eq!(
            delays,
            [
                millis(500),
                millis(1000),
                millis(2000),
                millis(4000),
                millis(8000),
                millis(16000),
                millis(30000),
                millis(30000)
            ]
        );
        let policy =
            Supervision::default().restart_backoff(Duration::from_millis(100), Duration::from_millis(250));
        assert_eq!(policy.restart_delay(0), Duration::from_millis(100));
        assert_eq!(policy.restart_delay(5), Duration::from_millis(250));
        assert_eq!(policy.restart_delay(1000), Duration::from_millis(250));
    }
}
