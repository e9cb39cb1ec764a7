//! The admin API: `/health`, `/status`, `/config`, `/servers`, `/reload`,
//! `/events`, `/metrics` and `/admin/openapi.json`, served on every
//! listener beside `/mcp`.
//!
//! Who may do what is decided by the request's [`Caller`] (set by the
//! access guard): everyone admitted may read the health, status, server
//! list, events and metrics; only the daemon's own user (on the socket) or
//! the holder of the API key (on TCP) may read the config or change
//! anything. Every reply carries the admin API version in the
//! `mcpsock-admin-protocol` header; only `mcpsock-api` types are sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mcpsock_api::{
    ADMIN_PROTOCOL_VERSION, ApiError, EndpointCounts, EventBody, HealthStatus, MinimalHealth, Status,
    Storage, UpstreamStatus,
};
use mcpsock_gateway::{Gateway, Isolation, UpstreamReport, UpstreamState};
use mcpsock_transport::ListenerStats;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::events::{self, EventBus};
use crate::http::InFlight;
use crate::metrics::{self, Metrics};
use crate::reload::Reloader;
use crate::sessions::BoundSessions;

/// Everything the admin endpoints read or act on.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) gateway: Gateway,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) socket: Option<PathBuf>,
    pub(crate) tcp: Option<std::net::SocketAddr>,
    pub(crate) log_file: Option<PathBuf>,
    pub(crate) events: Arc<EventBus>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) sessions: Arc<BoundSessions>,
    /// Cancelled at shutdown: ends the event streams.
    pub(crate) streams_token: CancellationToken,
    pub(crate) reloader: Reloader,
    pub(crate) ping_every: Duration,
    /// How sessions are stored, as `/status` reports it.
    pub(crate) storage: Storage,
}

/// An admin request that failed: its status and a sentence for the user.
#[derive(Debug)]
pub(crate) struct AdminError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn require_admin(caller: Caller) -> Result<(), AdminError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(AdminError(
        StatusCode::FORBIDDEN,
        "only the daemon's own user (or a TCP client with the API key) may do this".into(),
    ))
}

pub(crate) fn state_of(state: UpstreamState) -> mcpsock_api::UpstreamState {
    match state {
        UpstreamState::Running => mcpsock_api::UpstreamState::Running,
        UpstreamState::Restarting => mcpsock_api::UpstreamState::Restarting,
        UpstreamState::Failed => mcpsock_api::UpstreamState::Failed,
        UpstreamState::Stopped => mcpsock_api::UpstreamState::Stopped,
    }
}

fn upstream_status(report: UpstreamReport) -> UpstreamStatus {
    let supervision = Some(supervision_status(&report));
    let (isolation, idle_timeout) = match report.isolation {
        Isolation::PerSession { idle_timeout } => {
            ("per-session", Some(humantime::format_duration(idle_timeout).to_string()))
        }
        _ => ("shared", None),
    };
    let instances = report
        .instances
        .iter()
        .map(|instance| mcpsock_api::InstanceStatus {
            state: state_of(instance.state),
            pid: instance.pid,
            in_flight: instance.in_flight,
            idle_ms: instance.idle.as_millis().try_into().unwrap_or(u64::MAX),
            restarts: instance.restarts,
        })
        .collect();
    UpstreamStatus {
        isolation: isolation.to_string(),
        idle_timeout,
        instances,
        name: report.name,
        state: state_of(report.state),
        enabled: true,
        pid: report.pid,
        restarts: report.restarts,
        error: report.error,
        last_error: report.last_error,
        tools: report.tools,
        prompts: report.prompts,
        resources: report.resources,
        dropped_messages: report.dropped_messages,
        kind: report.kind.to_string(),
        url: report.url,
        supervision,
    }
}

