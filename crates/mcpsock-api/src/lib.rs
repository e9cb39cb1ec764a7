//! Wire types of the mcpsock admin API.
//!
//! These are the only types that cross the boundary between the daemon and
//! its clients (the CLI, monitoring scripts, other programs). They carry no
//! behaviour and do no IO; the daemon converts its internal state into them at
//! the edge.

use serde::{Deserialize, Serialize};

/// Version of the admin API described by this crate. A client compares it
/// with the one a daemon reports and says clearly when they differ.
pub const ADMIN_PROTOCOL_VERSION: u32 = 1;

/// Path of the MCP endpoint on every listener.
pub const MCP_PATH: &str = "/mcp";

/// Path of the health endpoint on every listener.
pub const HEALTH_PATH: &str = "/health";

/// Path that hands the TCP API key to the daemon's own user on the socket.
pub const API_KEY_PATH: &str = "/admin/api-key";

/// Path of the daemon's full status.
pub const STATUS_PATH: &str = "/status";
/// Path that starts a config reload (`POST`).
pub const RELOAD_PATH: &str = "/reload";
/// Path of the effective, redacted config.
pub const CONFIG_PATH: &str = "/config";
/// Path of the upstream server list; `/servers/{name}/{action}` acts on one.
pub const SERVERS_PATH: &str = "/servers";
/// Path of the live event stream (Server-Sent Events).
pub const EVENTS_PATH: &str = "/events";
/// Path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// Path of the OpenAPI description of the admin API.
pub const OPENAPI_PATH: &str = "/admin/openapi.json";
/// Response header naming the admin API version of the daemon.
pub const PROTOCOL_HEADER: &str = "mcpsock-admin-protocol";

/// Error reply of every admin endpoint (any 4xx or 5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and what to do about it.
    pub error: String,
}

/// Reply of `GET /health` to a TCP client without the API key: nothing but
/// whether the daemon serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinimalHealth {
    pub status: HealthStatus,
}

/// Reply of `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `ok` while every upstream runs, else `degraded`.
    pub status: HealthStatus,
    /// The daemon's version (`mcpsock --version`).
    pub version: String,
    /// The admin API version of the daemon ([`ADMIN_PROTOCOL_VERSION`]).
    pub admin_protocol: u32,
    pub pid: u32,
    /// When the daemon started, RFC 3339 in UTC.
    pub started_at: String,
    /// Time since start, human-readable (`1h 2m 3s`).
    pub uptime: String,
    pub uptime_seconds: u64,
    /// The Unix socket it serves, when it serves one.
    pub socket: Option<String>,
    /// The loopback TCP address it serves, when TCP is on.
    pub tcp: Option<String>,
    /// The config file reloads read.
    pub config_file: Option<String>,
    /// Where the daemon writes its log, when not to its standard error.
    pub log_file: Option<String>,
    pub storage: Storage,
    /// What the daemon offers, over all running upstreams.
    pub endpoints: EndpointCounts,
    pub upstreams: Vec<UpstreamStatus>,
    pub reload: ReloadStatus,
    /// Open MCP sessions.
    pub sessions: usize,
    /// Connections closed because the peer's uid/gid is not allowed.
    pub rejected_connections: u64,
}

/// How sessions and events are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// `sqlite` (sessions survive restarts) or `memory` (nothing does).
    pub mode: String,
    /// The database file, for `sqlite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether stored values are encrypted at rest.
    #[serde(default)]
    pub encrypted: bool,
    /// `normal` or `full`, for `sqlite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
}

/// Numbers of tools, prompts and resources offered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounts {
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
}

