//! Talking to an mcpsock daemon: where to find it, MCP and health calls
//! over its socket, MCP over any Streamable HTTP endpoint, and the stdio
//! bridge for clients that only speak stdio.
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
pub use rmcp;

/// An MCP client session with a daemon. It derefs to rmcp's `Peer`, so
/// `list_all_tools`, `call_tool` and the rest are available on it.
pub type McpSession = RunningService<RoleClient, ()>;

/// The URL used on the socket: only its path and host matter to the daemon.
const SOCKET_URL: &str = "http://localhost/mcp";

/// How to open an MCP session beyond the endpoint itself.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Sent as `Authorization: Bearer` to HTTP endpoints (an mcpsock
    /// daemon's TCP listener wants its API key); never sent on a Unix
    /// socket, where the kernel says who the client is.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions").field("api_key", &self.api_key.as_ref().map(|_| "…")).finish()
    }
}

impl ConnectOptions {
    /// The API key from `MCPSOCK_API_KEY`, when set.
    pub fn from_env() -> Self {
        Self { api_key: std::env::var("MCPSOCK_API_KEY").ok().filter(|key| !key.is_empty()) }
    }

    /// Sends `key` to HTTP endpoints.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

/// Opens an MCP session (`initialize` included) with an mcpsock socket or
/// any Streamable HTTP endpoint; for HTTP, `MCPSOCK_API_KEY` (if set) is
/// sent as the bearer token.
pub async fn connect(endpoint: &Endpoint) -> Result<McpSession, ClientError> {
    connect_with(endpoint, &ConnectOptions::from_env()).await
}

/// [`connect`] with explicit options.
pub async fn connect_with(endpoint: &Endpoint, options: &ConnectOptions) -> Result<McpSession, ClientError> {
    let session = match endpoint {
        Endpoint::Unix(_) => ().serve(transport(endpoint).await?).await,
        Endpoint::Http(url) => {
            probe_tcp(endpoint, url).await?;
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            if let Some(key) = &options.api_key {
                config = config.auth_header(key.clone());
            }
            let client = http_client()
                .map_err(|message| ClientError::Protocol { endpoint: endpoint.clone(), message })?;
            ().serve(StreamableHttpClientTransport::with_client(client, config)).await
        }
    };
    session.map_err(|error| {
        if wants_credentials(&error) {
            let message = match options.api_key {
                Some(_) => "the endpoint refused the API key; check MCPSOCK_API_KEY (`mcpsock status --show-key` prints an mcpsock daemon's key)",
                None => "the endpoint wants an API key; set MCPSOCK_API_KEY (`mcpsock status --show-key` prints an mcpsock daemon's key)",
            };
            return ClientError::Refused { endpoint: endpoint.clone(), status: 401, message: message.into() };
        }
        ClientError::Protocol { endpoint: endpoint.clone(), message: format!("the MCP handshake failed: {error}") }
    })
}

/// Whether an HTTP endpoint turned the handshake down for want of (valid)
/// credentials: a 401 or 403 somewhere in the error's chain.
fn wants_credentials(error: &rmcp::service::ClientInitializeError) -> bool {
    use rmcp::transport::streamable_http_client::StreamableHttpError;
    let mut next: Option<&(dyn std::error::Error + 'static)> = match error {
        rmcp::service::ClientInitializeError::TransportError { error, .. } => Some(error.error.as_ref()),
        _ => return false,
    };
    while let Some(error) = next {
        if matches!(
            error.downcast_ref::<StreamableHttpError<reqwest::Error>>(),
            Some(StreamableHttpError::AuthRequired(_) | StreamableHttpError::InsufficientScope(_))
        ) {
            return true;
        }
        next = error.source();
    }
    false
}

/// A reqwest client for MCP over HTTP(S): TLS by rustls with the ring
/// provider and the system's trust roots (no OpenSSL, no process-wide crypto
/// default). The gateway reaches its `url` upstreams with it too.
pub fn http_client() -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|error| format!("cannot set up the HTTP client: {error}"))
}

/// Connects once to an HTTP endpoint's host, so that "nothing listens
/// there" is told apart from a protocol failure.
async fn probe_tcp(endpoint: &Endpoint, url: &str) -> Result<(), ClientError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| ClientError::InvalidEndpoint(format!("{url} is not a valid URL: {error}")))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(ClientError::InvalidEndpoint(format!("{url} names no host to connect to")));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|source| ClientError::from_connect(endpoint, source))
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
