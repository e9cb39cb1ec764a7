//! The HTTP surface of the daemon: `/mcp` (a tool call in an open session
//! answered by `tool_call`, anything else by rmcp's Streamable HTTP
//! service), the routes beside it (`/health`, or the whole admin API), and
//! the in-flight request tracking that shutdown waits on.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http::Method;
use http_body_util::BodyExt;
use mcpsock_api::{EventBody, HEALTH_PATH, Health, HealthStatus, MCP_PATH, UpstreamHealth};
use mcpsock_gateway::Gateway;
use mcpsock_transport::{ConnectionControl, ListenerStats};
use rmcp::ServerHandler;

use crate::HealthReporter;
use crate::access::{Access, api_key};
use crate::events::EventBus;
use crate::metrics::{self, Metrics, Outcome};
use crate::persist::SessionStoreAdapter;
use crate::sessions::{BoundSessions, guard_sessions};
use crate::stall::StreamWatch;
use crate::tool_call::{self, Taken};
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

/// Largest request body accepted on `/mcp`, the same bound rmcp applies.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

/// The timing and outcome of one `/mcp` request, recorded when its reply's
/// body ends (or is dropped).
struct Observation {
    metrics: Arc<Metrics>,
    method: Cow<'static, str>,
    started: Instant,
    outcome: Outcome,
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.metrics.observe(&self.method, self.outcome.label(), self.started.elapsed().as_secs_f64());
    }
}

/// A `/mcp` request before its reply: counted as `cancelled` if its client
/// leaves first (the request's future is dropped).
struct Unanswered {
    /// Taken when the reply comes.
    metrics: Option<Arc<Metrics>>,
    body: bytes::Bytes,
    started: Instant,
}

impl Unanswered {
    /// The observation of the request `response` answers: labelled by the
    /// method its route parsed, or by parsing the body here.
    fn answered(mut self, response: &Response) -> Observation {
        Observation {
            metrics: self.metrics.take().expect("answered once"),
            method: match response.extensions().get::<metrics::Parsed>() {
                Some(metrics::Parsed(method)) => Cow::Borrowed(method),
                None => Cow::Owned(metrics::method_of(&self.body)),
            },
            started: self.started,
            outcome: Outcome::from_status(response.status()),
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            let method = metrics::method_of(&self.body);
            metrics.observe(&method, Outcome::Cancelled.label(), self.started.elapsed().as_secs_f64());
        }
    }
}

/// What stands before every route.
struct RequestGuards {
    access: Arc<Access>,
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
}

/// The middleware of every route, one layer (each layer costs an allocation
/// and a clone of the stack beneath it per request): the access guard, then
/// [`track_requests`].
async fn guard_requests(
    State(guards): State<Arc<RequestGuards>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(refused) = guards.access.admit(&mut request) {
        return refused.into_response();
    }
    track_requests(&guards.in_flight, &guards.metrics, request, next).await
}

/// Counts a POST from its arrival until its response body is fully sent or
/// dropped, and records `/mcp` requests in the metrics. Long-lived GET
/// streams are not requests in flight: they are ended when shutdown cancels
/// the streams.
async fn track_requests(
    in_flight: &Arc<InFlight>,
    metrics: &Arc<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    in_flight.active.fetch_add(1, Ordering::AcqRel);
    let guard = InFlightGuard(in_flight.clone());
    let mut unanswered = None;
    let started = Instant::now();
    let request = if request.uri().path() == MCP_PATH {
        // The method is in the body; the body is bounded here as rmcp
        // bounds it, and handed on whole.
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return (
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Payload Too Large: request body exceeds {MAX_REQUEST_BODY} bytes"),
                )
                    .into_response();
            }
        };
        unanswered = Some(Unanswered { metrics: Some(metrics.clone()), body: bytes.clone(), started });
        Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        request
    };
    let response = next.run(request).await;
    let mut observation = unanswered.map(|unanswered| unanswered.answered(&response));
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            // The closure owns the guard and the observation, so they live
            // exactly as long as the body.
            let _ = &guard;
            if let (Some(observation), Some(data)) = (&mut observation, frame.data_ref()) {
                observation.outcome.see(data);
            }
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
            state: crate::admin::state_of(report.state),
            kind: report.kind.to_string(),
            url: report.url,
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
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) stream_stall_timeout: std::time::Duration,
    pub(crate) events: Arc<EventBus>,
    pub(crate) metrics: Arc<Metrics>,
}