/// One upstream MCP server in `GET /status` and `GET /servers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub state: UpstreamState,
    /// `false` after `disable` (then `state` is `stopped`).
    pub enabled: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Why it is not running, when it is not.
    pub error: Option<String>,
    /// The most recent failure, kept after the upstream recovered.
    pub last_error: Option<String>,
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
    /// Lines on its stdout that were not valid JSON-RPC, dropped.
    pub dropped_messages: u64,
    /// `"stdio"` (a child process) or `"http"` (a server reached by URL).
    #[serde(default = "stdio")]
    pub kind: String,
    /// Where an `http` upstream is reached; a query string is redacted.
    #[serde(default)]
    pub url: Option<String>,
    /// How it is watched and restarted, and how its pings went (absent for
    /// a disabled upstream).
    #[serde(default)]
    pub supervision: Option<SupervisionStatus>,
    /// `"shared"` (one connection for every session) or `"per-session"`.
    #[serde(default = "shared")]
    pub isolation: String,
    /// With `per-session`: how long a session's connection may go without
    /// a request before it is stopped (`"5m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// With `per-session`: the sessions' own connections now running (the
    /// fields above describe the shared one, which only tells the catalog).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

/// One session's own connection to a `per-session` upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub state: UpstreamState,
    /// Its process, for a stdio upstream.
    pub pid: Option<u32>,
    /// Client requests it is serving now.
    pub in_flight: usize,
    /// Milliseconds since it last served a request.
    pub idle_ms: u64,
    pub restarts: u32,
}

fn stdio() -> String {
    "stdio".into()
}

fn shared() -> String {
    "shared".into()
}

/// An upstream's health pings and restart policy, in `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisionStatus {
    /// How often it is pinged (`"30s"`); `None` when pings are off.
    pub ping_interval: Option<String>,
    /// Consecutive failed pings after which it is restarted (one ping left
    /// unanswered for `request_timeout` is enough).
    pub ping_failures_before_restart: u32,
    /// When the last answered ping was sent, RFC 3339 in UTC.
    pub last_ping: Option<String>,
    /// How long that answer took, in microseconds.
    pub last_ping_us: Option<u64>,
    /// Pings that failed since the last answered one.
    pub ping_failures: u32,
    /// The delay before the first restart (`"500ms"`); it doubles up to
    /// `restart_backoff_max`.
    pub restart_backoff_initial: String,
    pub restart_backoff_max: String,
    /// Restarts allowed within `restart_window` before it is left failed.
    pub max_restarts: u32,
    pub restart_window: String,
}

/// Outcome of the most recent reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// No reload since the daemon started.
    Never,
    Success,
    /// The new config was refused; the old one stays in force.
    Failed,
}

/// The reload part of `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub in_progress: bool,
    /// Replaced upstreams are finishing their requests.
    pub draining: bool,
    /// Requests in flight on the daemon (all listeners).
    pub active_requests: usize,
    /// When the most recent reload finished, RFC 3339 in UTC.
    pub last_reload: Option<String>,
    pub last_reload_status: ReloadOutcome,
    pub last_reload_error: Option<String>,
    /// The id `POST /reload` returned for the most recent reload.
    pub last_reload_request_id: Option<String>,
    /// Config keys that changed but take effect only after a restart.
    pub restart_required: Vec<String>,
}

/// Reply of `POST /reload` (202): the new config is valid and will be
/// applied; `GET /status` or the `reload.finished` event tells the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAccepted {
    /// Always `reload_initiated`.
    pub status: String,
    pub reload_request_id: String,
    /// Another reload was running; this one follows it.
    pub queued: bool,
}

/// Reply of `POST /servers/{name}/{enable|disable|restart}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerActionReply {
    pub name: String,
    /// `enable`, `disable` or `restart`.
    pub action: String,
    /// The upstream after the action.
    pub server: UpstreamStatus,
}

