//! Benchmark lanes over Streamable HTTP: one keep-alive connection each,
//! on a Unix socket or TCP.

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Era, Lane, check_response};
use crate::{ClientError, Endpoint};

/// The protocol version of the stateless era.
pub(super) const STATELESS_VERSION: &str = "2026-07-28";
const LEGACY_VERSION: &str = "2025-11-25";

pub(super) struct HttpLane {
    sender: SendRequest<Full<Bytes>>,
    path: String,
    host: HeaderValue,
    /// Headers every tools/call carries (session, protocol version, …).
    headers: Vec<(&'static str, HeaderValue)>,
    /// The request body around the id: `{prefix}{id}{suffix}`.
    body_prefix: String,
    body_suffix: String,
    /// Check only the HTTP status ([`Era::Plain`]).
    plain: bool,
}

impl HttpLane {
    pub(super) async fn connect(endpoint: &Endpoint, era: Era, params: &Value) -> Result<Self, ClientError> {
        let protocol = |message: String| ClientError::Protocol { endpoint: endpoint.clone(), message };
        let mut lane = Self::open_plain(endpoint).await?;
        lane.plain = era == Era::Plain;
        let params = match era {
            Era::Plain => params.clone(),
            Era::Legacy => {
                lane.initialize().await.map_err(protocol)?;
                params.clone()
            }
            Era::Stateless => {
                let tool = params.get("name").and_then(Value::as_str).unwrap_or_default();
                lane.headers.push(("mcp-protocol-version", HeaderValue::from_static(STATELESS_VERSION)));
                lane.headers.push(("mcp-method", HeaderValue::from_static("tools/call")));
                lane.headers.push((
                    "mcp-name",
                    HeaderValue::from_str(tool)
                        .map_err(|_| protocol(format!("{tool:?} cannot be a header")))?,
                ));
                let mut params = params.clone();
                params["_meta"] = serde_json::json!({
                    "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                });
                params
            }
        };
        lane.body_prefix = r#"{"jsonrpc":"2.0","id":"#.to_string();
        lane.body_suffix = format!(r#","method":"tools/call","params":{params}}}"#);
        Ok(lane)
    }

    /// A connection with no session yet. Over TCP it carries the API key
    /// from `MCPSOCK_API_KEY`, when set.
    pub(super) async fn open_plain(endpoint: &Endpoint) -> Result<Self, ClientError> {
        let (sender, path, host) = open(endpoint).await?;
        let key = std::env::var("MCPSOCK_API_KEY").ok().filter(|key| !key.is_empty());
        let authorization = match (endpoint, key) {
            (Endpoint::Http(_), Some(key)) => HeaderValue::from_str(&format!("Bearer {key}")).ok(),
            _ => None,
        };
        Ok(Self {
            sender,
            path,
            host,
            headers: authorization.into_iter().map(|value| ("authorization", value)).collect(),
            body_prefix: String::new(),
            body_suffix: String::new(),
            plain: false,
        })
    }

    /// Drops the session headers so the next `initialize` opens a new one.
    pub(super) fn forget_session(&mut self) {
        self.headers.retain(|(name, _)| *name == "authorization");
    }

    pub(super) async fn initialize(&mut self) -> Result<(), String> {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcpsock-bench", "version": env!("CARGO_PKG_VERSION")},
        }});
        let (headers, answer) = self.post(body.to_string(), 0).await?;
        let message = answer.ok_or("no answer to initialize")?;
        if let Some(error) = message.get("error") {
            return Err(format!("initialize failed: {error}"));
        }
        let version = message
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
            .and_then(|version| HeaderValue::from_str(version).ok())
            .ok_or("initialize answered without a protocol version")?;
        if let Some(session) = headers.get("mcp-session-id") {
            self.headers.push(("mcp-session-id", session.clone()));
        }
        self.headers.push(("mcp-protocol-version", version));
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        self.post(initialized.to_string(), 0).await?;
        Ok(())
    }

    /// POSTs one message and returns the response headers and the JSON-RPC
    /// message answering `id`, whether it came as JSON or in an SSE stream.
    async fn post(&mut self, body: String, id: u64) -> Result<(http::HeaderMap, Option<Value>), String> {
        let mut request = Request::post(&self.path)
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        for (name, value) in &self.headers {
            request = request.header(*name, value.clone());
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|error| error.to_string())?;
        self.sender.ready().await.map_err(|error| format!("connection lost: {error}"))?;
        let response =
            self.sender.send_request(request).await.map_err(|error| format!("request failed: {error}"))?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes =
            body.collect().await.map_err(|error| format!("reading the answer failed: {error}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        if bytes.is_empty() {
            return Ok((parts.headers, None));
        }
        let is_sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let message = if is_sse {
            sse_messages(&bytes).find(|message| message.get("id").and_then(Value::as_u64) == Some(id))
        } else {
            Some(serde_json::from_slice(&bytes).map_err(|error| format!("the answer is not JSON: {error}"))?)
        };
        Ok((parts.headers, message))
    }
}

impl Lane for HttpLane {
    async fn call(&mut self, id: u64) -> Result<(), String> {
        let body = format!("{}{id}{}", self.body_prefix, self.body_suffix);
        let (_, message) = self.post(body, id).await?;
        if self.plain {
            return Ok(());
        }
        check_response(&message.ok_or("no answer")?, id)
    }
}

/// The JSON messages in the `data:` fields of an SSE body.
fn sse_messages(body: &[u8]) -> impl Iterator<Item = Value> + '_ {
    body.split(|&byte| byte == b'\n').filter_map(|line| {
        let data = line.strip_prefix(b"data:")?;
        serde_json::from_slice(data.trim_ascii()).ok()
    })
}

/// Opens one HTTP/1.1 connection to the endpoint.
async fn open(endpoint: &Endpoint) -> Result<(SendRequest<Full<Bytes>>, String, HeaderValue), ClientError> {
    let protocol = |message: String| ClientError::Protocol { endpoint: endpoint.clone(), message };
    let (io, path, host): (Box<dyn Io>, String, HeaderValue) = match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::from_connect(endpoint, source))?;
            (Box::new(stream), mcpsock_api::MCP_PATH.to_string(), HeaderValue::from_static("localhost"))
        }
        Endpoint::Http(url) => {
            let uri: http::Uri = url.parse().map_err(|error| protocol(format!("not a URL: {error}")))?;
            if uri.scheme_str() != Some("http") {
                return Err(protocol("the benchmark speaks plain http:// only".into()));
            }
            let authority = uri.authority().ok_or_else(|| protocol("the URL has no host".into()))?.clone();
            let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
            let stream = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|source| ClientError::from_connect(endpoint, source))?;
            stream.set_nodelay(true).map_err(|source| ClientError::from_connect(endpoint, source))?;
            let path = match uri.path() {
                "" | "/" => mcpsock_api::MCP_PATH.to_string(),
                path => path.to_string(),
            };
            let host =
                HeaderValue::from_str(authority.as_str()).map_err(|error| protocol(error.to_string()))?;
            (Box::new(stream), path, host)
        }
    };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| protocol(format!("HTTP handshake failed: {error}")))?;
    tokio::spawn(connection);
    Ok((sender, path, host))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_messages_in_sse() {
        let body = b"id: 0\nretry: 3000\ndata:\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n";
        let messages: Vec<Value> = sse_messages(body).collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["id"], 7);
    }
}