/// `/health` alone, for a server without the admin API.
pub(crate) fn health_route(health: HealthReporter, stats: Arc<ListenerStats>) -> Router {
    let health = get(move || {
        let health = health.clone();
        let stats = stats.clone();
        async move { Json(health(stats.rejected())) }
    });
    Router::new().route(HEALTH_PATH, health)
}

/// What stands before rmcp's service on `/mcp`, the service, and what the
/// tool calls answered beside it need.
struct McpRoute<S> {
    mcp: StreamableHttpService<S, BoundSessions>,
    /// The handler of each new session, for the sessions opened here (see
    /// `opening`); rmcp's service calls the same factory.
    factory: Arc<dyn Fn() -> S + Send + Sync>,
    sessions: Arc<BoundSessions>,
    /// rmcp's keep-alive interval and stop token for event streams, for the
    /// streams of the tool calls answered here.
    keep_alive: Option<std::time::Duration>,
    streams: CancellationToken,
    events: Arc<EventBus>,
    watch: Arc<StreamWatch>,
}

impl<S: ServerHandler + Send + 'static> McpRoute<S> {
    /// `/mcp`, in the handler rather than in a middleware layer (each layer
    /// costs allocations and a clone of the stack beneath it per request):
    /// the session guard, then a tool call in an open session answered here
    /// (see `tool_call`) or anything else by rmcp's service, then `session.opened` for a
    /// session a client opened (`session.closed` comes from the session
    /// manager, which sees every way a session ends), and the stall watch on
    /// every event stream.
    async fn serve(&self, request: Request) -> Response {
        let control = request.extensions().get::<ConnectionControl>().cloned();
        let opening = request.method() == Method::POST && !request.headers().contains_key("mcp-session-id");
        let response = guard_sessions(&self.sessions, request, |request| async move {
            match tool_call::take(request, &self.sessions, MAX_REQUEST_BODY).await {
                Taken::Call(call) => {
                    let mut response =
                        Box::pin(call.answer(&self.sessions, self.keep_alive, &self.streams)).await;
                    response.extensions_mut().insert(metrics::Parsed("tools/call"));
                    response
                }
                Taken::Open(opening) => {
                    let handler = (self.factory)();
                    let mut response =
                        Box::pin(opening.answer(handler, &self.sessions, self.keep_alive, &self.streams))
                            .await;
                    response.extensions_mut().insert(metrics::Parsed("initialize"));
                    response
                }
                Taken::TooLarge(response) => response,
                // Boxed: rmcp's future is large, and every move of the
                // futures around it would copy it.
                Taken::Rmcp(request) => Box::pin(self.mcp.handle(request)).await.map(axum::body::Body::new),
            }
        })
        .await;
        if opening && response.status().is_success() && response.headers().contains_key("mcp-session-id") {
            self.events.publish(EventBody::SessionOpened { sessions: self.sessions.open_count() });
        }
        self.watch.watch(control, response)
    }
}