fn supervision_status(report: &UpstreamReport) -> mcpsock_api::SupervisionStatus {
    let human = |duration: std::time::Duration| humantime::format_duration(duration).to_string();
    let policy = report.supervision;
    mcpsock_api::SupervisionStatus {
        ping_interval: policy.ping_interval.map(human),
        ping_failures_before_restart: mcpsock_gateway::PING_FAILURES_BEFORE_RESTART,
        last_ping: report.last_ping.map(|(at, _)| humantime::format_rfc3339_millis(at).to_string()),
        last_ping_us: report.last_ping.map(|(_, latency)| latency.as_micros().try_into().unwrap_or(u64::MAX)),
        ping_failures: report.ping_failures,
        restart_backoff_initial: human(policy.restart_initial_delay),
        restart_backoff_max: human(policy.restart_max_delay),
        max_restarts: policy.max_restarts,
        restart_window: human(policy.restart_window),
    }
}

impl Admin {
    /// Every configured upstream, the disabled ones included, in name order.
    pub(crate) fn servers(&self) -> Vec<UpstreamStatus> {
        let reports = self.gateway.report();
        let mut servers: Vec<UpstreamStatus> = reports.into_iter().map(upstream_status).collect();
        for name in self.reloader.disabled() {
            if !servers.iter().any(|server| server.name == name) {
                servers.push(UpstreamStatus {
                    kind: self.reloader.kind_of(&name),
                    url: self.reloader.url_of(&name),
                    isolation: self.reloader.isolation_of(&name),
                    name,
                    state: mcpsock_api::UpstreamState::Stopped,
                    enabled: false,
                    pid: None,
                    restarts: 0,
                    error: None,
                    last_error: None,
                    tools: 0,
                    prompts: 0,
                    resources: 0,
                    dropped_messages: 0,
                    supervision: None,
                    idle_timeout: None,
                    instances: Vec::new(),
                });
            }
        }
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        servers
    }

    fn health_status(servers: &[UpstreamStatus]) -> HealthStatus {
        let all_running = servers
            .iter()
            .filter(|server| server.enabled)
            .all(|server| server.state == mcpsock_api::UpstreamState::Running);
        if all_running { HealthStatus::Ok } else { HealthStatus::Degraded }
    }

    pub(crate) async fn status(&self) -> Status {
        let servers = self.servers();
        let running = servers.iter().filter(|server| server.state == mcpsock_api::UpstreamState::Running);
        let endpoints = running.fold(EndpointCounts::default(), |counts, server| EndpointCounts {
            tools: counts.tools + server.tools,
            prompts: counts.prompts + server.prompts,
            resources: counts.resources + server.resources,
        });
        let uptime = Duration::from_secs(self.started.elapsed().as_secs());
        Status {
            status: Self::health_status(&servers),
            version: env!("CARGO_PKG_VERSION").into(),
            admin_protocol: ADMIN_PROTOCOL_VERSION,
            pid: std::process::id(),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            uptime: humantime::format_duration(uptime).to_string(),
            uptime_seconds: uptime.as_secs(),
            socket: self.socket.as_ref().map(|path| path.display().to_string()),
            tcp: self.tcp.map(|address| address.to_string()),
            config_file: self.reloader.config_file().map(|path| path.display().to_string()),
            log_file: self.log_file.as_ref().map(|path| path.display().to_string()),
            storage: self.storage.clone(),
            endpoints,
            upstreams: servers,
            reload: self.reloader.status(self.in_flight.active(), self.gateway.draining().is_some()),
            sessions: self.sessions.open_count(),
            rejected_connections: self.stats.rejected(),
        }
    }

    /// The opening event of a stream: where the daemon listens and how it is.
    pub(crate) fn status_event(&self) -> EventBody {
        let servers = self.servers();
        EventBody::Status {
            status: Self::health_status(&servers),
            pid: std::process::id(),
            socket: self.socket.as_ref().map(|path| path.display().to_string()),
            tcp: self.tcp.map(|address| address.to_string()),
            upstreams: servers.len(),
        }
    }

