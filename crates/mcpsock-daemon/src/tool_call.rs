//! `tools/call` in an open session, answered without rmcp's HTTP layer.
//!
//! A tool call is the request a client repeats; everything else on `/mcp`
//! is rare. rmcp's Streamable HTTP service parses every body as any client
//! message at all: the message kinds and then the request kinds are tried
//! in turn, and each failed try builds and drops an error. A `tools/call`
//! is the fourteenth request kind (thirteen errors before it), so that
//! parse was a fifth of the instructions of a whole request (see
//! `scripts/instructions.sh`).
//!
//! [`take`] takes a POST only when rmcp would accept it and answer it in
//! the session the client names: every check rmcp makes before it hands a
//! request to the session manager is either made here the same way or, if
//! it is not trivially met, sends the request on to rmcp unchanged. The
//! body is read in one pass into rmcp's own types, with rmcp's
//! message-shape check, and the request goes to the same session manager
//! (`BoundSessions::create_stream`) rmcp would call. The reply is the same
//! event stream ([`crate::sse`]). Anything else, and a body that is not a
//! well-formed `tools/call`, goes to rmcp.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, Method, StatusCode};
use rmcp::model::{
    CallToolRequest, CallToolRequestMethod, CallToolRequestParams, ClientJsonRpcMessage, ClientRequest,
    GetExtensions, GetMeta, JsonRpcRequest, JsonRpcVersion2_0, ProtocolVersion, RequestId,
};
use rmcp::transport::streamable_http_server::SessionId;
use rmcp::transport::streamable_http_server::session::SessionManager;
use serde::Deserialize;

use crate::opening::Opening;
use crate::sessions::{BoundSessions, SESSION_HEADER, VERSION_HEADER};

/// The hosts rmcp's service accepts by default (its DNS-rebinding check);
/// mcpsock does not change that list.
const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The prefix of the `_meta` keys of the 2026-07-28 era. A request carrying
/// any of them is checked against that era's rules, which rmcp applies.
const ERA_META_PREFIX: &str = "io.modelcontextprotocol/";

/// A `tools/call` this module answers.
pub(crate) struct ToolCall {
    session: SessionId,
    message: ClientJsonRpcMessage,
}

/// What becomes of a request on `/mcp`.
pub(crate) enum Taken {
    /// A tool call in an open session, for [`ToolCall::answer`].
    Call(ToolCall),
    /// An `initialize` that opens a session, for [`Opening::answer`].
    Open(Box<Opening>),
    /// Anything else, unchanged (its body may have been read; it is put back
    /// whole), for rmcp's service.
    Rmcp(Request),
    /// A body past the limit, answered as rmcp answers it.
    TooLarge(Response),
}

/// Takes `request` if it is a `tools/call` in a session open in this
/// process, or an `initialize` that opens a session, and rmcp would accept
/// it; gives it back otherwise.
pub(crate) async fn take(request: Request, sessions: &BoundSessions, body_limit: usize) -> Taken {
    if !is_plain_post(&request) {
        return Taken::Rmcp(request);
    }
    let session = match request.headers().get(SESSION_HEADER) {
        None => None,
        Some(value) => match value.to_str().map(SessionId::from) {
            Ok(id) if sessions.is_open(&id) => Some(id),
            _ => return Taken::Rmcp(request),
        },
    };
    let (parts, body) = request.into_parts();
    // The metrics layer has already read the body into one piece within
    // this same limit, so this takes it back without copying.
    let bytes = match axum::body::to_bytes(body, body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let mut response = Response::new(Body::from(format!(
                "Payload Too Large: request body exceeds {body_limit} bytes"
            )));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Taken::TooLarge(response);
        }
    };
    let Some(session) = session else {
        return match Opening::parse(&bytes, parts) {
            Ok(opening) => Taken::Open(Box::new(opening)),
            Err(parts) => Taken::Rmcp(Request::from_parts(parts, Body::from(bytes))),
        };
    };
    match parse(&bytes) {
        Some(mut message) => {
            if let ClientJsonRpcMessage::Request(request) = &mut message {
                // As rmcp does: a handler may read the HTTP request.
                request.request.extensions_mut().insert(parts);
            }
            Taken::Call(ToolCall { session, message })
        }
        None => Taken::Rmcp(Request::from_parts(parts, Body::from(bytes))),
    }
}