/// Reply of `GET /config`: the configuration in force, every secret
/// replaced by [`REDACTED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveConfig {
    pub config_file: Option<String>,
    pub socket: Option<String>,
    pub socket_mode: String,
    pub listen: Option<String>,
    /// [`REDACTED`] when a key is set.
    pub api_key: Option<String>,
    pub tool_separator: String,
    pub shutdown_grace: String,
    pub init_timeout: String,
    pub request_timeout: String,
    pub header_timeout: String,
    pub session_idle_ttl: String,
    pub stream_stall_timeout: String,
    pub max_connections: usize,
    pub max_sessions_per_principal: usize,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub allow_root: bool,
    pub servers: Vec<ServerConfigView>,
    /// Entries per page of the MCP lists.
    #[serde(default)]
    pub list_page_size: usize,
}

/// One upstream in `GET /config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfigView {
    pub name: String,
    /// The program of a stdio server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The address of an HTTP server (a query string redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Every value is [`REDACTED`]; the names show what is sent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    pub args: Vec<String>,
    /// Every value is [`REDACTED`]; the names show what is set.
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub enabled: bool,
    /// What its tool and prompt names start with; `None` offers its own.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only these of its tools are offered, when set.
    #[serde(default)]
    pub enabled_tools: Option<Vec<String>>,
    #[serde(default)]
    pub disabled_tools: Vec<String>,
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    #[serde(default)]
    pub max_queued_requests: usize,
    /// Human-readable, like every duration in `GET /config`.
    #[serde(default)]
    pub queue_timeout: String,
    /// `"shared"` or `"per-session"`.
    #[serde(default = "shared")]
    pub isolation: String,
    /// With `per-session`: how long a session's connection may stay idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// What a secret is replaced with in every admin reply.
pub const REDACTED: &str = "<redacted>";

/// One event of `GET /events`. On the wire it is an SSE event whose `id`
/// is [`AdminEvent::id`], whose `event` is the kind (`upstream.started`)
/// and whose `data` is this whole object as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEvent {
    /// Increases by one per event; resume with `Last-Event-ID`.
    pub id: u64,
    /// RFC 3339 in UTC.
    pub time: String,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kinds of events and what each carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventBody {
    /// Sent first on every stream: where the daemon listens and how it is.
    #[serde(rename = "status")]
    Status { status: HealthStatus, pid: u32, socket: Option<String>, tcp: Option<String>, upstreams: usize },
    #[serde(rename = "upstream.started")]
    UpstreamStarted { name: String, pid: Option<u32>, tools: usize },
    #[serde(rename = "upstream.failed")]
    UpstreamFailed { name: String, error: String },
    #[serde(rename = "upstream.crashed")]
    UpstreamCrashed { name: String, error: String },
    #[serde(rename = "upstream.restarted")]
    UpstreamRestarted { name: String, pid: Option<u32>, tools: usize },
    #[serde(rename = "upstream.stopped")]
    UpstreamStopped { name: String },
    #[serde(rename = "tools.changed")]
    ToolsChanged { tools: usize },
    #[serde(rename = "reload.started")]
    ReloadStarted { reload_request_id: String },
    #[serde(rename = "reload.finished")]
    ReloadFinished {
        reload_request_id: String,
        added: Vec<String>,
        removed: Vec<String>,
        restarted: Vec<String>,
        restart_required: Vec<String>,
    },
    #[serde(rename = "reload.failed")]
    ReloadFailed { reload_request_id: String, error: String },
    #[serde(rename = "session.opened")]
    SessionOpened { sessions: usize },
    #[serde(rename = "session.closed")]
    SessionClosed { sessions: usize },
    /// Events between `Last-Event-ID` and the oldest one kept were
    /// dropped: refetch `/status` instead of trusting the gap.
    #[serde(rename = "events.lost")]
    EventsLost { from: u64, to: u64 },
}

impl EventBody {
    /// The SSE `event:` name, the same as the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::UpstreamStarted { .. } => "upstream.started",
            Self::UpstreamFailed { .. } => "upstream.failed",
            Self::UpstreamCrashed { .. } => "upstream.crashed",
            Self::UpstreamRestarted { .. } => "upstream.restarted",
            Self::UpstreamStopped { .. } => "upstream.stopped",
            Self::ToolsChanged { .. } => "tools.changed",
            Self::ReloadStarted { .. } => "reload.started",
            Self::ReloadFinished { .. } => "reload.finished",
            Self::ReloadFailed { .. } => "reload.failed",
            Self::SessionOpened { .. } => "session.opened",
            Self::SessionClosed { .. } => "session.closed",
            Self::EventsLost { .. } => "events.lost",
        }
    }
}

