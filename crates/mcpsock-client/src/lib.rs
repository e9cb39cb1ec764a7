//! Talking to an mcpsock daemon: where to find it, MCP and health calls
//! over its socket, and the stdio bridge for clients that only speak stdio.
//!
//! This crate is the light side of mcpsock: it never depends on the daemon,
//! gateway or storage crates.

mod admin;
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

pub use admin::{config, metrics, reload, server_action, servers, status};
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
    request_json(endpoint, http::Method::GET, path).await
}

/// `method path` over the socket, answered with JSON.
pub(crate) async fn request_json<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    method: http::Method,
    path: &str,
) -> Result<T, ClientError> {
    let body = request(endpoint, method, path).await?;
    serde_json::from_slice(&body).map_err(|error| ClientError::Protocol {
        endpoint: endpoint.clone(),
        message: format!("{path} sent an unexpected answer: {error}"),
    })
}

/// `method path` over the socket: the body of a successful answer. A
/// refusal carries the daemon's own explanation; a daemon speaking another
/// admin API version is named as such.
pub(crate) async fn request(
    endpoint: &Endpoint,
    method: http::Method,
    path: &str,
) -> Result<Bytes, ClientError> {
    let socket = endpoint.socket_path()?;
    let stream = probe(endpoint, socket).await?;
    let protocol = |message: String| ClientError::Protocol { endpoint: endpoint.clone(), message };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| protocol(format!("HTTP handshake failed: {error}")))?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|error| protocol(error.to_string()))?;
    let response =
        sender.send_request(request).await.map_err(|error| protocol(format!("no answer: {error}")))?;
    let status = response.status();
    let daemon_protocol = response
        .headers()
        .get(mcpsock_api::PROTOCOL_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u32>().ok());
    if let Some(daemon) = daemon_protocol
        && daemon != mcpsock_api::ADMIN_PROTOCOL_VERSION
    {
        return Err(ClientError::VersionMismatch {
            endpoint: endpoint.clone(),
            daemon,
            client: mcpsock_api::ADMIN_PROTOCOL_VERSION,
        });
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| protocol(format!("reading the answer failed: {error}")))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<mcpsock_api::ApiError>(&body)
            .map(|reply| reply.error)
            .unwrap_or_else(|_| status.to_string());
        return Err(ClientError::Refused { endpoint: endpoint.clone(), status: status.as_u16(), message });
    }
    Ok(body)
}