impl ToolCall {
    /// Hands the call to its session and streams the session's events for
    /// it back, as rmcp's service does for any request in a session.
    pub(crate) async fn answer(
        self,
        sessions: &BoundSessions,
        keep_alive: Option<std::time::Duration>,
        streams: &tokio_util::sync::CancellationToken,
    ) -> Response {
        match sessions.create_stream(&self.session, self.message).await {
            Ok(events) => crate::sse::reply(events, keep_alive, streams.child_token()),
            // `guard_sessions` turns this into a 404 when the session has
            // just ended.
            Err(error) => internal_error("get session", error),
        }
    }
}

/// rmcp's answer to a failure inside its service, in its words.
pub(crate) fn internal_error(context: &str, error: impl std::fmt::Display) -> Response {
    tracing::error!("Internal server error when {context}: {error}");
    let mut response = Response::new(Body::from(format!("Encounter an error when {context}: {error}")));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Whether every check on a request's method and headers that rmcp makes
/// before reading the body passes plainly.
fn is_plain_post(request: &Request) -> bool {
    let headers = request.headers();
    request.method() == Method::POST
        && host_is_local(headers)
        && !headers.contains_key(ORIGIN)
        && accepts_json_and_events(headers)
        && is_json(headers)
        && is_session_era(headers)
}

/// rmcp's DNS-rebinding check with its default hosts, for a `Host` header
/// that passes it plainly.
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(authority) = headers
        .get(HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<http::uri::Authority>().ok())
    else {
        return false;
    };
    let host = authority.host().trim_matches(['[', ']']);
    LOCAL_HOSTS.iter().any(|local| local.eq_ignore_ascii_case(host))
}

/// Whether `Accept` names both JSON and event streams, with no weights or
/// parameters (those are rmcp's to read).
fn accepts_json_and_events(headers: &HeaderMap) -> bool {
    let (mut json, mut events) = (false, false);
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for range in value.split(',') {
            let range = range.trim();
            if range.contains(';') || range.contains('"') {
                return false;
            }
            json |= range.eq_ignore_ascii_case("application/json");
            events |= range.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && events
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
        value
            .split_once(';')
            .map_or(value, |(essence, _)| essence)
            .trim()
            .eq_ignore_ascii_case("application/json")
    })
}

/// A request of the session era: no protocol-version header, or a known
/// version that still has the `initialize` handshake (later versions bring
/// header rules rmcp checks against the body).
fn is_session_era(headers: &HeaderMap) -> bool {
    let mut versions = headers.get_all(VERSION_HEADER).iter();
    match (versions.next(), versions.next()) {
        (None, _) => true,
        (Some(version), None) => version.to_str().is_ok_and(|version| {
            ProtocolVersion::KNOWN_VERSIONS
                .iter()
                .any(|known| known.as_str() == version && known.has_initialize())
        }),
        (Some(_), Some(_)) => false,
    }
}

/// A `tools/call` request as it stands in a body, every field read in one
/// pass. rmcp reads the same fields through three layers of buffering
/// (its message-shape check, then the request's fields, then the
/// parameters' `_meta`).
#[derive(Deserialize)]
struct CallBody {
    jsonrpc: JsonRpcVersion2_0,
    id: RequestId,
    /// Only `tools/call` reads as this.
    #[serde(rename = "method")]
    _method: CallToolRequestMethod,
    params: CallToolRequestParams,
    /// rmcp's message-shape check refuses a request that also carries a
    /// `result` or an `error`, whatever their value.
    #[serde(default)]
    result: Present,
    #[serde(default)]
    error: Present,
}

/// Whether a field is there at all, even as `null`.
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Self(true))
    }
}