/// The router served on every listener: `/mcp`, the API key route, and
/// `routes` (the admin API, or just `/health`).
pub(crate) fn router<S>(
    factory: impl Fn() -> S + Send + Sync + 'static,
    routes: Router,
    guards: Guards,
    streams_token: CancellationToken,
) -> Router
where
    S: ServerHandler + Send + 'static,
{
    let Guards { access, sessions, in_flight, stream_stall_timeout, events, metrics } = guards;
    // Origin is refused before rmcp sees a request (see `access`); rmcp's
    // own Origin check stays on as a second line.
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(streams_token.clone())
        .enforce_origin_validation();
    let keep_alive = config.sse_keep_alive;
    // Sessions this process does not know are restored from the store.
    config.session_store = Some(Arc::new(SessionStoreAdapter(sessions.store())));
    // Shared, not cloned: axum clones a route's handler for every request,
    // and a clone of rmcp's service copies its whole config (five
    // allocations each time).
    let factory: Arc<dyn Fn() -> S + Send + Sync> = Arc::new(factory);
    let mcp = Arc::new(McpRoute {
        mcp: StreamableHttpService::new(
            {
                let factory = factory.clone();
                move || Ok(factory())
            },
            sessions.clone(),
            config,
        ),
        factory,
        sessions,
        keep_alive,
        streams: streams_token,
        events,
        watch: StreamWatch::start(stream_stall_timeout),
    });
    Router::new()
        .route(mcpsock_api::API_KEY_PATH, get(api_key).with_state(access.clone()))
        .merge(routes)
        .route(MCP_PATH, any(move |request: Request| async move { mcp.serve(request).await }))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(RequestGuards { access, in_flight, metrics }),
            guard_requests,
        ))
        // Turns every handler into its service with the layers applied, now
        // rather than on every request (axum converts a handler of a router
        // that was never given its state at each call).
        .with_state(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use tower::ServiceExt as _;

    /// `/mcp` behind the request tracker, answered by `handler`.
    fn tracked<H, T>(handler: H, in_flight: Arc<InFlight>, metrics: Arc<Metrics>) -> Router
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        Router::new().route(MCP_PATH, axum::routing::post(handler)).layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let (in_flight, metrics) = (in_flight.clone(), metrics.clone());
                async move { track_requests(&in_flight, &metrics, request, next).await }
            },
        ))
    }

    fn tool_call() -> Request {
        Request::post(MCP_PATH)
            .body(axum::body::Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#))
            .unwrap()
    }

    fn requests_total(metrics: &Metrics) -> Vec<String> {
        let mut text = String::new();
        metrics.render_requests(&mut text);
        text.lines().filter(|line| line.starts_with("mcpsock_requests_total{")).map(str::to_string).collect()
    }

    #[tokio::test]
    async fn a_request_whose_client_leaves_before_the_reply_is_counted_as_cancelled() {
        let (in_flight, metrics) = (Arc::new(InFlight::default()), Arc::new(Metrics::default()));
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(std::sync::Mutex::new(Some(started)));
        let app = tracked(
            move || {
                let started = started.lock().unwrap().take();
                async move {
                    let _ = started.map(|started| started.send(()));
                    std::future::pending::<()>().await;
                }
            },
            in_flight.clone(),
            metrics.clone(),
        );
        let call = tokio::spawn(app.oneshot(tool_call()));
        has_started.await.unwrap();
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(
            requests_total(&metrics),
            ["mcpsock_requests_total{method=\"tools/call\",outcome=\"cancelled\"} 1"]
        );
        assert_eq!(in_flight.active(), 0);
    }

    #[tokio::test]
    async fn a_route_that_parsed_the_body_labels_the_request() {
        let (in_flight, metrics) = (Arc::new(InFlight::default()), Arc::new(Metrics::default()));
        // The label comes from the route, not from the body (which names
        // another method), so it shows which one was used.
        let app = tracked(
            || async {
                let mut response = Response::new(axum::body::Body::empty());
                response.extensions_mut().insert(metrics::Parsed("tools/call"));
                response
            },
            in_flight.clone(),
            metrics.clone(),
        );
        let request = Request::post(MCP_PATH)
            .body(axum::body::Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(
            requests_total(&metrics),
            ["mcpsock_requests_total{method=\"tools/call\",outcome=\"ok\"} 1"]
        );
    }
}
