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
            r#"{"status":"degraded","admin_protocol":1,"upstreams":[{"name":"time","state":"failed","pid":null,"tools":0,"error":"command not found","restarts":0,"dropped_messages":3,"in_flight":0,"queued":0,"shed":1}],"rejected_connections":2}"#
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