/// Reply of `GET /admin/api-key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub api_key: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Overall state of the daemon, as `GET /health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Every configured upstream is running.
    Ok,
    /// The daemon serves, but at least one upstream is not running.
    Degraded,
}

/// Reply of `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// The admin API version of the daemon ([`ADMIN_PROTOCOL_VERSION`]).
    pub admin_protocol: u32,
    pub upstreams: Vec<UpstreamHealth>,
    /// Connections closed because the peer's uid/gid is not allowed.
    pub rejected_connections: u64,
}

/// Lifecycle state of one upstream MCP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamState {
    Starting,
    Running,
    /// Its process ended; it is being restarted with backoff.
    Restarting,
    Failed,
    Stopped,
}

/// One upstream MCP server in `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamHealth {
    pub name: String,
    pub state: UpstreamState,
    /// `"stdio"` or `"http"`.
    #[serde(default = "stdio")]
    pub kind: String,
    /// Where an `http` upstream is reached; a query string is redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Process id of a stdio upstream while it runs.
    pub pid: Option<u32>,
    /// Number of tools the upstream offers.
    pub tools: usize,
    /// Why the upstream is not running, when it is not.
    pub error: Option<String>,
    /// Restarts after its process ended.
    pub restarts: u32,
    /// Lines on its stdout that were not valid JSON-RPC, dropped.
    pub dropped_messages: u64,
    /// Client requests being served by it now.
    #[serde(default)]
    pub in_flight: usize,
    /// Client requests waiting for a free slot (`max_concurrent_requests`).
    #[serde(default)]
    pub queued: usize,
    /// Client requests refused because the queue was full or the wait too long.
    #[serde(default)]
    pub shed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_wire_format_is_stable() {
        let health = Health {
            status: HealthStatus::Degraded,
            admin_protocol: ADMIN_PROTOCOL_VERSION,
            upstreams: vec![UpstreamHealth {
                name: "time".into(),
                state: UpstreamState::Failed,
                kind: "stdio".into(),
                url: None,
                pid: None,
                tools: 0,
                error: Some("command not found".into()),
                restarts: 0,
                dropped_messages: 3,
                in_flight: 0,
                queued: 0,
                shed: 1,
            }],
            rejected_connections: 2,
        };
        let json = serde_json::to_string(&health).unwrap();
        assert_eq!(
            json,
            r#"{"status":"degraded","admin_protocol":1,"upstreams":[{"name":"time","state":"failed","kind":"stdio","pid":null,"tools":0,"error":"command not found","restarts":0,"dropped_messages":3,"in_flight":0,"queued":0,"shed":1}],"rejected_connections":2}"#
        );
        let back: Health = serde_json::from_str(&json).unwrap();
        assert_eq!(back, health);
    }
}

/// Result of `mcpsock bench`, as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// What was measured: an endpoint URL or `stdio:<command>`.
    pub target: String,
    pub tool: String,
    /// `legacy` (sessions via `initialize`) or `2026-07-28` (stateless).
    pub era: String,
    pub connections: usize,
    /// Requests completed in the measured window (after warm-up).
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency_us: LatencySummary,
    /// Resource use of the processes named with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// The first error seen, to tell what went wrong.
    pub first_error: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

/// CPU and memory of the measured server processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pids: Vec<u32>,
    /// User plus system CPU time spent in the measured window.
    pub cpu_seconds: f64,
    pub cpu_us_per_request: f64,
    /// Sum of the processes' peak resident set sizes (VmHWM), in KiB.
    pub peak_rss_kib: u64,
}