    async fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        metrics::header(&mut out, "mcpsock_info", "gauge", "Version of the daemon and of its admin API.");
        let _ = writeln!(
            out,
            "mcpsock_info{{version=\"{}\",admin_protocol=\"{ADMIN_PROTOCOL_VERSION}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        metrics::header(&mut out, "mcpsock_uptime_seconds", "gauge", "Seconds since the daemon started.");
        let _ = writeln!(out, "mcpsock_uptime_seconds {}", self.started.elapsed().as_secs());
        self.metrics.render_requests(&mut out);
        metrics::header(&mut out, "mcpsock_requests_in_flight", "gauge", "HTTP requests being answered.");
        let _ = writeln!(out, "mcpsock_requests_in_flight {}", self.in_flight.active());
        metrics::header(&mut out, "mcpsock_sessions", "gauge", "Open MCP sessions.");
        let _ = writeln!(out, "mcpsock_sessions {}", self.sessions.open_count());
        metrics::header(
            &mut out,
            "mcpsock_rejected_connections_total",
            "counter",
            "Unix connections refused because of their peer's uid or gid.",
        );
        let _ = writeln!(out, "mcpsock_rejected_connections_total {}", self.stats.rejected());
        metrics::header(&mut out, "mcpsock_connections_accepted_total", "counter", "Connections accepted.");
        let _ = writeln!(out, "mcpsock_connections_accepted_total {}", self.stats.accepted());
        let servers = self.servers();
        let per_upstream: [PerUpstream; 4] = [
            ("mcpsock_upstream_up", "gauge", "1 while the upstream runs.", |server| {
                u64::from(server.state == mcpsock_api::UpstreamState::Running)
            }),
            (
                "mcpsock_upstream_restarts_total",
                "counter",
                "Restarts after the upstream's process ended.",
                |server| u64::from(server.restarts),
            ),
            ("mcpsock_upstream_tools", "gauge", "Tools the upstream offers.", |server| server.tools as u64),
            (
                "mcpsock_upstream_dropped_messages_total",
                "counter",
                "Lines on the upstream's stdout that were not valid JSON-RPC.",
                |server| server.dropped_messages,
            ),
        ];
        for (name, kind, help, value) in per_upstream {
            metrics::header(&mut out, name, kind, help);
            for server in &servers {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\"}} {}",
                    metrics::escape(&server.name),
                    value(server)
                );
            }
        }
        let (success, failed) = self.reloader.counts();
        metrics::header(&mut out, "mcpsock_reloads_total", "counter", "Config reloads, by outcome.");
        let _ = writeln!(out, "mcpsock_reloads_total{{outcome=\"success\"}} {success}");
        let _ = writeln!(out, "mcpsock_reloads_total{{outcome=\"failed\"}} {failed}");
        out
    }
}

/// Name, type, help text and value of a metric with one sample per upstream.
type PerUpstream = (&'static str, &'static str, &'static str, fn(&UpstreamStatus) -> u64);

/// The admin routes, to be merged into the daemon's router behind the
/// access guard.
pub(crate) fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route(mcpsock_api::HEALTH_PATH, get(health))
        .route(mcpsock_api::STATUS_PATH, get(status))
        .route(mcpsock_api::CONFIG_PATH, get(config))
        .route(mcpsock_api::SERVERS_PATH, get(servers))
        .route("/servers/{name}/{action}", post(server_action))
        .route(mcpsock_api::RELOAD_PATH, post(reload))
        .route(mcpsock_api::EVENTS_PATH, get(events))
        .route(mcpsock_api::METRICS_PATH, get(metrics))
        .route(mcpsock_api::OPENAPI_PATH, get(openapi))
        .with_state(admin)
        .layer(axum::middleware::from_fn(protocol_header))
}

