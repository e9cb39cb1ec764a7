//! The HTTP surface of the daemon: `/mcp` through rmcp's Streamable HTTP
//! service, `/health`, and the in-flight request tracking that shutdown
//! waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::Method;
use http_body_util::BodyExt;
use mcpsock_api::{HEALTH_PATH, Health, HealthStatus, MCP_PATH, UpstreamHealth};
use mcpsock_gateway::{Gateway, UpstreamState};
use mcpsock_transport::ListenerStats;
use rmcp::ServerHandler;

use crate::HealthReporter;
use crate::access::{Access, api_key, guard_access};
use crate::sessions::{BoundSessions, guard_sessions};
use crate::stall::{StreamWatch, watch_streams};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::StreamableHttpService;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Counts requests whose response (including a streamed one) is not yet
/// complete.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    active: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts a POST from its arrival until its response body is fully sent or
/// dropped. Long-lived GET streams are not requests in flight: they are
/// ended when shutdown cancels the streams.
async fn track_in_flight(State(in_flight): State<Arc<InFlight>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    in_flight.active.fetch_add(1, Ordering::AcqRel);
    let guard = InFlightGuard(in_flight);
    let response = next.run(request).await;
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            // The closure owns the guard, so it lives exactly as long as the body.
            let _ = &guard;
            frame
        }))
    })
}

/// `/health` of the gateway daemon: every upstream's state.
pub(crate) fn gateway_health(gateway: &Gateway, rejected_connections: u64) -> Health {
    let upstreams: Vec<UpstreamHealth> = gateway
        .report()
        .into_iter()
        .map(|report| UpstreamHealth {
            name: report.name,
            state: match report.state {
                UpstreamState::Running => mcpsock_api::UpstreamState::Running,
                UpstreamState::Restarting => mcpsock_api::UpstreamState::Restarting,
                UpstreamState::Failed => mcpsock_api::UpstreamState::Failed,
                UpstreamState::Stopped => mcpsock_api::UpstreamState::Stopped,
            },
            pid: report.pid,
            tools: report.tools,
            error: report.error,
            restarts: report.restarts,
            dropped_messages: report.dropped_messages,
            in_flight: report.in_flight,
            queued: report.queued,
            shed: report.shed,
        })
        .collect();
    let all_running = upstreams.iter().all(|upstream| upstream.state == mcpsock_api::UpstreamState::Running);
    Health {
        status: if all_running { HealthStatus::Ok } else { HealthStatus::Degraded },
        admin_protocol: mcpsock_api::ADMIN_PROTOCOL_VERSION,
        upstreams,
        rejected_connections,
    }
}

/// The request-level guards and the state they share.
pub(crate) struct Guards {
    pub(crate) access: Arc<Access>,
    pub(crate) sessions: Arc<BoundSessions>,
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) stream_stall_timeout: std::time::Duration,
}

/// The router served on every listener.
pub(crate) fn router<S>(
    factory: impl Fn() -> S + Send + Sync + 'static,
    health: HealthReporter,
    guards: Guards,
    streams_token: CancellationToken,
) -> Router
where
    S: ServerHandler + Send + 'static,
{
    let Guards { access, sessions, stats, in_flight, stream_stall_timeout } = guards;
    // Origin is refused before rmcp sees a request (see `access`); rmcp's
    // own Origin check stays on as a second line.
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(streams_token)
        .enforce_origin_validation();
    let mcp = StreamableHttpService::new(move || Ok(factory()), sessions.clone(), config);
    let mcp = Router::new()
        .route_service(MCP_PATH, mcp)
        .layer(axum::middleware::from_fn_with_state(sessions, guard_sessions))
        .layer(axum::middleware::from_fn_with_state(StreamWatch::start(stream_stall_timeout), watch_streams));
    let health = get(move || {
        let health = health.clone();
        let stats = stats.clone();
        async move { Json(health(stats.rejected())) }
    });
    Router::new()
        .route(HEALTH_PATH, health)
        .route(mcpsock_api::API_KEY_PATH, get(api_key).with_state(access.clone()))
        .merge(mcp)
        .layer(axum::middleware::from_fn_with_state(in_flight, track_in_flight))
        .layer(axum::middleware::from_fn_with_state(access, guard_access))
}
