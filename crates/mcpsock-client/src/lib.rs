//! Talking to an mcpsock daemon: where to find it, MCP and health calls
//! over its socket, and the stdio bridge for clients that only speak stdio.
//!
//! This crate is the light side of mcpsock: it never depends on the daemon,
//! gateway or storage crates.

pub mod bench;
mod bridge;
mod endpoint;
mod error;

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mcpsock_api::{HEALTH_PATH, Health, MCP_PATH};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::UnixSocketHttpClient;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use tokio::net::UnixStream;

pub use bridge::bridge;
pub use endpoint::Endpoint;
pub use error::ClientError;

/// An MCP client session with a daemon. It derefs to rmcp's `Peer`, so
/// `list_all_tools`, `call_tool` and the rest are available on it.
pub type McpSession = RunningService<RoleClient, ()>;

/// The URL used on the socket: only its path and host matter to the daemon.
const SOCKET_URL: &str = "http://localhost/mcp";

/// Opens an MCP session (`initialize` included) with the daemon.
pub async fn connect(endpoint: &Endpoint) -> Result<McpSession, ClientError> {
    let transport = transport(endpoint).await?;
    ().serve(transport).await.map_err(|error| ClientError::Protocol {
        endpoint: endpoint.clone(),
        message: format!("the MCP handshake failed: {error}"),
    })
}

/// A raw MCP transport to the daemon, checked to be reachable.
pub(crate) async fn transport(
    endpoint: &Endpoint,
) -> Result<StreamableHttpClientTransport<UnixSocketHttpClient>, ClientError> {
    let socket = endpoint.socket_path()?;
    probe(endpoint, socket).await?;
    debug_assert!(SOCKET_URL.ends_with(MCP_PATH));
    let client = UnixSocketHttpClient::new(&socket.to_string_lossy(), SOCKET_URL);
    Ok(StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(SOCKET_URL),
    ))
}

/// Connects once to tell "no daemon" and "not allowed" apart before any
/// protocol runs.
async fn probe(endpoint: &Endpoint, socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).await.map_err(|source| ClientError::from_connect(endpoint, source))
}

/// Asks the daemon for its health.
pub async fn health(endpoint: &Endpoint) -> Result<Health, ClientError> {
    get_json(endpoint, HEALTH_PATH).await
}

/// Asks the daemon for the API key its TCP clients must send (only the
/// daemon's own user gets it, over the socket).
pub async fn api_key(endpoint: &Endpoint) -> Result<String, ClientError> {
    get_json::<mcpsock_api::ApiKey>(endpoint, mcpsock_api::API_KEY_PATH).await.map(|reply| reply.api_key)
}

/// `GET path` over the socket, answered with JSON.
async fn get_json<T: serde::de::DeserializeOwned>(endpoint: &Endpoint, path: &str) -> Result<T, ClientError> {
    let socket = endpoint.socket_path()?;
    let stream = probe(endpoint, socket).await?;
    let protocol = |message: String| ClientError::Protocol { endpoint: endpoint.clone(), message };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| protocol(format!("HTTP handshake failed: {error}")))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|error| protocol(error.to_string()))?;
    let response =
        sender.send_request(request).await.map_err(|error| protocol(format!("no answer: {error}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| protocol(format!("reading the answer failed: {error}")))?
        .to_bytes();
    if !status.is_success() {
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("error").and_then(|error| error.as_str()).map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        return Err(protocol(format!("{path}: {reason}")));
    }
    serde_json::from_slice(&body)
        .map_err(|error| protocol(format!("{path} sent an unexpected answer: {error}")))
}