/// Every admin reply names the admin API version, so a client can tell a
/// daemon it does not understand.
async fn protocol_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(mcpsock_api::PROTOCOL_HEADER, HeaderValue::from(ADMIN_PROTOCOL_VERSION));
    response
}

async fn health(State(admin): State<Arc<Admin>>, Extension(caller): Extension<Caller>) -> Response {
    if caller == Caller::Anonymous {
        let status = Admin::health_status(&admin.servers());
        return Json(MinimalHealth { status }).into_response();
    }
    Json(crate::http::gateway_health(&admin.gateway, admin.stats.rejected())).into_response()
}

async fn status(State(admin): State<Arc<Admin>>) -> Json<Status> {
    Json(admin.status().await)
}

async fn config(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<mcpsock_api::EffectiveConfig>, AdminError> {
    require_admin(caller)?;
    Ok(Json(admin.reloader.effective_config(admin.socket.as_deref(), admin.tcp)))
}

async fn servers(State(admin): State<Arc<Admin>>) -> Json<Vec<UpstreamStatus>> {
    Json(admin.servers())
}

async fn server_action(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<mcpsock_api::ServerActionReply>, AdminError> {
    require_admin(caller)?;
    let action = match action.as_str() {
        "enable" => crate::reload::ServerAction::Enable,
        "disable" => crate::reload::ServerAction::Disable,
        "restart" => crate::reload::ServerAction::Restart,
        other => {
            return Err(AdminError(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: use enable, disable or restart"),
            ));
        }
    };
    crate::reload::server_action(&admin, &name, action).await?;
    let server = admin.servers().into_iter().find(|server| server.name == name).ok_or_else(|| {
        AdminError(StatusCode::INTERNAL_SERVER_ERROR, format!("upstream {name} vanished during the action"))
    })?;
    Ok(Json(mcpsock_api::ServerActionReply { name, action: action.name().into(), server }))
}

async fn reload(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<mcpsock_api::ReloadAccepted>), AdminError> {
    require_admin(caller)?;
    let accepted = crate::reload::request_reload(&admin, "admin API")?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn events(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, AdminError> {
    let last_seen = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(events::parse_last_event_id).ok_or_else(|| {
            AdminError(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be the decimal id of an event this daemon sent".into(),
            )
        })?),
    };
    let subscription = admin.events.subscribe(last_seen);
    let mut opening = Vec::new();
    match (last_seen, subscription.lost) {
        (None, _) => opening.push(events::frame_unnumbered(subscription.last_id, admin.status_event())),
        (Some(last_seen), Some((from, to))) => {
            opening.push(events::frame_unnumbered(last_seen, EventBody::EventsLost { from, to }));
            opening.push(events::frame_unnumbered(last_seen, admin.status_event()));
        }
        (Some(_), None) => {}
    }
    let body = axum::body::Body::from_stream(events::stream(
        opening,
        subscription,
        admin.ping_every,
        admin.streams_token.clone(),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response())
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        admin.render_metrics().await,
    )
        .into_response()
}

/// The OpenAPI 3.1 description of this API, written by hand beside the
/// routes (a test checks that both name the same paths).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use mcpsock_config::Config;
    use mcpsock_gateway::GatewayOptions;
    use tower::ServiceExt;

    struct Fixture {
        admin: Arc<Admin>,
        router: Router,
        _dir: tempfile::TempDir,
        config_path: PathBuf,
    }

    async fn fixture(config: serde_json::Value) -> Fixture {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = Config::load(&config_path, true).unwrap();
        let gateway = Gateway::start(Vec::new(), GatewayOptions::default()).await;
        let source = crate::reload::ConfigSource { path: config_path.clone(), explicit: true };
        let admin = Arc::new(Admin {
            gateway,
            started: Instant::now(),
            started_at: SystemTime::now(),
            socket: Some("/run/test/mcpsock.sock".into()),
            tcp: None,
            log_file: None,
            events: Arc::new(EventBus::new(8)),
            metrics: Arc::default(),
            stats: Arc::default(),
            in_flight: Arc::default(),
            sessions: Arc::new(BoundSessions::new(
                Arc::new(mcpsock_store::MemoryStore::default()),
                CancellationToken::new(),
                Arc::new(EventBus::new(8)),
                10,
                Duration::from_secs(60),
            )),
            streams_token: CancellationToken::new(),
            reloader: Reloader::new(config, Some(source), mcpsock_transport::SystemdEnv::default()),
            ping_every: Duration::from_millis(50),
            storage: Storage { mode: "memory".into(), path: None, encrypted: false, durability: None },
        });
        let router = router(admin.clone());
        Fixture { admin, router, _dir: dir, config_path }
    }

    async fn send(
        router: &Router,
        caller: Caller,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(Body::empty()).unwrap();
        request.extensions_mut().insert(caller);
        router.clone().oneshot(request).await.unwrap()
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    }

    #[tokio::test]
    async fn every_documented_path_is_served_with_the_protocol_header() {
        let fixture = fixture(serde_json::json!({})).await;
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["version"], ADMIN_PROTOCOL_VERSION.to_string());
        let paths = document["paths"].as_object().unwrap();
        let mut served = Vec::new();
        for (path, operations) in paths {
            if path == mcpsock_api::API_KEY_PATH {
                continue; // served by the daemon's base router, tested over the socket
            }
            for method in operations.as_object().unwrap().keys() {
                let concrete = path.replace("{name}", "nope").replace("{action}", "restart");
                let response =
                    send(&fixture.router, Caller::Owner, &method.to_uppercase(), &concrete, &[]).await;
                assert_eq!(
                    response.headers().get(mcpsock_api::PROTOCOL_HEADER).map(|value| value.to_str().unwrap()),
                    Some("1"),
                    "{method} {path}: {}",
                    response.status()
                );
                served.push(path.clone());
            }
        }
        for path in [
            mcpsock_api::HEALTH_PATH,
            mcpsock_api::STATUS_PATH,
            mcpsock_api::CONFIG_PATH,
            mcpsock_api::SERVERS_PATH,
            mcpsock_api::RELOAD_PATH,
            mcpsock_api::EVENTS_PATH,
            mcpsock_api::METRICS_PATH,
            mcpsock_api::OPENAPI_PATH,
        ] {
            assert!(served.iter().any(|served| served == path), "{path} is not documented");
        }
        // An undocumented path is not served.
        let response = send(&fixture.router, Caller::Owner, "GET", "/admin/nothing", &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn anonymous_health_is_minimal_and_the_rest_needs_an_admin() {
        let fixture = fixture(serde_json::json!({})).await;
        let anonymous =
            body_json(send(&fixture.router, Caller::Anonymous, "GET", "/health", &[]).await).await;
        assert_eq!(anonymous, serde_json::json!({"status": "ok"}));
        let full = body_json(send(&fixture.router, Caller::Owner, "GET", "/health", &[]).await).await;
        assert_eq!(full["admin_protocol"], 1);
        for (method, path) in [("GET", "/config"), ("POST", "/reload"), ("POST", "/servers/x/disable")] {
            let response = send(&fixture.router, Caller::OtherUser, method, path, &[]).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
            let body = body_json(response).await;
            assert!(body["error"].as_str().unwrap().contains("only the daemon's own user"), "{body}");
        }
        let status = send(&fixture.router, Caller::OtherUser, "GET", "/status", &[]).await;
        assert_eq!(status.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn config_is_redacted() {
        let fixture = fixture(serde_json::json!({
            "mcpServers": {"a": {"command": "/bin/true", "args": ["--flag"], "env": {"TOKEN": "hunter2"}}},
            "api_key": "0123456789abcdef-secret"
        }))
        .await;
        let response = send(&fixture.router, Caller::Owner, "GET", "/config", &[]).await;
        let text =
            String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("0123456789abcdef-secret"), "{text}");
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(config["servers"][0]["env"]["TOKEN"], mcpsock_api::REDACTED);
        assert_eq!(config["servers"][0]["args"], serde_json::json!(["--flag"]));
        assert_eq!(config["socket"], "/run/test/mcpsock.sock");
        assert_eq!(config["socket_mode"], "0600");
    }

    #[tokio::test]
    async fn an_invalid_reload_changes_nothing_and_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let fixture = fixture(serde_json::json!({"mcpServers": {}})).await;
        let check = |text: &'static str, expected: &'static str| {
            let fixture = &fixture;
            async move {
                std::fs::write(&fixture.config_path, text).unwrap();
                let response = send(&fixture.router, Caller::Owner, "POST", "/reload", &[]).await;
                assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{text}");
                let error = body_json(response).await["error"].as_str().unwrap().to_string();
                assert!(error.contains("the old one stays in force") && error.contains(expected), "{error}");
                let status = fixture.admin.status().await;
                assert_eq!(status.reload.last_reload_status, mcpsock_api::ReloadOutcome::Failed);
                assert!(status.reload.last_reload_error.unwrap().contains(expected));
            }
        };
        check("{", "EOF while parsing").await;
        check(r#"{"mcpServers": {"x": {"command": "/nonexistent/server"}}}"#, "cannot be run").await;
        check(r#"{"mcpServers": {}, "sockett": 1}"#, "unknown field").await;
        std::fs::write(&fixture.config_path, "{}").unwrap();
        std::fs::set_permissions(&fixture.config_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let response = send(&fixture.router, Caller::Owner, "POST", "/reload", &[]).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body_json(response).await["error"].as_str().unwrap().contains("lets other users change it"));
        assert!(fixture.admin.reloader.current().servers.is_empty());
        assert_eq!(fixture.admin.reloader.counts(), (0, 4));
    }

    #[tokio::test]
    async fn events_resume_after_the_last_id_and_ping() {
        let fixture = fixture(serde_json::json!({})).await;
        for tools in 0..3 {
            fixture.admin.events.publish(EventBody::ToolsChanged { tools });
        }
        let read_until = |response: Response, wanted: &'static str| async move {
            let mut body = response.into_body();
            let mut text = String::new();
            while !text.contains(wanted) {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap();
                let frame = frame.expect("the stream ended").unwrap();
                text.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
            }
            text
        };
        let fresh = send(&fixture.router, Caller::Owner, "GET", "/events", &[]).await;
        assert_eq!(fresh.headers()[header::CONTENT_TYPE], "text/event-stream");
        let text = read_until(fresh, "event: ping").await;
        assert!(text.starts_with("id: 3\nevent: status\ndata: {"), "{text}");
        assert!(!text.contains("tools.changed"), "a fresh stream replays nothing: {text}");

        let resumed = send(&fixture.router, Caller::Owner, "GET", "/events", &[("last-event-id", "1")]).await;
        let text = read_until(resumed, "\"tools\":2").await;
        assert!(text.starts_with("id: 2\nevent: tools.changed\n"), "{text}");
        assert!(!text.contains("event: status"), "{text}");

        // Events beyond the ring: the gap is announced.
        for tools in 0..10 {
            fixture.admin.events.publish(EventBody::ToolsChanged { tools });
        }
        let gap = send(&fixture.router, Caller::Owner, "GET", "/events", &[("last-event-id", "1")]).await;
        let text = read_until(gap, "id: 13\n").await;
        assert!(text.starts_with("id: 1\nevent: events.lost\n"), "{text}");
        assert!(text.contains("\"from\":2,\"to\":5"), "{text}");

        for bad in ["abc", "-1", "1e5", "99999999999999999999999999"] {
            let response =
                send(&fixture.router, Caller::Owner, "GET", "/events", &[("last-event-id", bad)]).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