/// The body as the `tools/call` request rmcp would make of it; `None` for
/// anything else.
fn parse(body: &[u8]) -> Option<ClientJsonRpcMessage> {
    let CallBody { jsonrpc, id, mut params, result, error, .. } = serde_json::from_slice(body).ok()?;
    if result.0 || error.0 {
        return None;
    }
    // rmcp keeps a request's `_meta` beside its parameters, not in them.
    let meta = params.meta.take();
    let mut request = CallToolRequest::new(params);
    if let Some(meta) = meta {
        request.extensions.insert(meta);
    }
    let request = ClientRequest::CallToolRequest(request);
    if request.get_meta().keys().any(|key| key.starts_with(ERA_META_PREFIX)) {
        return None;
    }
    Some(ClientJsonRpcMessage::Request(JsonRpcRequest { jsonrpc, id, request }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;
    use serde_json::json;

    /// What rmcp's service parses the same body into.
    fn rmcp_parse(body: &[u8]) -> Option<ClientJsonRpcMessage> {
        serde_json::from_slice(body).ok()
    }

    #[test]
    fn a_tool_call_parses_as_rmcp_parses_it() {
        let bodies = [
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}),
            json!({"jsonrpc": "2.0", "id": "a-7", "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hi", "n": [1, 2, {"x": null}]}}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                   "params": {"name": "slow", "arguments": {}, "_meta": {"progressToken": "p-1", "custom": 5}}}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "_meta": null}}),
            json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                   "params": {"name": "echo", "arguments": null, "requestState": "s", "inputResponses": {}}}),
            json!({"method": "tools/call", "jsonrpc": "2.0", "params": {"name": "echo", "task": {"ttl": 60000}},
                   "id": 4, "extra": true}),
        ];
        for body in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            let ours = parse(&bytes).unwrap_or_else(|| panic!("not taken: {body}"));
            let theirs = rmcp_parse(&bytes).unwrap();
            assert!(matches!(
                &theirs,
                ClientJsonRpcMessage::Request(request) if matches!(request.request, ClientRequest::CallToolRequest(_))
            ));
            assert_eq!(
                serde_json::to_value(&ours).unwrap(),
                serde_json::to_value(&theirs).unwrap(),
                "{body}"
            );
        }
    }

    #[test]
    fn anything_but_a_plain_tool_call_is_left_to_rmcp() {
        let bodies = [
            // Other requests, notifications, answers.
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            // A tool call of the wrong shape, or without a tool.
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}, "error": null}),
            json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}),
            // A batch.
            json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}]),
            // The 2026-07-28 era's request metadata.
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo",
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2025-11-25"}}}),
        ];
        for body in bodies {
            assert!(parse(&serde_json::to_vec(&body).unwrap()).is_none(), "taken: {body}");
        }
        // Cut short, and a field twice (rmcp refuses both).
        let raw: [&[u8]; 2] = [
            br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call""#,
            br#"{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "tools/call", "params": {"name": "echo"}}"#,
        ];
        for body in raw {
            assert!(rmcp_parse(body).is_none());
            assert!(parse(body).is_none(), "taken: {}", String::from_utf8_lossy(body));
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_plain_headers_are_checked_here() {
        let plain = [
            ("host", "localhost"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ];
        let ok = headers(&plain);
        assert!(host_is_local(&ok) && accepts_json_and_events(&ok) && is_json(&ok) && is_session_era(&ok));

        for host in ["127.0.0.1:8080", "[::1]:9", "LocalHost"] {
            assert!(host_is_local(&headers(&[("host", host)])), "{host}");
        }
        for host in ["example.com", "localhost.example.com", "127.0.0.2", "not a host"] {
            assert!(!host_is_local(&headers(&[("host", host)])), "{host}");
        }
        assert!(!host_is_local(&HeaderMap::new()));

        assert!(accepts_json_and_events(&headers(&[
            ("accept", "text/event-stream"),
            ("accept", "application/json")
        ])));
        for accept in ["application/json", "application/json;q=1, text/event-stream", "*/*"] {
            assert!(!accepts_json_and_events(&headers(&[("accept", accept)])), "{accept}");
        }

        assert!(is_json(&headers(&[("content-type", "Application/JSON; charset=utf-8")])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&HeaderMap::new()));

        assert!(is_session_era(&headers(&[("mcp-protocol-version", "2025-06-18")])));
        for version in ["2026-07-28", "2099-01-01", "garbage"] {
            assert!(!is_session_era(&headers(&[("mcp-protocol-version", version)])), "{version}");
        }
        assert!(!is_session_era(&headers(&[
            ("mcp-protocol-version", "2025-06-18"),
            ("mcp-protocol-version", "2025-06-18")
        ])));
    }
}
